"""Who owns each upstream task, shared by every replica (not chained, like session owners).

A row is written when a call's answer announces a task (first claim wins, so a hostile
upstream handing a second caller the same id never makes it theirs), and read before any
`tasks/*` request is forwarded. It names the creating call (tool, flow, JSON-RPC id), so a
task's later payload is masked with that tool's profiles and recorded as its result.
Rows whose `expires` (database clock on PostgreSQL) has passed are deleted as new ones come.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from holdgate.store.shared_state import _now
from holdgate.store.sqlconn import SqlConnection

COLUMNS = (
    "task_key",
    "owner",
    "upstream",
    "session_id",
    "tool",
    "call_flow_id",
    "call_jsonrpc_id",
    "created",
    "expires",
)
# the caller's newest tasks a tasks/list is filtered against
LISTED_LIMIT = 10_000


@dataclass(frozen=True)
class TaskRecord:
    """One task and the call that created it."""

    task_key: str
    owner: str
    upstream: str
    session_id: str | None
    tool: str
    call_flow_id: str
    call_jsonrpc_id: str
    created: float
    expires: float | None

    def link(self) -> dict[str, Any]:
        """What an audit row says of the task: the call whose result it is."""
        return {
            "tool": self.tool,
            "call_flow_id": self.call_flow_id,
            "call_jsonrpc_id": self.call_jsonrpc_id,
            "session_id": self.session_id,
        }


def _record(row: Any) -> TaskRecord:
    return TaskRecord(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        None if row[3] is None else str(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
        float(row[7]),
        None if row[8] is None else float(row[8]),
    )


def claim_task(
    conn: SqlConnection, record: TaskRecord, clock: str | None, now: float | None
) -> TaskRecord:
    """Record `record` unless its task has an owner already; the record that holds."""
    at, params = _now(clock, now)
    conn.execute(f"DELETE FROM task_owners WHERE expires IS NOT NULL AND expires <= {at}", params)
    names = ", ".join(COLUMNS)
    values = ", ".join(f":{c}" for c in COLUMNS)
    conn.execute(
        f"INSERT INTO task_owners ({names}) VALUES ({values}) ON CONFLICT (task_key) DO NOTHING",
        {c: getattr(record, c) for c in COLUMNS},
    )
    found = find_task(conn, record.task_key, clock, now)
    if found is None:  # deleted between the two statements: expired at once
        return record
    return found


def find_task(
    conn: SqlConnection, task_key: str, clock: str | None, now: float | None
) -> TaskRecord | None:
    at, params = _now(clock, now)
    row = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM task_owners WHERE task_key = :key "
        f"AND (expires IS NULL OR expires > {at})",
        {"key": task_key, **params},
    ).fetchone()
    return _record(row) if row else None


def task_keys_of(
    conn: SqlConnection, owner: str, upstream: str, clock: str | None, now: float | None
) -> set[str]:
    """The keys of the caller's newest tasks on an upstream (at most LISTED_LIMIT)."""
    at, params = _now(clock, now)
    rows = conn.execute(
        "SELECT task_key FROM task_owners WHERE owner = :owner AND upstream = :upstream "
        f"AND (expires IS NULL OR expires > {at}) ORDER BY created DESC LIMIT {LISTED_LIMIT}",
        {"owner": owner, "upstream": upstream, **params},
    ).fetchall()
    return {str(r[0]) for r in rows}
