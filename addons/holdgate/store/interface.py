"""`Store`: what the gateway and the CLI need of an audit store, whatever holds it.

`SqliteStore` is the embedded implementation; a PostgreSQL one (replicas sharing one
store) implements the same protocol. The rules (the chain, the approval state machine,
who may decide) are the protocol's contract, so every backend enforces them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from holdgate.store.approval_records import Channel, Decision
from holdgate.store.campaign_records import Campaign, Item, ItemSpec, Verdict
from holdgate.store.chain import VerifyReport
from holdgate.store.purge import PurgeRecord, PurgeReport
from holdgate.store.replica_records import ProcessGone, ReplicaInfo
from holdgate.store.rows import (
    ApprovalRecord,
    EventRow,
    RecordingRow,
    ReplicaRecord,
    Row,
    SessionSummary,
    ToolPinRow,
)
from holdgate.store.task_records import TaskRecord
from holdgate.store.writer import Writer


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

    def writer(self, *, process: bool = False, **options: Any) -> Writer:
        """The gateway's non-blocking writer, on a connection of its own: a thread
        (`AuditWriter`), or with `process` a process of its own (`ProcessAuditWriter`)."""

    # --- shared state (not chained): rate limits, grants ---

    def take_rate(self, bucket: str, period: float, now: float | None = None) -> tuple[int, float]:
        """Count one call in `bucket`'s fixed window of `period` seconds, anchored at its
        first call (by the database clock unless `now`): (hits so far, window start)."""

    def give_back_rate(self, bucket: str, window_start: float) -> None:
        """Uncount one call counted in the window that started at `window_start`."""

    def add_grant(
        self, grant_key: str, approval_id: str, seconds: float, now: float | None = None
    ) -> None:
        """Calls with this grant key pass for `seconds` (by the database clock unless `now`)."""

    def find_grant(self, grant_key: str, now: float | None = None) -> str | None:
        """The approval id of the grant for `grant_key` still running, if any."""

    def claim_session(self, session_key: str, user: str) -> str:
        """The owner of an MCP session: `user` if it was nobody's yet, else its owner."""

    def end_session(self, session_key: str) -> None:
        """Forget a session's owner (the session was ended)."""

    def claim_task(self, record: TaskRecord, now: float | None = None) -> TaskRecord:
        """Record who owns an upstream task unless it has an owner: the record that holds
        (first claim wins, across replicas). Expired records are deleted."""

    def find_task(self, task_key: str, now: float | None = None) -> TaskRecord | None:
        """The unexpired record of a task, if any."""

    def task_keys_of(self, owner: str, upstream: str, now: float | None = None) -> set[str]:
        """The keys of `owner`'s newest unexpired tasks on `upstream`."""

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
        *,
        channel: Channel = "api",
        identity: Mapping[str, Any] | None = None,
    ) -> ApprovalRecord:
        """A person's decision under the approval rules (`decider_groups=None`: the
        break-glass operator: no group is checked); a refusal is recorded and raised as
        `ApprovalRefused`. A held approval whose replica stopped heartbeating is closed as
        expired ("holder lost") and raised as `ApprovalExpired`. The row names the
        `channel` and the decider as authenticated (`identity`: how, e.g. `{"via": "jwt",
        "issuer": …}`), with the approver group that qualified them."""

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

    def approvals(
        self, *, pending_only: bool = False, requester: str | None = None, newest: int | None = None
    ) -> list[ApprovalRecord]:
        """The latest state of each approval, oldest first; `requester`: theirs only;
        `newest`: only the newest N of those."""

    def approval_states(self, approval_ids: Iterable[str]) -> dict[str, ApprovalRecord]:
        """The latest state of each of these approvals that exists."""

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
        """Record a started campaign and one open item per (identity, grant)."""

    def campaign_event(
        self,
        campaign_id: str,
        event: Literal["closed", "applied"],
        actor: str,
        detail: Mapping[str, Any],
    ) -> Campaign:
        """Close a started campaign, or record that a closed one was applied."""

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
        """A reviewer's keep/revoke under the campaign rules (`reviewer_groups=None`: the
        break-glass operator); a refusal is recorded (`note` after its reason) and raised
        as `CertificationRefused`. Reasons are kept to their first 2,000 characters.
        `how`: {channel, decided_as}, how the decision was made."""

    def campaign(self, campaign_id: str) -> Campaign | None:
        """A campaign with its events and each item's latest state."""

    def campaigns(self) -> list[Campaign]:
        """Every campaign, oldest first."""

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

    def config_versions(self) -> list[dict[str, Any]]:
        """Every config version row (without its text), in store order."""

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

    def session_recordings(self, session_ids: Sequence[str]) -> list[RecordingRow]:
        """The flow files recorded for a session (under any of `session_ids`: its id, and
        the file stem a repaired file was recorded under), every replica's, in store order."""

    # --- audit feeds (store/feed_records.py) ---

    def feed_rows(self, after: int, limit: int) -> list[EventRow]:
        """Up to `limit` export rows with seq > `after`, in seq order (gap-free once
        committed)."""

    def feed_head(self) -> int:
        """The seq of the last export row (what a feed that is up to date has taken)."""

    def feed_pending(self, after: int) -> int:
        """How many export rows come after `after` (a feed's lag)."""

    def feed_claim(self, feed: str, holder: str, lease: float) -> int | None:
        """Take or renew the feed's lease (database clock): its cursor seq, or None while
        another holder's lease runs."""

    def feed_advance(self, feed: str, holder: str, seq: int, lease: float) -> bool:
        """Move the feed's cursor to `seq` and renew the lease; False if the lease was lost."""

    def feed_error(self, feed: str, holder: str, error: str) -> None:
        """Keep the feed's latest delivery error."""

    def feed_release(self, feed: str, holder: str) -> None:
        """Give up the feed's lease (shutdown)."""

    def feed_cursors(self) -> list[dict[str, Any]]:
        """Every feed's cursor row."""

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
