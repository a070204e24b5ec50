"""`SqliteStore`, the embedded audit store, and `open_store`, which picks a backend.

One SQLite file in WAL mode. The store owns one connection for its callers, used under a
lock (asyncio.to_thread may call from several threads at once), and gives its writer
thread a connection of its own. Several processes may use one file: every change is one
`BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from holdgate.store.digest_key import load_or_create_key
from holdgate.store.errors import StoreNotSupported, StoreUnavailable
from holdgate.store.interface import Store
from holdgate.store.schema import open_db
from holdgate.store.sql_store import SqlStore
from holdgate.store.writer import AuditWriter, Writer
from holdgate.store.writer_process import ProcessAuditWriter


class SqliteStore(SqlStore):
    """The audit store in one SQLite file (created and migrated unless `create=False`)."""

    row_errors = (
        sqlite3.DataError,
        sqlite3.IntegrityError,
        sqlite3.InterfaceError,
        sqlite3.ProgrammingError,
    )

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, busy_timeout: float = 5.0
    ) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._db = open_db(self.path, create=create, busy_timeout=busy_timeout)
        self._lock = threading.RLock()
        self._digest_key: bytes | None = None

    @property
    def name(self) -> str:
        return self.path

    @property
    def digest_key(self) -> bytes:
        if self._digest_key is None:
            self._digest_key = load_or_create_key(self.path + ".key")
        return self._digest_key

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one caller at a time; SQLite errors become StoreUnavailable."""
        with self._lock:
            try:
                yield self._db.conn
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def writer(self, *, process: bool = False, **options: Any) -> Writer:
        busy_timeout = options.pop("busy_timeout", self.busy_timeout)
        if process:
            target = {
                "backend": "sqlite",
                "path": os.path.abspath(self.path),
                "busy_timeout": busy_timeout,
            }
            return ProcessAuditWriter(target, self.path, **options)

        def open_target(create: bool) -> SqliteStore:
            return SqliteStore(self.path, create=create, busy_timeout=busy_timeout)

        return AuditWriter(open_target, self.path, **options)


def open_store(url_or_path: str | os.PathLike[str], *, create: bool = True) -> Store:
    """The store a `holdgate_store` / `--store` value names: a SQLite path (or
    `sqlite:///PATH`), or a `postgresql://` URL (shared by replicas)."""
    text = os.fspath(url_or_path)
    if "://" not in text:
        return SqliteStore(text, create=create)
    scheme = urlsplit(text).scheme.lower()
    if scheme == "sqlite":
        return SqliteStore(text.partition("://")[2] or ".", create=create)
    if scheme in ("postgresql", "postgres"):
        # here, not at the top: psycopg loads only for a PostgreSQL store
        from holdgate.store.postgres_store import PostgresStore

        return PostgresStore(text, create=create)
    raise StoreNotSupported(
        f"no audit store backend for {scheme}:// URLs; use a SQLite path such as "
        "holdgate.sqlite3 or a postgresql:// URL"
    )
