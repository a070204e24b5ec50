"""Retention: the oldest rows go, and a chained checkpoint says what went and up to where.

Only a prefix of the chain can go, so `verify` can start from the checkpoint: rows up to
(not including) the first row, in seq order, whose time is at or after the cutoff (or
unknown).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from holdgate.store.chain import append_rows, normalize_row
from holdgate.store.schema import CHAINED, TIME_COLUMN


@dataclass(frozen=True)
class PurgeReport:
    """What `purge` removed; `sessions_gone` have no rows left (their flow files may go)."""

    removed: dict[str, int] = field(default_factory=dict)
    sessions_gone: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoint_seq: int | None = None


def purge_before(conn: sqlite3.Connection, cutoff: str, actor: str | None) -> PurgeReport:
    """Delete the chain's prefix older than `cutoff` (ISO time); call inside a transaction."""
    head_seq = conn.execute("SELECT seq FROM chain_head WHERE id = 1").fetchone()[0]
    boundary = head_seq + 1
    for table, column in TIME_COLUMN.items():
        found = conn.execute(
            f'SELECT seq FROM "{table}" WHERE "{column}" >= ? OR "{column}" IS NULL '
            "ORDER BY seq LIMIT 1",
            [cutoff],
        ).fetchone()
        if found is not None:
            boundary = min(boundary, found[0])
    below = [
        conn.execute(f'SELECT min(seq), max(seq) FROM "{t}" WHERE seq < ?', [boundary]).fetchone()
        for t in CHAINED
    ]
    firsts = [lo for lo, _ in below if lo is not None]
    if not firsts:
        return PurgeReport()
    last_seq = max(hi for _, hi in below if hi is not None)
    last_hash = next(
        found[0]
        for table in CHAINED
        if (
            found := conn.execute(
                f'SELECT row_hash FROM "{table}" WHERE seq = ?', [last_seq]
            ).fetchone()
        )
        is not None
    )
    candidates = [
        r[0]
        for r in conn.execute(
            "SELECT session_id FROM events WHERE seq < ? AND session_id IS NOT NULL UNION "
            "SELECT session_id FROM sessions WHERE seq < ? AND session_id IS NOT NULL",
            [boundary, boundary],
        )
    ]
    counts = {
        t: conn.execute(f'DELETE FROM "{t}" WHERE seq < ?', [boundary]).rowcount for t in CHAINED
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
    checkpoint = normalize_row(
        "checkpoints",
        {
            "first_seq": min(firsts),
            "last_seq": last_seq,
            "last_hash": last_hash,
            "cutoff": cutoff,
            "removed": removed,
            "actor": actor,
        },
    )
    seq = append_rows(conn, [("checkpoints", checkpoint)])[0]
    return PurgeReport(removed, sorted(gone), min(firsts), last_seq, seq)
