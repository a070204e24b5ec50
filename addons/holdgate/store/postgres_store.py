"""`PostgresStore`: the audit store in a PostgreSQL database, shared by several gateways.

psycopg 3, synchronous: the store's work already runs off the event loop (the writer
thread, `asyncio.to_thread`), and its connections are safe across threads. Every change
takes the chain's advisory lock (`sqlconn.PgConnection`), so all replicas append to one
chain in commit order and two deciders of one approval are serialized by the database.

There is no per-host digest key here: each host would digest arguments differently, so
grants and correlation would break across replicas. The config's `hash_key` is required.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from holdgate.store.dsn import shown_dsn
from holdgate.store.errors import StoreError, StoreNotFound, StoreUnavailable
from holdgate.store.pg_listen import ApprovalNotices, notify
from holdgate.store.pg_schema import migrate, schema_version
from holdgate.store.sql_store import SqlStore
from holdgate.store.sqlconn import PgConnection, SqlConnection
from holdgate.store.writer import AuditWriter, Writer
from holdgate.store.writer_process import ProcessAuditWriter


class PostgresStore(SqlStore):
    """The audit store in the PostgreSQL database `url` names (created tables and migrated
    unless `create=False`, which needs an existing holdgate store)."""

    row_errors = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)
    clock_sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"

    def __init__(self, url: str, *, create: bool = True, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._lock = threading.RLock()
        try:
            self._db = PgConnection(url, connect_timeout=connect_timeout)
            if not create and schema_version(self._db) == 0:
                self._db.close()
                raise StoreNotFound(f"no audit store in {shown_dsn(url)}")
            migrate(self._db, shown_dsn(url))
        except psycopg.Error as exc:
            raise StoreUnavailable(f"{shown_dsn(url)}: {_reason(exc)}") from exc

    @property
    def name(self) -> str:
        return shown_dsn(self.url)

    @property
    def digest_key(self) -> bytes:
        raise StoreError(
            "a PostgreSQL store has no per-host digest key: set `hash_key` in the config "
            "(one key for every replica)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _conn(self) -> Iterator[PgConnection]:
        """The connection, for one caller at a time; driver errors become StoreUnavailable
        (the next use reconnects)."""
        with self._lock:
            try:
                yield self._db
            except psycopg.Error as exc:
                raise StoreUnavailable(f"{self.name}: {_reason(exc)}") from exc

    def db_now(self) -> float:
        """The server's clock, the one every replica's lease is judged by."""
        with self._conn() as conn:
            return float(conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])

    def _approval_changed(self, conn: SqlConnection, approval_id: str) -> None:
        notify(conn, approval_id)

    def approval_listener(self, wake: Callable[[str], None]) -> ApprovalNotices:
        return ApprovalNotices(self.url, self.name, wake, connect_timeout=self.connect_timeout)

    def writer(self, *, process: bool = False, **options: Any) -> Writer:
        options.pop("busy_timeout", None)
        if process:  # the URL, password included, reaches the child in its first frame
            target = {
                "backend": "postgresql",
                "url": self.url,
                "connect_timeout": self.connect_timeout,
            }
            return ProcessAuditWriter(target, self.name, **options)

        def open_target(create: bool) -> PostgresStore:
            return PostgresStore(self.url, create=create, connect_timeout=self.connect_timeout)

        return AuditWriter(open_target, self.name, **options)


def _reason(exc: psycopg.Error) -> str:
    """The server's message, one line (psycopg's can span several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
