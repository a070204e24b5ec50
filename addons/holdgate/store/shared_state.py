"""What replicas share outside the chain: rate-limit windows, approval grants, who owns
each MCP session, and the rule that keeps one first-seen pin per tool.

`rate_counters` and `grants` are not evidence (never hashed, updated in place). Each call
here is one statement, atomic on its own on both backends (SQLite's write lock, a row
lock in PostgreSQL), so it does not wait for the chain's lock. Times are seconds since
the epoch by `now`: the database clock on PostgreSQL (`clock`, an SQL expression, so one
clock judges every replica), this process's on SQLite, or a caller's explicit `now`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from holdgate.store.rows import Row
from holdgate.store.sqlconn import SqlConnection


def _now(clock: str | None, now: float | None) -> tuple[str, dict[str, Any]]:
    """The SQL for "now" and its parameter: an explicit `now`, the database's clock, or
    this process's."""
    if now is None and clock is not None:
        return clock, {}
    return ":now", {"now": time.time() if now is None else now}


def take_rate(
    conn: SqlConnection, bucket: str, period: float, clock: str | None, now: float | None
) -> tuple[int, float]:
    """Count one call in `bucket`'s fixed window (a new window starts at the first call
    after `period` is over); (hits in the window including this one, window start)."""
    at, params = _now(clock, now)
    row = conn.execute(
        "INSERT INTO rate_counters (bucket, window_start, hits) "
        f"VALUES (:bucket, {at}, 1) ON CONFLICT (bucket) DO UPDATE SET "
        "window_start = CASE WHEN rate_counters.window_start + :period <= excluded.window_start "
        "THEN excluded.window_start ELSE rate_counters.window_start END, "
        "hits = CASE WHEN rate_counters.window_start + :period <= excluded.window_start "
        "THEN 1 ELSE rate_counters.hits + 1 END "
        "RETURNING hits, window_start",
        {"bucket": bucket, "period": period, **params},
    ).fetchone()
    return int(row[0]), float(row[1])


def give_back_rate(conn: SqlConnection, bucket: str, window_start: float) -> None:
    """Uncount one call, if its window is still the bucket's current one."""
    conn.execute(
        "UPDATE rate_counters SET hits = hits - 1 "
        "WHERE bucket = ? AND window_start = ? AND hits > 0",
        [bucket, window_start],
    )


def add_grant(
    conn: SqlConnection,
    grant_key: str,
    approval_id: str,
    seconds: float,
    clock: str | None,
    now: float | None,
) -> None:
    """Let identical calls pass for `seconds` from now; grants already over are deleted."""
    at, params = _now(clock, now)
    conn.execute(
        "INSERT INTO grants (grant_key, approval_id, expires) "
        f"VALUES (:key, :approval_id, {at} + :seconds) ON CONFLICT (grant_key) DO UPDATE "
        "SET approval_id = excluded.approval_id, expires = excluded.expires",
        {"key": grant_key, "approval_id": approval_id, "seconds": seconds, **params},
    )
    conn.execute(f"DELETE FROM grants WHERE expires <= {at}", params)


def find_grant(
    conn: SqlConnection, grant_key: str, clock: str | None, now: float | None
) -> str | None:
    """The approval id of the grant for `grant_key` that is not over yet."""
    at, params = _now(clock, now)
    row = conn.execute(
        f"SELECT approval_id FROM grants WHERE grant_key = :key AND expires > {at}",
        {"key": grant_key, **params},
    ).fetchone()
    return str(row[0]) if row else None


def without_known_first_seen(
    conn: SqlConnection, rows: Iterable[tuple[str, Row]]
) -> list[tuple[str, Row]]:
    """The rows to append, less every first-seen tool pin for a tool the store already has
    a pin row for. Inside the append's transaction (the chain's lock), so of replicas that
    see a new tool at once exactly one pins it; the others read its pin back."""
    kept: list[tuple[str, Row]] = []
    pinned: set[tuple[Any, Any]] = set()
    for table, row in rows:
        if table == "tool_pins" and row.get("event") == "first-seen":
            key = (row.get("upstream"), row.get("tool"))
            known = conn.execute(
                "SELECT 1 FROM tool_pins WHERE upstream = ? AND tool = ? LIMIT 1", list(key)
            ).fetchone()
            if known is not None or key in pinned:
                continue
            pinned.add(key)
        kept.append((table, row))
    return kept


def claim_session(conn: SqlConnection, session_key: str, user: str) -> str:
    """The owner of a session: `user` if nobody held it yet (first claim wins, across
    replicas), else whoever does."""
    conn.execute(
        "INSERT INTO session_owners (session_key, owner, first_seen) VALUES (?, ?, ?) "
        "ON CONFLICT (session_key) DO NOTHING",
        [session_key, user, time.time()],
    )
    row = conn.execute(
        "SELECT owner FROM session_owners WHERE session_key = ?", [session_key]
    ).fetchone()
    return str(row[0])


def end_session(conn: SqlConnection, session_key: str) -> None:
    conn.execute("DELETE FROM session_owners WHERE session_key = ?", [session_key])
