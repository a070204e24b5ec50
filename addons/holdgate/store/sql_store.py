"""What the two SQL backends share: every Store method, written once over `SqlConnection`.

`SqliteStore` and `PostgresStore` only say how to reach their database (`_conn`, which
also turns driver errors into `StoreUnavailable`), where the digest key lives, and how
the writer thread gets a store of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Literal, Self

from holdgate.store import (
    approval_records,
    campaign_records,
    checkpoints,
    feed_records,
    queries,
    replica_records,
    shared_state,
    task_records,
)
from holdgate.store.approval_records import Channel, Decision
from holdgate.store.campaign_records import Campaign, Item, ItemSpec, Verdict
from holdgate.store.chain import VerifyReport, append_rows, normalize_row, verify_chain
from holdgate.store.errors import BadRow, StoreUnavailable
from holdgate.store.interface import ApprovalListener
from holdgate.store.purge import PurgeRecord, PurgeReport, last_purge, purge_before
from holdgate.store.replica_records import ProcessGone, ReplicaInfo
from holdgate.store.rows import (
    ApprovalRecord,
    EventRow,
    RecordingRow,
    ReplicaRecord,
    Row,
    SessionSummary,
    ToolPinRow,
    iso,
)
from holdgate.store.schema import CHAINED
from holdgate.store.sqlconn import SqlConnection, transaction
from holdgate.store.task_records import TaskRecord
from holdgate.store.writer import Batch


class SqlStore:
    """The Store methods over one connection used by one caller at a time (`_conn`)."""

    # driver errors about the rows, not the store: the writer drops such a batch
    row_errors: tuple[type[BaseException], ...] = ()
    # the database's clock in SQL (seconds since the epoch); None: this process's clock
    clock_sql: str | None = None

    def _conn(self) -> AbstractContextManager[SqlConnection]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def db_now(self) -> float:
        """The database's clock (seconds since the epoch): what leases are judged by."""
        return time.time()

    def _approval_changed(self, conn: SqlConnection, approval_id: str) -> None:
        """Inside the transaction that decided `approval_id`: tell other processes (a
        backend with notifications overrides this; the rest are polled)."""

    def append_batch(self, rows: Batch) -> None:
        """The writer thread's append (its own store): all rows in one transaction."""
        try:
            with self._conn() as conn, transaction(conn):
                append_rows(conn, shared_state.without_known_first_seen(conn, rows))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, self.row_errors):
                cause = exc.__cause__
                raise BadRow(f"{type(cause).__name__}: {cause}") from cause
            raise

    # --- writing ---

    def append(self, table: str, row: Row) -> int:
        normalized = normalize_row(table, row)
        with self._conn() as conn, transaction(conn):
            return append_rows(conn, [(table, normalized)])[0]

    def probe(self) -> None:
        with self._conn() as conn, transaction(conn):
            conn.execute("UPDATE chain_head SET seq = seq WHERE id = 1")

    # --- shared state: rate limits, grants ---

    def take_rate(self, bucket: str, period: float, now: float | None = None) -> tuple[int, float]:
        with self._conn() as conn:
            return shared_state.take_rate(conn, bucket, period, self.clock_sql, now)

    def give_back_rate(self, bucket: str, window_start: float) -> None:
        with self._conn() as conn:
            shared_state.give_back_rate(conn, bucket, window_start)

    def add_grant(
        self, grant_key: str, approval_id: str, seconds: float, now: float | None = None
    ) -> None:
        with self._conn() as conn:
            shared_state.add_grant(conn, grant_key, approval_id, seconds, self.clock_sql, now)

    def find_grant(self, grant_key: str, now: float | None = None) -> str | None:
        with self._conn() as conn:
            return shared_state.find_grant(conn, grant_key, self.clock_sql, now)

    def claim_session(self, session_key: str, user: str) -> str:
        with self._conn() as conn:
            return shared_state.claim_session(conn, session_key, user)

    def end_session(self, session_key: str) -> None:
        with self._conn() as conn:
            shared_state.end_session(conn, session_key)

    def claim_task(self, record: TaskRecord, now: float | None = None) -> TaskRecord:
        with self._conn() as conn:
            return task_records.claim_task(conn, record, self.clock_sql, now)

    def find_task(self, task_key: str, now: float | None = None) -> TaskRecord | None:
        with self._conn() as conn:
            return task_records.find_task(conn, task_key, self.clock_sql, now)

    def task_keys_of(self, owner: str, upstream: str, now: float | None = None) -> set[str]:
        with self._conn() as conn:
            return task_records.task_keys_of(conn, owner, upstream, self.clock_sql, now)

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
        *,
        channel: Channel = "api",
        identity: Mapping[str, Any] | None = None,
    ) -> ApprovalRecord:
        moment = time.time() if now is None else now
        db_now = self.db_now()
        with self._conn() as conn:
            return approval_records.decide(
                conn,
                approval_id,
                decision,
                decider,
                decider_groups,
                reason,
                moment,
                db_now,
                self._approval_changed,
                channel,
                identity,
            )

    def append_approval_state(
        self, approval_id: str, state: str, decider: str | None = None, reason: str | None = None
    ) -> bool:
        with self._conn() as conn:
            return approval_records.append_state(
                conn, approval_id, state, decider, reason, self._approval_changed
            )

    def expire_pending(self, reason: str) -> int:
        with self._conn() as conn:
            return approval_records.expire_pending(conn, reason)

    def expire_own_holds(self, replica: str, reason: str) -> int:
        with self._conn() as conn:
            return approval_records.expire_own(conn, replica, reason)

    def expire_lost_holds(self, now: float | None = None) -> int:
        db_now = self.db_now() if now is None else now
        with self._conn() as conn:
            return approval_records.expire_lost(conn, db_now)

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

    def approvals(
        self, *, pending_only: bool = False, requester: str | None = None, newest: int | None = None
    ) -> list[ApprovalRecord]:
        with self._conn() as conn:
            return approval_records.listed(
                conn, pending_only=pending_only, requester=requester, newest=newest
            )

    def approval_states(self, approval_ids: Iterable[str]) -> dict[str, ApprovalRecord]:
        with self._conn() as conn:
            return approval_records.latest_of(conn, approval_ids)

    # --- certification campaigns ---

    def start_campaign(
        self,
        campaign_id: str,
        period: tuple[str, str],
        config_hash: str,
        actor: str,
        detail: Mapping[str, Any],
        items: Sequence[ItemSpec],
    ) -> Campaign:
        with self._conn() as conn:
            return campaign_records.start(
                conn, campaign_id, period, config_hash, actor, detail, items
            )

    def campaign_event(
        self,
        campaign_id: str,
        event: Literal["closed", "applied"],
        actor: str,
        detail: Mapping[str, Any],
    ) -> Campaign:
        with self._conn() as conn:
            return campaign_records.append_event(conn, campaign_id, event, actor, detail)

    def certify(
        self,
        item_id: str,
        verdict: Verdict,
        reviewer: str,
        reason: str,
        reviewer_groups: Iterable[str] | None,
        allowed_groups: Iterable[str] = (),
        note: str = "",
        how: Mapping[str, Any] | None = None,
    ) -> Item:
        with self._conn() as conn:
            return campaign_records.certify(
                conn,
                item_id,
                verdict,
                reviewer,
                reason,
                reviewer_groups,
                allowed_groups,
                note,
                how,
            )

    def campaign(self, campaign_id: str) -> Campaign | None:
        with self._conn() as conn:
            return campaign_records.load(conn, campaign_id)

    def campaigns(self) -> list[Campaign]:
        with self._conn() as conn:
            return campaign_records.listed(conn)

    # --- replicas ---

    def register_replica(
        self, info: ReplicaInfo, now: float | None = None, process_gone: ProcessGone | None = None
    ) -> None:
        db_now = self.db_now() if now is None else now
        with self._conn() as conn:
            replica_records.register(conn, info, db_now, process_gone=process_gone)

    def heartbeat(
        self, replica: str, instance: str, config_hash: str | None, now: float | None = None
    ) -> bool:
        db_now = self.db_now() if now is None else now
        with self._conn() as conn:
            return replica_records.heartbeat(conn, replica, instance, config_hash, db_now)

    def retire_replica(self, replica: str, instance: str) -> None:
        with self._conn() as conn:
            replica_records.retire(conn, replica, instance)

    def replicas(self, now: float | None = None) -> list[ReplicaRecord]:
        db_now = self.db_now() if now is None else now
        with self._conn() as conn:
            return replica_records.listed(conn, db_now)

    def approval_listener(self, wake: Callable[[str], None]) -> ApprovalListener | None:
        return None

    # --- reading ---

    def config_versions(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            return queries.config_versions(conn)

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

    def session_recordings(self, session_ids: Sequence[str]) -> list[RecordingRow]:
        with self._conn() as conn:
            return queries.session_recordings(conn, session_ids)

    # --- audit feeds ---

    def feed_rows(self, after: int, limit: int) -> list[EventRow]:
        with self._conn() as conn:
            return feed_records.rows_after(conn, after, limit)

    def feed_head(self) -> int:
        with self._conn() as conn:
            return feed_records.head(conn)

    def feed_pending(self, after: int) -> int:
        with self._conn() as conn:
            return feed_records.pending(conn, after)

    def feed_claim(self, feed: str, holder: str, lease: float) -> int | None:
        with self._conn() as conn:
            return feed_records.claim(conn, feed, holder, self.db_now(), lease)

    def feed_advance(self, feed: str, holder: str, seq: int, lease: float) -> bool:
        with self._conn() as conn:
            return feed_records.advance(conn, feed, holder, seq, self.db_now(), lease)

    def feed_error(self, feed: str, holder: str, error: str) -> None:
        with self._conn() as conn:
            feed_records.note_error(conn, feed, holder, error)

    def feed_release(self, feed: str, holder: str) -> None:
        with self._conn() as conn:
            feed_records.release(conn, feed, holder)

    def feed_cursors(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            return feed_records.cursors(conn)

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
