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
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from holdgate.store import approval_records, checkpoints, queries
from holdgate.store.approval_records import Decision
from holdgate.store.chain import VerifyReport, append_rows, normalize_row, verify_chain
from holdgate.store.digest_key import load_or_create_key
from holdgate.store.errors import BadRow, StoreNotSupported, StoreUnavailable
from holdgate.store.interface import Store
from holdgate.store.purge import PurgeRecord, PurgeReport, last_purge, purge_before
from holdgate.store.rows import ApprovalRecord, EventRow, Row, SessionSummary, ToolPinRow, iso
from holdgate.store.schema import CHAINED, open_db, transaction
from holdgate.store.writer import AuditWriter, Batch

# sqlite3 errors about the rows, not the store: the writer drops such a batch.
_ROW_ERRORS = (
    sqlite3.DataError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)


class SqliteStore:
    """The audit store in one SQLite file (created and migrated unless `create=False`)."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one caller at a time; SQLite errors become StoreUnavailable."""
        with self._lock:
            try:
                yield self._db.conn
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc

    # --- writing ---

    def append(self, table: str, row: Row) -> int:
        normalized = normalize_row(table, row)
        with self._conn() as conn, transaction(conn):
            return append_rows(conn, [(table, normalized)])[0]

    def writer(self, **options: Any) -> AuditWriter:
        busy_timeout = options.pop("busy_timeout", self.busy_timeout)

        def open_target(create: bool) -> SqliteStore:
            return SqliteStore(self.path, create=create, busy_timeout=busy_timeout)

        return AuditWriter(open_target, self.path, **options)

    def append_batch(self, rows: Batch) -> None:
        """The writer thread's append (its own store): all rows in one transaction."""
        try:
            with self._conn() as conn, transaction(conn):
                append_rows(conn, rows)
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, _ROW_ERRORS):
                cause = exc.__cause__
                raise BadRow(f"{type(cause).__name__}: {cause}") from cause
            raise

    def probe(self) -> None:
        with self._conn() as conn, transaction(conn):
            conn.execute("UPDATE chain_head SET seq = seq WHERE id = 1")

    # --- approvals ---

    def create_approval(self, row: Row) -> int:
        with self._conn() as conn:
            return approval_records.create(conn, row)

    def decide_approval(
        self,
        approval_id: str,
        decision: Decision,
        decider: str,
        decider_groups: Iterable[str] | None,
        reason: str | None = None,
        now: float | None = None,
    ) -> ApprovalRecord:
        moment = time.time() if now is None else now
        with self._conn() as conn:
            return approval_records.decide(
                conn, approval_id, decision, decider, decider_groups, reason, moment
            )

    def append_approval_state(
        self, approval_id: str, state: str, decider: str | None = None, reason: str | None = None
    ) -> bool:
        with self._conn() as conn:
            return approval_records.append_state(conn, approval_id, state, decider, reason)

    def expire_pending(self, reason: str) -> int:
        with self._conn() as conn:
            return approval_records.expire_pending(conn, reason)

    def expire_overdue(self, reason: str, now: float | None = None) -> int:
        moment = time.time() if now is None else now
        with self._conn() as conn:
            return approval_records.expire_overdue(conn, moment, reason)

    def redeem_approval(self, approval_id: str, requester: str, detail: str) -> bool:
        with self._conn() as conn:
            return approval_records.redeem(conn, approval_id, requester, detail)

    def approval(self, approval_id: str) -> ApprovalRecord | None:
        with self._conn() as conn:
            current = approval_records.latest(conn, approval_id)
            if current is not None:
                current["history"] = approval_records.history(conn, approval_id)
            return current

    def approvals(self, *, pending_only: bool = False) -> list[ApprovalRecord]:
        with self._conn() as conn:
            return approval_records.listed(conn, pending_only=pending_only)

    def approval_states(self, approval_ids: Iterable[str]) -> dict[str, ApprovalRecord]:
        with self._conn() as conn:
            return approval_records.latest_of(conn, approval_ids)

    # --- reading ---

    def tool_pin_rows(self, after: int = 0) -> list[ToolPinRow]:
        with self._conn() as conn:
            return queries.tool_pin_rows(conn, after)

    def event(self, seq: int) -> EventRow | None:
        with self._conn() as conn:
            return queries.event(conn, seq)

    def events(
        self,
        since: str | None = None,
        until: str | None = None,
        user: str | None = None,
        upstream: str | None = None,
    ) -> list[EventRow]:
        with self._conn() as conn:
            return queries.events(conn, since, until, user, upstream)

    def sessions(self, since: str | None = None) -> list[SessionSummary]:
        with self._conn() as conn:
            return queries.sessions(conn, since)

    def session_events(self, session_id: str) -> list[EventRow]:
        with self._conn() as conn:
            return queries.session_events(conn, session_id)

    # --- integrity and retention ---

    def verify(self) -> VerifyReport:
        with self._conn() as conn:
            return verify_chain(conn)

    def purge(
        self, older_than_seconds: float, now: float | None = None, actor: str | None = None
    ) -> PurgeReport:
        cutoff = iso((time.time() if now is None else now) - older_than_seconds)
        with self._conn() as conn, transaction(conn):
            return purge_before(conn, cutoff, actor)

    def last_purge(self) -> PurgeRecord | None:
        with self._conn() as conn:
            return last_purge(conn)

    # --- signed checkpoints ---

    @property
    def store_id(self) -> str:
        with self._conn() as conn:
            return checkpoints.store_id(conn)

    def chain_head(self) -> tuple[int, str]:
        with self._conn() as conn:
            return checkpoints.chain_head(conn)

    def row_hashes(self, seqs: Iterable[int]) -> dict[int, str]:
        with self._conn() as conn:
            return checkpoints.row_hashes(conn, CHAINED, set(seqs))


def open_store(url_or_path: str | os.PathLike[str], *, create: bool = True) -> Store:
    """The store a `holdgate_store` / `--db` value names: a SQLite path or `sqlite:///PATH`
    today; `postgresql://` is recognised and refused until that backend exists."""
    text = os.fspath(url_or_path)
    if "://" not in text:
        return SqliteStore(text, create=create)
    scheme = urlsplit(text).scheme.lower()
    if scheme == "sqlite":
        return SqliteStore(text.partition("://")[2] or ".", create=create)
    if scheme in ("postgresql", "postgres"):
        raise StoreNotSupported(
            f"{scheme}:// stores are not supported yet (replicas on PostgreSQL are planned); "
            "use a SQLite path such as holdgate.sqlite3"
        )
    raise StoreNotSupported(
        f"no audit store backend for {scheme}:// URLs; use a SQLite path such as holdgate.sqlite3"
    )
