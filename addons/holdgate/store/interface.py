"""`Store`: what the gateway and the CLI need of an audit store, whatever holds it.

`SqliteStore` is the embedded implementation; a PostgreSQL one (replicas sharing one
store) implements the same protocol. The rules (the chain, the approval state machine,
who may decide) are the protocol's contract, so every backend enforces them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, Self

from holdgate.store.approval_records import Decision
from holdgate.store.chain import VerifyReport
from holdgate.store.purge import PurgeRecord, PurgeReport
from holdgate.store.replica_records import ProcessGone, ReplicaInfo
from holdgate.store.rows import (
    ApprovalRecord,
    EventRow,
    ReplicaRecord,
    Row,
    SessionSummary,
    ToolPinRow,
)
from holdgate.store.writer import AuditWriter


class ApprovalListener(Protocol):
    def close(self) -> None:
        """Stop listening (joins the thread)."""


class Store(Protocol):
    """An open audit store; safe to call from several threads. Every method raises
    `StoreUnavailable` when the store cannot be read or written."""

    @property
    def name(self) -> str:
        """How messages name the store (a path, or a URL without its password)."""

    @property
    def digest_key(self) -> bytes:
        """The argument-digest key used when the config has no `hash_key`."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def db_now(self) -> float:
        """The database's clock (seconds since the epoch), shared by every replica."""

    # --- writing ---

    def append(self, table: str, row: Row) -> int:
        """Append one row synchronously in its own transaction; returns its seq."""

    def writer(self, **options: Any) -> AuditWriter:
        """The gateway's non-blocking writer, on a connection of its own."""

    # --- approvals ---

    def create_approval(self, row: Row) -> int:
        """Record a new approval request (state `pending`); returns its seq."""

    def decide_approval(
        self,
        approval_id: str,
        decision: Decision,
        decider: str,
        decider_groups: Iterable[str] | None,
        reason: str | None = None,
        now: float | None = None,
    ) -> ApprovalRecord:
        """A person's decision under the approval rules (`decider_groups=None`: the
        trusted host operator); a refusal is recorded and raised as `ApprovalRefused`. A
        held approval whose replica stopped heartbeating is closed as expired ("holder
        lost") and raised as `ApprovalExpired`."""

    def append_approval_state(
        self, approval_id: str, state: str, decider: str | None = None, reason: str | None = None
    ) -> bool:
        """A state the gateway observed (expired, cancelled, mitmweb, grant_used); False
        when the state machine refuses it (e.g. someone decided first)."""

    def expire_pending(self, reason: str) -> int:
        """Close every pending held approval as `expired`; returns how many."""

    def expire_own_holds(self, replica: str, reason: str) -> int:
        """At a replica's start: close its previous instance's pending holds (and those
        naming no replica) as `expired`; returns how many."""

    def expire_lost_holds(self, now: float | None = None) -> int:
        """Close pending holds whose replica stopped heartbeating ("holder lost", by the
        database clock unless `now`); returns how many."""

    def expire_overdue(self, reason: str, now: float | None = None) -> int:
        """Close pending elicitation approvals past their expiry; returns how many."""

    def redeem_approval(self, approval_id: str, requester: str, detail: str) -> bool:
        """Spend an approved elicitation approval on its one call, at most once."""

    def approval(self, approval_id: str) -> ApprovalRecord | None:
        """The latest state of one approval with its `history`."""

    def approvals(self, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The latest state of each approval, oldest first."""

    def approval_states(self, approval_ids: Iterable[str]) -> dict[str, ApprovalRecord]:
        """The latest state of each of these approvals that exists."""

    # --- replicas (heartbeats and leases by the database clock unless `now`) ---

    def register_replica(
        self, info: ReplicaInfo, now: float | None = None, process_gone: ProcessGone | None = None
    ) -> None:
        """Claim the replica's name; `ReplicaNameTaken` while another instance is alive
        (`process_gone`: whether a row's host and pid are known to have exited)."""

    def heartbeat(
        self, replica: str, instance: str, config_hash: str | None, now: float | None = None
    ) -> bool:
        """Renew the lease; False when another instance took the name over."""

    def retire_replica(self, replica: str, instance: str) -> None:
        """Mark this instance gone (at shutdown)."""

    def replicas(self, now: float | None = None) -> list[ReplicaRecord]:
        """Every replica with `alive`/`gone`/`age`, by name."""

    def approval_listener(self, wake: Callable[[str], None]) -> ApprovalListener | None:
        """A thread calling `wake(approval_id)` when any process decides an approval, or
        None when the backend has no notifications (then decisions are only polled)."""

    # --- reading ---

    def tool_pin_rows(self, after: int = 0) -> list[ToolPinRow]:
        """`tool_pins` rows after seq `after`, in store order."""

    def event(self, seq: int) -> EventRow | None: ...

    def events(
        self,
        since: str | None = None,
        until: str | None = None,
        user: str | None = None,
        upstream: str | None = None,
    ) -> list[EventRow]:
        """Events with `EXPORT_FIELDS` in seq order; since <= ts < until (ISO times)."""

    def sessions(self, since: str | None = None) -> list[SessionSummary]:
        """Sessions active at or after `since`, oldest first."""

    def session_events(self, session_id: str) -> list[EventRow]: ...

    # --- integrity and retention ---

    def verify(self) -> VerifyReport:
        """Check the hash chain from the latest checkpoint to the head."""

    def purge(
        self, older_than_seconds: float, now: float | None = None, actor: str | None = None
    ) -> PurgeReport:
        """Delete the oldest rows past the cutoff, but the current pins and the config
        versions in use, and record a chained checkpoint naming the range and the rows kept."""

    def last_purge(self) -> PurgeRecord | None:
        """The latest purge's record (what `verify` starts from), if any."""

    # --- signed checkpoints ---

    @property
    def store_id(self) -> str:
        """The store's random id, made when it was created; checkpoints name it."""

    def chain_head(self) -> tuple[int, str]:
        """(seq, row_hash) of the chain's head."""

    def row_hashes(self, seqs: Iterable[int]) -> dict[int, str]:
        """The chain's hash (the row_hash) at each of `seqs` that has a row."""
