"""The audit store: sessions, events and approvals in one SQLite file, hash-chained.

Every audited row (tables in `CHAINED`) carries a global `seq`, strictly increasing across
tables, the `prev_hash` of the row before it and its own `row_hash`:

    row_hash = sha256(prev_hash "\\n" table "\\n" canonical JSON of its non-NULL columns
                      other than prev_hash and row_hash, seq included)

Rows are never updated: an approval's state changes are new rows. Each append is one
`BEGIN IMMEDIATE` transaction that reads the head of the chain (`chain_head`), inserts and
moves the head, so several processes (the gateway's writer thread, the CLI) can append.
`purge` removes the oldest rows and records a chained `checkpoints` row; `verify` starts
from the latest checkpoint. The hashes are unkeyed: they show edits, removals and
insertions made without recomputing the chain, not those of someone who rewrites it.

`AuditWriter` is the gateway's side: hooks `submit` rows without blocking, a daemon thread
writes them in batches and reports `healthy = False` while the store cannot be written.

Exceptions:

    StoreError               anything the audit store cannot do
    ├── StoreUnavailable     the store cannot be opened, read or written
    │   └── StoreNotFound    no store at that path (readers never create one)
    ├── SchemaTooNew         the store was written by a newer holdgate
    ├── BadRow               a row names an unknown table or column, or a value of the wrong type
    ├── UnknownApproval      no approval with that id
    ├── ApprovalNotPending   the approval is not in the state the change needs
    └── SelfApproval         a requester tried to approve their own request
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

logger = logging.getLogger("holdgate")

StoreRef = str | os.PathLike[str] | Database
Row = dict[str, Any]

GENESIS = "0" * 64
DECISIONS = ("approved", "denied", "expired", "cancelled")
# Logged against an approval without changing its state.
ANNOTATIONS = ("refused_attempt", "grant_used")
APPROVAL_STATES = ("pending", *DECISIONS, *ANNOTATIONS)


class StoreError(Exception):
    """Anything the audit store cannot do."""


class StoreUnavailable(StoreError):
    """The store cannot be opened, read or written."""


class StoreNotFound(StoreUnavailable):
    """No store at that path (readers never create one)."""


class SchemaTooNew(StoreError):
    """The store was written by a newer holdgate."""


class BadRow(StoreError):
    """A row names an unknown table or column, or a value of the wrong type."""


class UnknownApproval(StoreError):
    """No approval with that id."""


class ApprovalNotPending(StoreError):
    """The approval is not in the state the change needs (usually: already decided)."""

    def __init__(self, approval_id: str, current: Row) -> None:
        super().__init__(
            f"approval {approval_id} is {current['state']}"
            + (f" (by {current['decider']})" if current.get("decider") else "")
        )
        self.current = current


class SelfApproval(StoreError):
    """A requester tried to approve their own request."""


# --- schema -------------------------------------------------------------------------------

_V1: dict[str, dict[str, type]] = {
    "sessions": {
        "session_id": str,
        "user": str,
        "upstream": str,
        "client_addr": str,
        "protocol_version": str,
        "first_seen": str,
    },
    "events": {
        "ts": str,
        "flow_id": str,
        "session_id": str,
        "direction": str,
        "user": str,
        "groups": str,
        "auth_method": str,
        "upstream": str,
        "method": str,
        "target": str,
        "jsonrpc_id": str,
        "args_digest": str,
        "args_masked": str,
        "decision": str,
        "rule": str,
        "reason": str,
        "approval_id": str,
        "status": int,
        "latency_ms": float,
        "masked": str,
        "config_hash": str,
        "client_addr": str,
        "extra": str,
    },
    "approvals": {
        "ts": str,
        "approval_id": str,
        "state": str,
        "requester": str,
        "upstream": str,
        "method": str,
        "tool": str,
        "args_masked": str,
        "args_digest": str,
        "request_digest": str,
        "rule": str,
        "approvers": str,
        "decider": str,
        "reason": str,
        "created": str,
        "expires": str,
        "changes": str,
        "flow_id": str,
    },
    "config_versions": {
        "ts": str,
        "config_hash": str,
        "source": str,
        "outcome": str,
        "detail": str,
        "content": str,
    },
    "tool_pins": {
        "ts": str,
        "upstream": str,
        "tool": str,
        "definition_digest": str,
        "definition": str,
        "event": str,
        "actor": str,
        "detail": str,
    },
    "checkpoints": {
        "ts": str,
        "first_seq": int,
        "last_seq": int,
        "last_hash": str,
        "cutoff": str,
        "removed": str,
        "actor": str,
    },
}

# The content columns of each chained table as of the newest schema version.
COLUMNS = _V1
CHAINED = tuple(COLUMNS)
TIME_COLUMN = {t: "first_seen" if t == "sessions" else "ts" for t in CHAINED}

_INDEXES_V1 = {
    "events": [
        ["ts"],
        ["session_id", "seq"],
        ["user", "ts"],
        ["upstream", "target"],
        ["approval_id"],
    ],
    "approvals": [["approval_id", "seq"], ["ts"]],
    "sessions": [["session_id"], ["first_seen"]],
}

# Requests that were refused, whatever the reason: everything but these decisions.
_NOT_DENIED = "('allow', 'pass', 'approve', 'dropped')"

_VIEWS_V1 = {
    "v_sessions": f"""
WITH s AS (
  SELECT session_id, user, upstream, client_addr, protocol_version,
         min(first_seen) AS first_seen
  FROM sessions GROUP BY session_id
), e AS (
  SELECT session_id, user, upstream, client_addr, min(ts) AS first_event,
         max(ts) AS last_event, count(*) AS events,
         sum(decision NOT IN {_NOT_DENIED}) AS denials
  FROM events WHERE session_id IS NOT NULL GROUP BY session_id
)
SELECT ids.session_id,
       coalesce(s.user, e.user) AS user,
       coalesce(s.upstream, e.upstream) AS upstream,
       coalesce(s.client_addr, e.client_addr) AS client_addr,
       s.protocol_version,
       coalesce(s.first_seen, e.first_event) AS first_seen,
       coalesce(e.last_event, s.first_seen) AS last_seen,
       coalesce(e.events, 0) AS events,
       coalesce(e.denials, 0) AS denials
FROM (SELECT session_id FROM s UNION SELECT session_id FROM e) AS ids
LEFT JOIN s ON s.session_id = ids.session_id
LEFT JOIN e ON e.session_id = ids.session_id""",
    "v_approvals": f"""
SELECT a.approval_id, a.state, a.requester, a.upstream, a.method, a.tool, a.rule,
       a.approvers, a.decider, a.reason, a.created, a.expires,
       CASE WHEN a.state = 'pending' THEN NULL ELSE a.ts END AS decided,
       a.args_masked, a.args_digest, a.request_digest, a.changes, a.flow_id, a.seq
FROM approvals AS a
JOIN (SELECT approval_id, max(seq) AS seq FROM approvals
      WHERE state NOT IN {ANNOTATIONS!r} GROUP BY approval_id) AS latest
  ON a.seq = latest.seq""",
    "v_calls_by_identity": f"""
SELECT user, upstream, method, target AS tool, count(*) AS "count", min(ts) AS "first",
       max(ts) AS "last", sum(decision NOT IN {_NOT_DENIED}) AS denials
FROM events WHERE direction = 'request'
GROUP BY user, upstream, method, target""",
}


def _migrate_v1(db: Database) -> None:
    """Tables, indexes, views and the head of an empty chain."""
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["chain_head"].create({"id": int, "seq": int, "row_hash": str}, pk="id")
    db.execute("INSERT INTO chain_head (id, seq, row_hash) VALUES (1, 0, ?)", [GENESIS])
    for table, columns in _V1.items():
        db[table].create(
            {"seq": int, **columns, "prev_hash": str, "row_hash": str},
            pk="seq",
            not_null={"prev_hash", "row_hash"},
        )
        for index in _INDEXES_V1.get(table, []):
            db[table].create_index(index, index_name=f"ix_{table}_{'_'.join(index)}")
    for name, sql in _VIEWS_V1.items():
        db.create_view(name, sql.strip())


# MIGRATIONS[n] takes a store from schema version n to n + 1; all run in one transaction.
MIGRATIONS: list[Callable[[Database], None]] = [_migrate_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's schema version; 0 for an empty file."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    if schema_version(conn) == SCHEMA_VERSION:
        return
    with _transaction(conn):
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{path}: schema {version}, this holdgate knows {SCHEMA_VERSION}")
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreUnavailable(f"{path} is an SQLite file but not a holdgate audit store")
        db = Database(conn, recursive_triggers=False, execute_plugins=False)
        for migration in MIGRATIONS[version:]:
            migration(db)
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            [str(SCHEMA_VERSION)],
        )


def open_db(
    path: str | os.PathLike[str], *, create: bool = True, busy_timeout: float = 5.0
) -> Database:
    """Open (and create or migrate) a store: WAL mode, busy timeout, autocommit connection."""
    name = os.fspath(path)
    if not create and not os.path.exists(name):
        raise StoreNotFound(f"no audit store at {name}")
    try:
        conn = sqlite3.connect(
            name, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{name}: {exc}") from exc
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        _migrate(conn, name)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreUnavailable(f"{name}: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return Database(conn, recursive_triggers=False, execute_plugins=False)


@contextmanager
def _opened(ref: StoreRef, *, create: bool) -> Iterator[Database]:
    """A Database for `ref`: the one given, or one opened (and closed) for this call."""
    db = ref if isinstance(ref, Database) else open_db(ref, create=create)
    try:
        yield db
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{_name(ref)}: {exc}") from exc
    finally:
        if db is not ref:
            db.close()


def _name(ref: StoreRef) -> str:
    return "audit store" if isinstance(ref, Database) else os.fspath(ref)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


# --- rows and the chain -------------------------------------------------------------------


_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def iso(timestamp: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.000Z (the store's time format).

    Every row takes one, so the formatted second is reused until the clock moves on.
    """
    global _last_second
    fraction, whole = math.modf(time.time() if timestamp is None else timestamp)
    second, micros = int(whole), round(fraction * 1_000_000)  # as datetime rounds
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached, text = _last_second
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{micros // 1000:03d}Z"


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


def chain_hash(prev_hash: str, table: str, content: Row) -> str:
    """The row_hash of a row: its content columns (seq included, NULLs left out)."""
    body = {k: v for k, v in content.items() if v is not None}
    material = f"{prev_hash}\n{table}\n{_canonical(body)}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _coerce(kind: type, value: Any) -> Any:
    """The exact Python value SQLite will store and read back, so hashes verify."""
    if kind is str:
        text = value if isinstance(value, str) else _canonical(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (from JSON "\ud800") SQLite cannot take
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")
    if kind is int and isinstance(value, int | float) and value == int(value):
        if not -(2**63) <= int(value) < 2**63:
            raise ValueError("out of range")
        return int(value)
    if kind is float and isinstance(value, int | float):
        return float(value)
    raise ValueError(f"expected {kind.__name__}")


def normalize_row(table: str, row: Row) -> Row:
    """Check a row against the schema and coerce its values; fills in a missing time."""
    columns = COLUMNS.get(table)
    if columns is None:
        raise BadRow(f"no audited table {table!r}")
    out: Row = {}
    for key, value in row.items():
        kind = columns.get(key)
        if kind is None:
            raise BadRow(f"{table} has no column {key!r}")
        if value is None:
            continue
        try:
            out[key] = _coerce(kind, value)
        except (ValueError, TypeError) as exc:
            raise BadRow(f"{table}.{key}: {exc}") from None
    out.setdefault(TIME_COLUMN[table], iso())
    return out


def _chain(conn: sqlite3.Connection, items: Iterable[tuple[str, Row]]) -> list[int]:
    """Append normalized rows at the head of the chain; call inside a transaction."""
    seq, prev = conn.execute("SELECT seq, row_hash FROM chain_head WHERE id = 1").fetchone()
    seqs = []
    for table, row in items:
        seq += 1
        content = {"seq": seq, **row}
        digest = chain_hash(prev, table, content)
        values = {**content, "prev_hash": prev, "row_hash": digest}
        names = ", ".join(f'"{k}"' for k in values)
        marks = ", ".join("?" for _ in values)
        conn.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', list(values.values()))
        prev = digest
        seqs.append(seq)
    conn.execute("UPDATE chain_head SET seq = ?, row_hash = ? WHERE id = 1", [seq, prev])
    return seqs


def append(db: StoreRef, table: str, row: Row) -> int:
    """Append one row synchronously in its own transaction; returns its seq."""
    normalized = normalize_row(table, row)
    with _opened(db, create=True) as d, _transaction(d.conn):
        return _chain(d.conn, [(table, normalized)])[0]


# --- verify and purge ---------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify`: `at` names the first bad row as (table, seq)."""

    ok: bool
    rows_checked: int
    problem: str | None = None
    at: tuple[str, int] | None = None


def _rows_after(conn: sqlite3.Connection, table: str, after: int) -> Iterator[tuple[int, str, Row]]:
    cursor = conn.execute(f'SELECT * FROM "{table}" WHERE seq > ? ORDER BY seq', [after])
    names = [d[0] for d in cursor.description]
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        yield row["seq"], table, row


def verify(db: StoreRef) -> VerifyReport:
    """Check the hash chain from the latest checkpoint (or the start) to the head."""
    with _opened(db, create=False) as d:
        conn = d.conn
        conn.execute("BEGIN")  # one snapshot across all tables
        try:
            return _verify(conn)
        finally:
            conn.execute("COMMIT")


def _verify(conn: sqlite3.Connection) -> VerifyReport:
    head_seq, head_hash = conn.execute(
        "SELECT seq, row_hash FROM chain_head WHERE id = 1"
    ).fetchone()
    checkpoint = conn.execute(
        "SELECT last_seq, last_hash FROM checkpoints ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    start, prev = checkpoint if checkpoint else (0, GENESIS)
    for table in CHAINED:
        stray = conn.execute(f'SELECT min(seq) FROM "{table}" WHERE seq <= ?', [start]).fetchone()
        if stray[0] is not None:
            return VerifyReport(
                False,
                0,
                f"row at seq {stray[0]} lies in the range purged up to seq {start}: inserted",
                (table, stray[0]),
            )
    checked = 0
    last, last_table = start, ""
    merged = heapq.merge(
        *(_rows_after(conn, t, start) for t in CHAINED), key=lambda item: (item[0], item[1])
    )
    for seq, table, row in merged:
        checked += 1
        content = {k: v for k, v in row.items() if k not in ("prev_hash", "row_hash")}
        if seq == last:
            problem = f"seq {seq} appears twice: a row was inserted"
        elif seq != last + 1:
            missing = str(last + 1) if seq == last + 2 else f"{last + 1}..{seq - 1}"
            problem = f"seq {missing} missing before this row: removed"
        elif chain_hash(row["prev_hash"], table, content) != row["row_hash"]:
            problem = "row content does not match its row_hash: edited (or forged)"
        elif row["prev_hash"] != prev:
            problem = "prev_hash does not match the previous row: inserted or replaced"
        elif seq > head_seq:
            problem = f"row beyond the recorded chain head (seq {head_seq}): inserted"
        else:
            last, last_table, prev = seq, table, row["row_hash"]
            continue
        return VerifyReport(False, checked, problem, (table, seq))
    if last < head_seq:
        missing = str(head_seq) if last + 1 == head_seq else f"{last + 1}..{head_seq}"
        return VerifyReport(
            False,
            checked,
            f"seq {missing} missing at the end of the chain "
            f"(the head records seq {head_seq}): removed",
        )
    if prev != head_hash:
        return VerifyReport(
            False,
            checked,
            "the last row does not match the recorded chain head: replaced",
            (last_table, last),
        )
    return VerifyReport(True, checked)


@dataclass(frozen=True)
class PurgeReport:
    """What `purge` removed; `sessions_gone` have no rows left (their flow files may go)."""

    removed: dict[str, int] = field(default_factory=dict)
    sessions_gone: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoint_seq: int | None = None


def purge(
    db: StoreRef, older_than_seconds: float, now: float | None = None, actor: str | None = None
) -> PurgeReport:
    """Delete the oldest rows past the cutoff and record a chained checkpoint.

    Only a prefix of the chain can go: rows up to (not including) the first row, in seq
    order, whose time is at or after the cutoff (or unknown).
    """
    cutoff = iso((time.time() if now is None else now) - older_than_seconds)
    with _opened(db, create=False) as d, _transaction(d.conn):
        conn = d.conn
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
            conn.execute(
                f'SELECT min(seq), max(seq) FROM "{t}" WHERE seq < ?', [boundary]
            ).fetchone()
            for t in CHAINED
        ]
        firsts = [lo for lo, _ in below if lo is not None]
        if not firsts:
            return PurgeReport()
        last_seq = max(hi for _, hi in below if hi is not None)
        for table in CHAINED:
            found = conn.execute(
                f'SELECT row_hash FROM "{table}" WHERE seq = ?', [last_seq]
            ).fetchone()
            if found is not None:
                last_hash = found[0]
        candidates = [
            r[0]
            for r in conn.execute(
                "SELECT session_id FROM events WHERE seq < ? AND session_id IS NOT NULL UNION "
                "SELECT session_id FROM sessions WHERE seq < ? AND session_id IS NOT NULL",
                [boundary, boundary],
            )
        ]
        counts = {
            t: conn.execute(f'DELETE FROM "{t}" WHERE seq < ?', [boundary]).rowcount
            for t in CHAINED
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
        seq = _chain(conn, [("checkpoints", checkpoint)])[0]
        return PurgeReport(removed, sorted(gone), min(firsts), last_seq, seq)


# --- approvals ----------------------------------------------------------------------------

# Copied from the request into every later state row, so each row stands on its own.
_APPROVAL_REQUEST = (
    "requester",
    "upstream",
    "method",
    "tool",
    "args_masked",
    "args_digest",
    "request_digest",
    "rule",
    "approvers",
    "created",
    "expires",
    "changes",
    "flow_id",
)


def _latest(conn: sqlite3.Connection, approval_id: str) -> Row | None:
    cursor = conn.execute("SELECT * FROM v_approvals WHERE approval_id = ?", [approval_id])
    values = cursor.fetchone()
    return (
        None
        if values is None
        else dict(zip([d[0] for d in cursor.description], values, strict=True))
    )


def create_approval(db: StoreRef, row: Row) -> int:
    """Record a new approval request (state `pending`); returns its seq."""
    return append(db, "approvals", {**row, "state": "pending"})


def append_approval_state(
    db: StoreRef,
    approval_id: str,
    state: str,
    decider: str | None = None,
    reason: str | None = None,
    *,
    strict: bool = False,
) -> bool:
    """Record a state change; False (or, with strict, an exception) when it does not apply.

    A decision (approved/denied/expired/cancelled) needs a pending approval, so of two
    concurrent deciders exactly one wins; `grant_used` needs an approved one;
    `refused_attempt` is logged against any. A requester can never approve their own.
    """
    if state not in APPROVAL_STATES or state == "pending":
        raise BadRow(f"not an approval state change: {state!r}")
    with _opened(db, create=True) as d, _transaction(d.conn):
        current = _latest(d.conn, approval_id)
        problem: StoreError | None = None
        if current is None:
            problem = UnknownApproval(f"no approval {approval_id}")
        elif state == "approved" and decider is not None and decider == current["requester"]:
            problem = SelfApproval(f"{decider} cannot approve their own request {approval_id}")
        elif (state in DECISIONS and current["state"] != "pending") or (
            state == "grant_used" and current["state"] != "approved"
        ):
            problem = ApprovalNotPending(approval_id, current)
        if problem is not None:
            if strict:
                raise problem
            return False
        assert current is not None
        row = {k: current[k] for k in _APPROVAL_REQUEST}
        row.update(approval_id=approval_id, state=state, decider=decider, reason=reason)
        _chain(d.conn, [("approvals", normalize_row("approvals", row))])
        return True


def expire_pending(db: StoreRef, reason: str) -> int:
    """Close every pending approval as `expired` (e.g. at gateway start); returns how many."""
    with _opened(db, create=True) as d, _transaction(d.conn):
        pending = list(d.query("SELECT * FROM v_approvals WHERE state = 'pending'"))
        rows = []
        for current in pending:
            row = {k: current[k] for k in _APPROVAL_REQUEST}
            row.update(approval_id=current["approval_id"], state="expired", reason=reason)
            rows.append(("approvals", normalize_row("approvals", row)))
        _chain(d.conn, rows)
        return len(rows)


def pending_approvals(db: StoreRef) -> list[Row]:
    """Approvals waiting for a decision, oldest first."""
    with _opened(db, create=False) as d:
        return list(d.query("SELECT * FROM v_approvals WHERE state = 'pending' ORDER BY seq"))


def approval(db: StoreRef, approval_id: str) -> Row | None:
    """The latest state of one approval (as in v_approvals) plus `history`: all its rows."""
    with _opened(db, create=False) as d:
        current = _latest(d.conn, approval_id)
        if current is None:
            return None
        current["history"] = list(
            d.query("SELECT * FROM approvals WHERE approval_id = ? ORDER BY seq", [approval_id])
        )
        return current


def approval_states(db: StoreRef, approval_ids: Iterable[str]) -> dict[str, Row]:
    """The latest state of each of these approvals that exists."""
    ids = list(approval_ids)
    if not ids:
        return {}
    with _opened(db, create=False) as d:
        marks = ", ".join("?" for _ in ids)
        return {
            row["approval_id"]: row
            for row in d.query(f"SELECT * FROM v_approvals WHERE approval_id IN ({marks})", ids)
        }


def tool_pin_rows(db: StoreRef, after: int = 0) -> list[Row]:
    """`tool_pins` rows after seq `after`, in store order (folded by `pins.PinBook`)."""
    with _opened(db, create=False) as d:
        return list(d.query("SELECT * FROM tool_pins WHERE seq > ? ORDER BY seq", [after]))


# --- reading for the CLI ------------------------------------------------------------------

# The export feed's fields, in order. Stable: fields are only ever added at the end.
# JSON-valued fields (groups, args_masked, masked, extra) are JSON text.
EXPORT_FIELDS = (
    "seq",
    "ts",
    "session_id",
    "flow_id",
    "direction",
    "user",
    "groups",
    "auth_method",
    "upstream",
    "method",
    "target",
    "jsonrpc_id",
    "decision",
    "rule",
    "reason",
    "approval_id",
    "status",
    "latency_ms",
    "args_digest",
    "args_masked",
    "masked",
    "config_hash",
    "client_addr",
    "extra",
    "row_hash",
)


def event_row(db: StoreRef, seq: int) -> Row | None:
    """One recorded event by its seq (as `sessions show` and `export` print it)."""
    with _opened(db, create=False) as d:
        return next(iter(d.query("SELECT * FROM events WHERE seq = ?", [seq])), None)


def list_sessions(db: StoreRef, since: str | None = None) -> list[Row]:
    """Sessions (v_sessions) active at or after `since` (ISO time), oldest first."""
    with _opened(db, create=False) as d:
        return list(
            d.query(
                "SELECT * FROM v_sessions WHERE ? IS NULL OR last_seen >= ? ORDER BY first_seen",
                [since, since],
            )
        )


def session_events(db: StoreRef, session_id: str) -> list[Row]:
    """One session's events in the order they were recorded."""
    with _opened(db, create=False) as d:
        return list(d.query("SELECT * FROM events WHERE session_id = ? ORDER BY seq", [session_id]))


def export_rows(
    db: StoreRef,
    since: str | None = None,
    until: str | None = None,
    user: str | None = None,
    upstream: str | None = None,
) -> Iterator[Row]:
    """Events with `EXPORT_FIELDS`, in seq order; since <= ts < until (ISO times)."""
    fields = ", ".join(f'"{f}"' for f in EXPORT_FIELDS)
    with _opened(db, create=False) as d:
        yield from d.query(
            f"SELECT {fields} FROM events WHERE (:since IS NULL OR ts >= :since) "
            "AND (:until IS NULL OR ts < :until) AND (:user IS NULL OR user = :user) "
            "AND (:upstream IS NULL OR upstream = :upstream) ORDER BY seq",
            {"since": since, "until": until, "user": user, "upstream": upstream},
        )


# --- the gateway's writer -----------------------------------------------------------------

_Item = tuple[str, Row] | threading.Event | None
# Errors that come from the rows, not the store: such a batch is dropped, not retried.
_BAD_DATA = (
    sqlite3.DataError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    ValueError,
    OverflowError,
)


class AuditWriter:
    """Rows in, batches out: hooks `submit` without blocking; a daemon thread writes.

    While the store cannot be written, `healthy` is False, `submit` refuses (counted in
    `lost`) and the thread retries the batch in hand every `retry_interval` seconds, so
    rows accepted before the failure are written once the store works again. With
    `required`, the store is opened now and `StoreUnavailable` raised if that fails;
    otherwise the writer starts unhealthy and keeps trying.

    Every commit is synced to disk (`synchronous=FULL`), so the thread gathers rows for up
    to `linger` seconds before committing them together: under load one sync covers many
    rows instead of one (a `flush` ends the wait at once).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        queue_size: int = 10_000,
        batch_max: int = 500,
        linger: float = 0.01,
        required: bool = True,
        retry_interval: float = 1.0,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.batch_max = batch_max
        self.linger = linger
        self.retry_interval = retry_interval
        self.busy_timeout = busy_timeout
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        self.max_queue_depth_seen = 0
        self._queue: queue.Queue[_Item] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._opened_once = False
        self._db: Database | None = None
        if required:
            self._db = self._open()
        self._thread = threading.Thread(target=self._run, name="holdgate-audit", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, table: str, row: Row) -> bool:
        """Queue a row; False (and counted lost) when full, failing or closed.

        Raises BadRow for a row that does not fit the schema.
        """
        item = (table, normalize_row(table, row))
        if self.healthy and not self._closing.is_set():
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                pass
            else:
                depth = self._queue.qsize()
                with self._lock:
                    self.max_queue_depth_seen = max(self.max_queue_depth_seen, depth)
                return True
        self._count_lost(1)
        return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written; False on timeout or once closed."""
        if self._closing.is_set():
            return False
        marker = threading.Event()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (if the store works), then stop the thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        with suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _count_lost(self, n: int) -> None:
        with self._lock:
            self.lost += n

    def _open(self) -> Database:
        db = open_db(self.path, create=not self._opened_once, busy_timeout=self.busy_timeout)
        self._opened_once = True
        return db

    def _run(self) -> None:
        batch: list[tuple[str, Row]] = []
        markers: list[threading.Event] = []
        stopping = False
        if self._db is None:
            self._write(batch)
        while True:
            try:
                # While failing with nothing in hand, wake up to probe the store.
                item = self._queue.get(timeout=None if self.healthy else self.retry_interval)
            except queue.Empty:
                self._write(batch)
                continue
            commit_by = time.monotonic() + self.linger
            while True:
                if item is None:
                    stopping = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)
                if stopping or markers or len(batch) >= self.batch_max:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, commit_by - time.monotonic()))
                except queue.Empty:
                    break
            while not self._write(batch):
                if self._closing.wait(self.retry_interval):
                    self._abandon(batch)
                    return
            batch = []
            for marker in markers:
                marker.set()
            markers = []
            if stopping:
                self._disconnect()
                return

    def _write(self, batch: list[tuple[str, Row]]) -> bool:
        """One attempt: append the batch (with nothing in hand while failing: a probe write).

        False while the store cannot be written; a batch the store refuses for its
        content is dropped (counted lost) rather than retried for ever.
        """
        if not batch and self.healthy and self._db is not None:
            return True
        try:
            if self._db is None:
                self._db = self._open()
            with _transaction(self._db.conn):
                if batch:
                    _chain(self._db.conn, batch)
                else:
                    self._db.conn.execute("UPDATE chain_head SET seq = seq WHERE id = 1")
        except _BAD_DATA as exc:
            self._count_lost(len(batch))
            self.last_error = f"{len(batch)} rows dropped: {type(exc).__name__}: {exc}"
            logger.error("holdgate: audit rows could not be stored: %s", self.last_error)
        except Exception as exc:  # whatever it is, the record is not being kept
            self._disconnect()
            error = f"{type(exc).__name__}: {exc}"
            if self.healthy or error != self.last_error:
                logger.error("holdgate: audit store %s cannot be written: %s", self.path, error)
            self.last_error = error
            self.healthy = False
            return False
        if not self.healthy:
            logger.warning("holdgate: audit store %s writable again", self.path)
            self.healthy = True
        return True

    def _disconnect(self) -> None:
        if self._db is not None:
            with suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _abandon(self, batch: list[tuple[str, Row]]) -> None:
        """Closing while the store fails: count what was never written."""
        lost = len(batch)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                lost += 1
        self._count_lost(lost)
        self._disconnect()
