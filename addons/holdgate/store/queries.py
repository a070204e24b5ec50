"""What people and the gateway read back: sessions, events, the export feed, tool pins,
config versions.

Time bounds are ISO times in the store's format (`rows.iso`), compared as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from holdgate.store.rows import EventRow, RecordingRow, SessionSummary, ToolPinRow
from holdgate.store.sqlconn import SqlConnection, select

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
    "traceparent",
)


def event(conn: SqlConnection, seq: int) -> EventRow | None:
    rows = select(conn, "SELECT * FROM events WHERE seq = ?", [seq])
    return cast(EventRow, rows[0]) if rows else None


def sessions(conn: SqlConnection, since: str | None) -> list[SessionSummary]:
    rows = select(
        conn,
        "SELECT * FROM v_sessions WHERE CAST(? AS TEXT) IS NULL OR last_seen >= ? "
        "ORDER BY first_seen",
        [since, since],
    )
    return cast(list[SessionSummary], rows)


def session_events(conn: SqlConnection, session_id: str) -> list[EventRow]:
    rows = select(conn, "SELECT * FROM events WHERE session_id = ? ORDER BY seq", [session_id])
    return cast(list[EventRow], rows)


def events(
    conn: SqlConnection,
    since: str | None,
    until: str | None,
    user: str | None,
    upstream: str | None,
) -> list[EventRow]:
    fields = ", ".join(f'"{f}"' for f in EXPORT_FIELDS)
    rows = select(
        conn,
        # CAST: PostgreSQL must know a parameter's type even where it is only tested for NULL
        f"SELECT {fields} FROM events WHERE (CAST(:since AS TEXT) IS NULL OR ts >= :since) "
        "AND (CAST(:until AS TEXT) IS NULL OR ts < :until) "
        'AND (CAST(:user AS TEXT) IS NULL OR "user" = :user) '
        "AND (CAST(:upstream AS TEXT) IS NULL OR upstream = :upstream) ORDER BY seq",
        {"since": since, "until": until, "user": user, "upstream": upstream},
    )
    return cast(list[EventRow], rows)


def session_recordings(conn: SqlConnection, session_ids: Sequence[str]) -> list[RecordingRow]:
    if not session_ids:
        return []
    marks = ", ".join("?" * len(session_ids))
    rows = select(
        conn,
        f"SELECT * FROM recordings WHERE session_id IN ({marks}) ORDER BY seq",
        list(session_ids),
    )
    return cast(list[RecordingRow], rows)


def tool_pin_rows(conn: SqlConnection, after: int) -> list[ToolPinRow]:
    rows = select(conn, "SELECT * FROM tool_pins WHERE seq > ? ORDER BY seq", [after])
    return cast(list[ToolPinRow], rows)


def config_versions(conn: SqlConnection) -> list[dict[str, Any]]:
    """Every config version row (without its text), in store order; `role` is
    "candidate" for a shadow policy's rows, None or "active" for the config in force."""
    return select(
        conn,
        "SELECT seq, ts, config_hash, source, outcome, detail, role, replica "
        "FROM config_versions ORDER BY seq",
    )
