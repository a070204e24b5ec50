"""Audit feeds in the store: the rows a feed sends next, and each feed's durable cursor.

A feed reads the export feed's rows (`queries.EXPORT_FIELDS` of `events`) with
`seq > cursor` in seq order. That is gap-free once committed: `seq` is assigned inside the
write transaction that holds the chain's one write lock (SQLite's write lock; on
PostgreSQL a transaction-scoped advisory lock, released only after the commit is
visible), so no transaction can commit seq N+1 while the one holding N is still open.

`feed_cursors` is unchained shared state: per feed the last seq its receiver took, and a
lease (`holder`, `lease_until`, by the database clock) so that of several replicas on one
store exactly one sends the feed at a time. The cursor only moves for the lease holder.
"""

from __future__ import annotations

from typing import Any, cast

from holdgate.store.queries import EXPORT_FIELDS
from holdgate.store.rows import EventRow
from holdgate.store.sqlconn import SqlConnection, select, transaction

LAST_ERROR_MAX = 300  # characters of a delivery error kept in the cursor row

_FIELDS = ", ".join(f'"{f}"' for f in EXPORT_FIELDS)


def rows_after(conn: SqlConnection, after: int, limit: int) -> list[EventRow]:
    """Up to `limit` export rows with seq > `after`, in seq order."""
    rows = select(
        conn, f"SELECT {_FIELDS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", [after, limit]
    )
    return cast(list[EventRow], rows)


def head(conn: SqlConnection) -> int:
    """The seq of the last row a feed sends (0 when there is none): feeds send `events`
    only, so the chain's head (any chained table) would overstate what is left to send."""
    found = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    return int(found or 0)


def pending(conn: SqlConnection, after: int) -> int:
    """How many export rows a feed at `after` has still to send (its lag)."""
    return int(conn.execute("SELECT count(*) FROM events WHERE seq > ?", [after]).fetchone()[0])


def claim(conn: SqlConnection, feed: str, holder: str, now: float, lease: float) -> int | None:
    """Take or renew the feed's lease for `holder`: the cursor's seq, or None while another
    holder's lease runs. A feed seen for the first time starts at seq 0."""
    with transaction(conn):
        rows = select(
            conn, "SELECT seq, holder, lease_until FROM feed_cursors WHERE feed = ?", [feed]
        )
        if not rows:
            conn.execute(
                "INSERT INTO feed_cursors (feed, seq, updated, holder, lease_until) "
                "VALUES (?, 0, ?, ?, ?)",
                [feed, now, holder, now + lease],
            )
            return 0
        row = rows[0]
        if row["holder"] not in (None, holder) and float(row["lease_until"] or 0.0) > now:
            return None
        conn.execute(
            "UPDATE feed_cursors SET holder = ?, lease_until = ? WHERE feed = ?",
            [holder, now + lease, feed],
        )
        return int(row["seq"] or 0)


def advance(
    conn: SqlConnection, feed: str, holder: str, seq: int, now: float, lease: float
) -> bool:
    """Move the cursor to `seq` (never back) and renew the lease; False if `holder` lost
    the lease meanwhile (then another replica sends, and this one must stop)."""
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE feed_cursors SET seq = CASE WHEN seq < ? THEN ? ELSE seq END, "
            "updated = ?, lease_until = ?, last_error = NULL WHERE feed = ? AND holder = ?",
            [seq, seq, now, now + lease, feed, holder],
        )
        return bool(cursor.rowcount == 1)


def note_error(conn: SqlConnection, feed: str, holder: str, error: str) -> None:
    """Keep the latest delivery error (for `holdgate feeds`); the cursor stays."""
    with transaction(conn):
        conn.execute(
            "UPDATE feed_cursors SET last_error = ? WHERE feed = ? AND holder = ?",
            [error[:LAST_ERROR_MAX], feed, holder],
        )


def release(conn: SqlConnection, feed: str, holder: str) -> None:
    """Give the lease up at shutdown so another replica takes over at once."""
    with transaction(conn):
        conn.execute(
            "UPDATE feed_cursors SET lease_until = 0 WHERE feed = ? AND holder = ?",
            [feed, holder],
        )


def cursors(conn: SqlConnection) -> list[dict[str, Any]]:
    """Every feed's cursor row, by name."""
    return select(conn, "SELECT * FROM feed_cursors ORDER BY feed")
