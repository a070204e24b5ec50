"""Retention: the oldest rows go, except what security needs, and a chained checkpoint says
what went, up to where, and what stayed.

The purged range is a prefix of the chain: rows up to (not including) the first row, in seq
order, whose time is at or after the cutoff (or unknown). Inside it these rows stay:

- the current pin of each (upstream, tool): the row `PinBook` starts from (the latest
  `pinned`, else the first row seen) and the latest row (what the upstream listed last),
  unless a later `pinned` row outside the range supersedes them;
- the config version in force (the latest loaded one) and, for each config hash the kept
  events name, its latest loaded version, unless one outside the range has that hash.

The checkpoint (a `checkpoints` row) holds `first_seq` (the first row this purge removed),
`last_seq` and `last_hash` (the chain's seq and hash at the end of the purged range, where
`verify` starts), the counts removed, and `kept`: [seq, table, row_hash] of every row still
in the range, so `verify` checks them one by one. Each purge lists all rows kept so far, so
only the latest checkpoint is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from holdgate.store.chain import append_rows, normalize_row
from holdgate.store.schema import CHAINED, GENESIS, TIME_COLUMN
from holdgate.store.sqlconn import SqlConnection

# config_versions outcomes whose config went into force
_LOADED = ("loaded", "reloaded")


@dataclass(frozen=True)
class PurgeReport:
    """What `purge` removed and kept; `sessions_gone` have no rows left (their flow files
    may go). Rows from `first_seq` to `last_seq` are gone but for the `kept` ones."""

    removed: dict[str, int] = field(default_factory=dict)
    sessions_gone: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoint_seq: int | None = None
    kept: dict[str, int] = field(default_factory=dict)


def _boundary(conn: SqlConnection, cutoff: str) -> int:
    """The seq of the first row at or after the cutoff (or of unknown time): the range ends
    before it."""
    head_seq: int = conn.execute("SELECT seq FROM chain_head WHERE id = 1").fetchone()[0]
    boundary = head_seq + 1
    for table, column in TIME_COLUMN.items():
        found = conn.execute(
            f'SELECT seq FROM "{table}" WHERE "{column}" >= ? OR "{column}" IS NULL '
            "ORDER BY seq LIMIT 1",
            [cutoff],
        ).fetchone()
        if found is not None:
            boundary = min(boundary, found[0])
    return boundary


def _pins_to_keep(conn: SqlConnection, boundary: int) -> set[int]:
    repinned = set(
        conn.execute(
            "SELECT DISTINCT upstream, tool FROM tool_pins WHERE seq >= ? AND event = 'pinned'",
            [boundary],
        ).fetchall()
    )
    keep: set[int] = set()
    for upstream, tool, pinned, first, latest in conn.execute(
        "SELECT upstream, tool, max(CASE WHEN event = 'pinned' THEN seq END), min(seq), "
        "max(seq) FROM tool_pins WHERE seq < ? GROUP BY upstream, tool",
        [boundary],
    ):
        if (upstream, tool) not in repinned:
            keep.update((pinned or first, latest))
    return keep


def _configs_to_keep(conn: SqlConnection, boundary: int) -> set[int]:
    # a shadow policy's rows (role "candidate") never put a config in force
    loaded = f"outcome IN {_LOADED!r} AND (role IS NULL OR role = 'active')"
    in_force = conn.execute(
        f"SELECT config_hash FROM config_versions WHERE {loaded} ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    wanted = {
        h
        for (h,) in conn.execute(
            "SELECT DISTINCT config_hash FROM events WHERE seq >= ? AND config_hash IS NOT NULL",
            [boundary],
        )
    }
    if in_force is not None:
        wanted.add(in_force[0])
    keep: set[int] = set()
    for digest in wanted:
        later = conn.execute(
            f"SELECT 1 FROM config_versions WHERE seq >= ? AND config_hash = ? AND {loaded}",
            [boundary, digest],
        ).fetchone()
        found = conn.execute(
            f"SELECT max(seq) FROM config_versions WHERE seq < ? AND config_hash = ? AND {loaded}",
            [boundary, digest],
        ).fetchone()
        if later is None and found[0] is not None:
            keep.add(found[0])
    return keep


def _hash_at(conn: SqlConnection, seq: int) -> str:
    """The row_hash of the row at `seq`, which exists."""
    for table in CHAINED:
        found = conn.execute(f'SELECT row_hash FROM "{table}" WHERE seq = ?', [seq]).fetchone()
        if found is not None:
            return str(found[0])
    raise LookupError(f"no row at seq {seq}")


def purge_before(conn: SqlConnection, cutoff: str, actor: str | None) -> PurgeReport:
    """Delete the chain's prefix older than `cutoff` (ISO time) but for what security needs;
    call inside a transaction."""
    boundary = _boundary(conn, cutoff)
    previous = conn.execute(
        "SELECT last_seq, last_hash FROM checkpoints ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    prev_seq, prev_hash = previous if previous else (0, GENESIS)
    keep = _pins_to_keep(conn, boundary) | _configs_to_keep(conn, boundary)
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS purge_keep (seq INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM purge_keep")
    conn.executemany("INSERT INTO purge_keep (seq) VALUES (?)", [(s,) for s in keep])
    doomed = "seq < ? AND seq NOT IN (SELECT seq FROM purge_keep)"
    firsts = [
        lo
        for t in CHAINED
        if (
            lo := conn.execute(f'SELECT min(seq) FROM "{t}" WHERE {doomed}', [boundary]).fetchone()[
                0
            ]
        )
        is not None
    ]
    if not firsts:
        return PurgeReport()
    tops = [
        conn.execute(f'SELECT max(seq) FROM "{t}" WHERE seq < ?', [boundary]).fetchone()[0]
        for t in CHAINED
    ]
    last_seq = max([prev_seq, *(s for s in tops if s is not None)])
    last_hash = _hash_at(conn, last_seq) if last_seq > prev_seq else prev_hash
    candidates = [
        r[0]
        for r in conn.execute(
            f"SELECT session_id FROM events WHERE {doomed} AND session_id IS NOT NULL UNION "
            f"SELECT session_id FROM sessions WHERE {doomed} AND session_id IS NOT NULL",
            [boundary, boundary],
        )
    ]
    counts = {
        t: conn.execute(f'DELETE FROM "{t}" WHERE {doomed}', [boundary]).rowcount for t in CHAINED
    }
    removed = {t: n for t, n in counts.items() if n}
    gone = [
        s
        for s in candidates
        if not conn.execute(
            "SELECT 1 FROM events WHERE session_id = ? UNION ALL "
            "SELECT 1 FROM sessions WHERE session_id = ? LIMIT 1",
            [s, s],
        ).fetchone()
    ]
    kept_rows = sorted(
        (seq, table, digest)
        for table in CHAINED
        for seq, digest in conn.execute(
            f'SELECT seq, row_hash FROM "{table}" WHERE seq <= ?', [last_seq]
        )
    )
    kept: dict[str, int] = {}
    for _, table, _ in kept_rows:
        kept[table] = kept.get(table, 0) + 1
    checkpoint = normalize_row(
        "checkpoints",
        {
            "first_seq": min(firsts),
            "last_seq": last_seq,
            "last_hash": last_hash,
            "cutoff": cutoff,
            "removed": removed,
            "actor": actor,
            "kept": json.dumps([list(k) for k in kept_rows], separators=(",", ":")),
        },
    )
    seq = append_rows(conn, [("checkpoints", checkpoint)])[0]
    return PurgeReport(removed, sorted(gone), min(firsts), last_seq, seq, kept)


@dataclass(frozen=True)
class PurgeRecord:
    """The latest purge as its chained checkpoint records it: everything up to `last_seq`
    is gone but the `kept` rows ({seq: row_hash}); the chain's hash at `last_seq` was
    `last_hash`."""

    seq: int
    ts: str
    first_seq: int
    last_seq: int
    last_hash: str
    cutoff: str | None
    kept: dict[int, str]


def last_purge(conn: SqlConnection) -> PurgeRecord | None:
    found = conn.execute(
        "SELECT seq, ts, first_seq, last_seq, last_hash, cutoff, kept FROM checkpoints "
        "ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    if found is None:
        return None
    seq, ts, first_seq, last_seq, last_hash, cutoff, kept = found
    listed = json.loads(kept) if kept else []
    return PurgeRecord(
        seq, ts, first_seq, last_seq, last_hash, cutoff, {int(s): str(h) for s, _, h in listed}
    )
