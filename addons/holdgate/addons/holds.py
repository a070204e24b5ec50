"""ApprovalHolds: hold a call a rule says needs a human, until someone decides or time runs out.

Decisions come from the approvals API on `holdgate_admin` of any replica sharing the
store (the CLI goes through it), from break-glass writes to the store (polled off the event
loop), or from mitmweb (Resume approves, Abort denies) only when `holdgate_mitmweb_operator`
names the person at the console: that name must be an API key's in the config, whose
groups are then checked against the rule's approvers like anyone's. Without it a Resume or
Kill is refused and the flow is held again. Every decision is recorded with who made it and
through which channel; a held request that was edited while waiting is refused, never
forwarded.

Across replicas: each hold names its replica. At start a replica expires only its own
previous instance's holds; its watcher closes the holds of replicas that stopped
heartbeating ("holder lost"). On PostgreSQL a decision's notification wakes the watcher at
once; the poll every POLL_INTERVAL stays as the safety net for a notice lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, ctx, hooks, http
from mitmproxy.flow import Error

from holdgate import store
from holdgate.addons.approval_core import forward_remaining
from holdgate.addons.flowstate import (
    DecidedMessage,
    Refusal,
    annotate,
    fail_closed,
    header_lists,
    publish,
    refuse,
    state,
)
from holdgate.approvals.approval_rules import (
    console_operator_groups,
    decision_record,
    grant_key,
)
from holdgate.approvals.spendable import SpendRefusal, rule_in_force, spend_refusal
from holdgate.config.gateway_config import GatewayConfig
from holdgate.identity import Identity
from holdgate.protocol.canonical_json import args_digest
from holdgate.protocol.jsonrpc import (
    APPROVAL_REFUSED,
    BodyError,
    check_routing_headers,
    error_object,
    single_valued,
)

if TYPE_CHECKING:
    from holdgate.addons.approval_core import ApprovalCore, LegacyPlaceholders
    from holdgate.addons.config_loader import ConfigLoader
    from holdgate.addons.decision_log import DecisionLog
    from holdgate.addons.elicited_approvals import ElicitedApprovals
    from holdgate.store.interface import ApprovalListener

logger = logging.getLogger("holdgate")

POLL_INTERVAL = 0.25
OVERDUE_EVERY = 20  # sweeps between closing overdue elicitation approvals (5 s)
LOST_EVERY = 8  # sweeps between closing holds of replicas that stopped heartbeating (2 s)
UNRECORDED = "unrecorded"  # a hold that ended with a decision the store would not take
MITMWEB_OPERATOR = "holdgate_mitmweb_operator"


@dataclass
class Hold:
    """One held message: the flow waits on `decided` until a decision is set."""

    approval_id: str
    flow: http.HTTPFlow
    approvers: tuple[str, ...]
    expires_at: float
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "pending"
    decider: str | None = None
    reason: str | None = None
    client_gone: bool = False
    settling: bool = False  # a decision seen on the flow is being recorded
    channel: str | None = None  # how the decision was made (api, cli, mitmweb, ...)
    decided_as: str | None = None  # JSON: the decider as authenticated

    def decide(
        self,
        new_state: str,
        decider: str | None,
        reason: str | None,
        channel: str | None = None,
        decided_as: str | None = None,
    ) -> None:
        if not self.decided.is_set():
            self.state, self.decider, self.reason = new_state, decider, reason
            self.channel, self.decided_as = channel, decided_as
            self.decided.set()

    def release_record(self) -> dict[str, Any]:
        """How the held call was released, for its event row."""
        return {
            "state": self.state,
            "decider": self.decider,
            **decision_record({"channel": self.channel, "decided_as": self.decided_as}),
        }


@dataclass(frozen=True)
class ConsoleAction:
    """A Resume (approve) or Kill (deny) pressed on a held flow in mitmweb."""

    decision: store.Decision
    reason: str


class ApprovalHolds:
    """The request stage of approvals: each call a rule sends to a human is held (or, for
    `approval_via: elicitation`, handed to `elicited`) until decided; then the call leaves
    with only what was approved."""

    def __init__(
        self,
        loader: ConfigLoader,
        core: ApprovalCore,
        elicited: ElicitedApprovals,
        legacy: LegacyPlaceholders,
        decision_log: DecisionLog | None = None,
    ) -> None:
        self.loader = loader
        self.decision_log = decision_log
        self.core = core
        self.elicited = elicited
        self.legacy = legacy
        self._wake = asyncio.Event()  # a decision was noticed: sweep now
        self._listener: ApprovalListener | None = None
        self.holds: dict[str, Hold] = {}
        self._tasks: list[asyncio.Task[Any]] = []  # the start-up first, then the watcher
        self.operator = ""  # holdgate_mitmweb_operator: who sits at the mitmweb console

    async def decide(
        self,
        approval_id: str,
        decision: store.Decision,
        user: str,
        groups: Iterable[str],
        reason: str | None,
        channel: store.Channel,
        how: Mapping[str, Any],
    ) -> store.ApprovalRecord:
        """A person's decision (API, CLI, inbox): the store applies the approval rules and
        records it, or records the refusal and raises `ApprovalRefused`; a call this
        replica holds wakes at once (others notice it through the store)."""
        decided = await self.core.audit.run(
            lambda opened: opened.decide_approval(
                approval_id,
                decision,
                user,
                groups,
                reason,
                channel=channel,
                identity=how,
            )
        )
        hold = self.holds.get(approval_id)
        if hold is not None:  # its event row says how it was decided, as the store does
            hold.decide(decision, user, reason, channel, decided.get("decided_as"))
        return decided

    def load(self, loader: Any) -> None:
        loader.add_option(
            MITMWEB_OPERATOR,
            str,
            "",
            "The person at the mitmweb console: the name of an API key in the config's "
            "identity.api_keys, whose groups are checked against each rule's approvers. "
            "Empty (the default): Resume/Abort on a held call is refused and the call stays "
            "held; decide through the admin API, `holdgate approvals`, or the inbox.",
        )

    def configure(self, updated: set[str]) -> None:
        if MITMWEB_OPERATOR in updated:
            self.operator = str(getattr(ctx.options, MITMWEB_OPERATOR, "") or "").strip()

    def running(self) -> None:
        # Never await here: later addons' running hooks (TLS set-up) wait for ours.
        self._tasks.append(asyncio.create_task(self._start()))

    async def _start(self) -> None:
        replica = self.core.replica()
        try:
            if replica is None:
                closed = await self.core.audit.run(
                    lambda store: store.expire_pending("gateway restarted")
                )
            else:
                closed = await self.core.audit.run(
                    lambda store: store.expire_own_holds(replica, "gateway restarted")
                )
        finally:
            self.core.started.set()  # holds wait for this, so none is expired as a leftover
        if closed:
            logger.warning("holdgate: %d approval(s) pending at shutdown closed as expired", closed)
        loop = asyncio.get_running_loop()

        def wake(approval_id: str) -> None:  # on the listener's thread
            loop.call_soon_threadsafe(self._noticed, approval_id)

        self._listener = self.core.store().approval_listener(wake)
        self._tasks.append(asyncio.create_task(self._watch()))

    def done(self) -> None:
        for hold in list(self.holds.values()):
            hold.decide("expired", None, "the gateway shut down")
            self._record_state(hold, "expired", None, "the gateway shut down")
        for task in self._tasks:
            task.cancel()
        self.core.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # --- the hold -----------------------------------------------------------------------

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if not st.routed or not st.awaiting_approval or st.approvals_settled:
            return
        config, identity = st.route.config, st.identity
        if st.body is None:
            raise RuntimeError("approval without a decided body")
        if self.elicited.applies(flow):
            await self.elicited.round(flow, st.decided[0], identity, config)
            annotate(flow)
            if st.decided[0].approval is not None:  # else refused before any approval
                self._log(flow, st.decided[0])
            return
        refused: list[tuple[int, str]] = []
        approved: list[tuple[int, DecidedMessage, str, str]] = []
        for index, decided in enumerate(st.decided):
            decision = decided.decision
            if decision.action != "approve":
                continue
            message = decided.message
            digest_args = args_digest(self.core.key(config), message.arguments or {})
            upstream = st.route.upstream.name
            key = grant_key(
                identity.user,
                upstream,
                message.method or "",
                message.target or "",
                digest_args or "",
            )
            if await self.core.granted(flow, decided, identity, key):
                self._log(flow, decided)
                continue
            outcome = await self._hold(flow, decided, identity, digest_args, config)
            decided.approval = outcome.release_record()
            decided.channel = outcome.channel
            annotate(flow)
            self._log(flow, decided)
            if outcome.state == "approved":
                approved.append((index, decided, key, outcome.approval_id))
                continue
            who = f" by {outcome.decider}" if outcome.decider else ""
            why = f": {outcome.reason}" if outcome.reason else ""
            refused.append(
                (
                    index,
                    f"approval {outcome.state}{who}{why} "
                    f"(rule {decision.rule!r}, approval {outcome.approval_id})",
                )
            )
        # Spendable is judged once every hold of the batch has settled, just before the
        # call leaves: a later message's wait must not stretch an earlier approval's window,
        # nor outlive a reload that changed its rule.
        for index, decided, key, approval_id in approved:
            void = await self._spend_refusal(approval_id, st.route.upstream.name, identity)
            if void is None:
                await self.core.grant(key, approval_id, decided.decision.grant)
                continue
            decided.approval = {**(decided.approval or {}), "void": void.kind}
            self._log(flow, decided)
            refused.append((index, f"{void.reason} (rule {decided.decision.rule!r})"))
        refused.sort()
        self._release(flow, refused)

    async def _spend_refusal(
        self, approval_id: str, upstream: str, identity: Identity
    ) -> SpendRefusal | None:
        """Whether an approved approval may let its call through now (`spendable`), judged
        on the store's record and the rule of that name in the config now in force; a
        refusal is recorded against the approval."""
        record = await self.core.audit.run(lambda store: store.approval(approval_id))
        if record is None:
            return SpendRefusal("approval-expired", f"approval {approval_id} is not in the store")
        in_force = rule_in_force(self.loader.current, str(record.get("rule")), upstream)
        void = spend_refusal(record, in_force, time.time())
        if void is not None:
            await self.core.audit.run(
                lambda store: store.append_approval_state(
                    approval_id, "refused_attempt", identity.user, f"not forwarded: {void.reason}"
                )
            )
        return void

    def _log(self, flow: http.HTTPFlow, decided: DecidedMessage) -> None:
        if self.decision_log is not None:
            self.decision_log.decided(flow, [decided])

    async def _hold(
        self,
        flow: http.HTTPFlow,
        decided: DecidedMessage,
        identity: Identity,
        digest_args: str | None,
        config: GatewayConfig,
    ) -> Hold:
        st = state(flow)
        message, decision = decided.message, decided.decision
        hold_until = time.time() + decision.timeout
        row, masked_args = self.core.approval_row(
            flow, message, decision, identity, digest_args, config, hold_until
        )
        approval_id = row["approval_id"]
        changes_key = (identity.user, st.route.upstream.name, message.target or "")
        hold = Hold(approval_id, flow, decision.approvers, hold_until)
        await self.core.started.wait()
        await self.core.audit.run(lambda store: store.create_approval(row))
        self.holds[approval_id] = hold
        st.held = approval_id
        decided.approval_id, decided.expires = approval_id, hold_until
        annotate(flow)  # mitmweb shows the held flow: requester, approval, approvers, expiry
        publish(flow)
        self._log(flow, decided)
        self.core.notify(config, row)
        flow.intercept()
        try:
            await hold.decided.wait()  # set by the watcher, the API, mitmweb or shutdown
        finally:
            self.holds.pop(approval_id, None)
            st.held = None
        if hold.state == UNRECORDED:
            raise RuntimeError(f"approval {approval_id}: {hold.reason}")
        if hold.state == "approved":
            self.core.last_approved[changes_key] = masked_args
        return hold

    async def _expire_overdue(self) -> None:
        closed = await self.core.audit.run(
            lambda store: store.expire_overdue("nobody decided in time")
        )
        if closed:
            logger.info("holdgate: %d elicitation approval(s) expired", closed)

    async def _expire_lost(self) -> None:
        closed = await self.core.audit.run(lambda store: store.expire_lost_holds())
        if closed:
            logger.warning(
                "holdgate: %d approval(s) of replicas that stopped heartbeating closed as "
                "expired (holder lost)",
                closed,
            )

    @staticmethod
    def _observed(hold: Hold) -> ConsoleAction | tuple[str, str | None, str] | None:
        """A decision the gateway can see on the flow itself, if there is one yet: a
        button pressed in mitmweb (a person's decision, still to be checked), or a state
        the gateway observed."""
        flow = hold.flow
        if flow.error is not None and flow.error.msg == Error.KILLED_MESSAGE:
            # mitmweb's Kill does not wake wait_for_resume (mitmproxy #8045): look instead.
            return ConsoleAction("denied", "flow aborted in mitmweb")
        if flow.error is not None:  # not a person's decision: never attributed to one
            return "cancelled", None, f"the flow failed: {flow.error.msg}"
        if not flow.intercepted:
            return ConsoleAction("approved", "flow resumed in mitmweb")
        if hold.client_gone:
            return "cancelled", None, "the client disconnected"
        if time.time() >= hold.expires_at:
            return "expired", None, "nobody decided in time"
        return None

    async def _settle(
        self, hold: Hold, observed: ConsoleAction | tuple[str, str | None, str]
    ) -> None:
        try:
            if isinstance(observed, ConsoleAction):
                await self._decide_at_console(hold, observed)
            else:
                await self._decide_locally(hold, *observed)
        except Exception as exc:  # the decision cannot be recorded: the hold must still end
            what = observed.decision if isinstance(observed, ConsoleAction) else observed[0]
            hold.decide(UNRECORDED, None, f"{what}, not recorded: {exc}")

    async def _decide_at_console(self, hold: Hold, action: ConsoleAction) -> None:
        """A mitmweb button: the named console operator's decision under the approval
        rules, or refused with the flow held again and a log line saying how to decide."""
        config = self.loader.current
        groups = console_operator_groups(config, self.operator) if config else None
        if not self.operator or groups is None:
            why = (
                f"{MITMWEB_OPERATOR} is not set: mitmweb decisions are off"
                if not self.operator
                else f"{MITMWEB_OPERATOR}={self.operator!r} names no API key in the config's "
                "identity.api_keys, so the operator's groups are unknown"
            )
            self._hold_again(hold, why)
            return
        operator = self.operator
        try:
            record = await self.core.audit.run(
                lambda store: store.decide_approval(
                    hold.approval_id,
                    action.decision,
                    operator,
                    groups,
                    action.reason,
                    channel="mitmweb",
                    identity={"via": "console"},
                )
            )
        except (store.NotAnApprover, store.SelfApproval) as exc:  # recorded as refused
            self._hold_again(hold, str(exc))
            return
        except store.ApprovalRefused:  # decided elsewhere first, or too late: the store's word
            current = await self.core.audit.run(lambda store: store.approval(hold.approval_id))
            if current is None:
                hold.decide("expired", None, None)
                return
            record = current
        hold.decide(
            record["state"],
            record.get("decider"),
            record.get("reason"),
            record.get("channel"),
            record.get("decided_as"),
        )

    def _hold_again(self, hold: Hold, why: str) -> None:
        """Undo a refused Resume/Kill: the flow is held again, and the log says how to
        decide instead."""
        flow = hold.flow
        if flow.error is not None:
            flow.error = None
        flow.intercept()
        publish(flow)
        ctx.master.addons.trigger(hooks.UpdateHook([flow]))  # mitmweb shows it held again
        hold.settling = False
        logger.warning(
            "holdgate: mitmweb Resume/Abort on approval %s refused (%s); the call stays "
            "held. Decide with `holdgate approvals approve|deny %s`, the admin API or the "
            "inbox, or start the gateway with --set %s=NAME (NAME: your API key's name in "
            "identity.api_keys)",
            hold.approval_id,
            why,
            hold.approval_id,
            MITMWEB_OPERATOR,
        )

    async def _decide_locally(
        self, hold: Hold, new_state: str, decider: str | None, reason: str
    ) -> None:
        """Record a decision the gateway itself observed; a decision already stored wins."""
        ok = await self.core.audit.run(
            lambda store: store.append_approval_state(hold.approval_id, new_state, decider, reason)
        )
        if ok:
            hold.decide(new_state, decider, reason)
            return
        current = await self.core.audit.run(lambda store: store.approval(hold.approval_id))
        if current is None:
            hold.decide("expired", None, None)
        else:
            hold.decide(
                current["state"],
                current.get("decider"),
                current.get("reason"),
                current.get("channel"),
                current.get("decided_as"),
            )

    def _release(self, flow: http.HTTPFlow, refused: list[tuple[int, str]]) -> None:
        st = state(flow)
        body, upstream = st.body, st.route.upstream
        if body is None or st.decided_request is None:
            raise RuntimeError("approval without a decided body")
        if flow.error is not None:
            # Killed in mitmweb: that is a denial, answered like any other (-32004) so the
            # client's session survives; the flow is revived only to carry that answer.
            flow.error = None
            flow.live = True
        if flow.intercepted:
            flow.resume()
        # The request about to leave must be the one that was approved: same target, same
        # bytes, and routing headers that still agree with them (mitmweb can edit all three).
        decided_url, decided_body = st.decided_request
        try:
            pins = self.core.pins
            params = pins.header_params(upstream.name, body) if pins else None
            check_routing_headers(body, single_valued(header_lists(flow.request.headers)), params)
            unchanged = (flow.request.url, flow.request.content) == (decided_url, decided_body)
        except BodyError:
            unchanged = False
        if not unchanged:
            refuse(
                flow,
                200,
                APPROVAL_REFUSED,
                "approval void: the held request was changed before release; not forwarded",
                msg_id=None if body.is_batch else body.messages[0].id,
                kind="tampered",
            )
            return
        if not refused:
            st.approvals_settled = True
            return
        errors = [
            error_object(body.messages[i].id, APPROVAL_REFUSED, text)
            for i, text in refused
            if body.messages[i].kind == "request"
        ]
        gone = {i for i, _ in refused}
        remaining = [
            m
            for i, m in enumerate(body.messages)
            if i not in gone and st.decided[i].decision.action != "deny"
        ]
        refusal = Refusal(200, None, "no approval was granted", "approval-refused")
        if forward_remaining(flow, body, remaining, errors, self.legacy, refusal):
            st.approvals_settled = True

    def client_disconnected(self, client: connection.Client) -> None:
        for hold in self.holds.values():
            if hold.flow.client_conn.id == client.id:
                hold.client_gone = True

    # --- signals from outside -----------------------------------------------------------

    def _noticed(self, approval_id: str) -> None:
        """A decision notice (on the loop): sweep now if it is one of ours."""
        if approval_id in self.holds:
            self._wake.set()

    async def _watch(self) -> None:
        """One sweep over every hold each POLL_INTERVAL, or at once on a decision notice
        (not a timer per hold, so hundreds of holds cost the loop a few wake-ups a second)."""
        settling: set[asyncio.Task[None]] = set()
        sweeps = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
            self._wake.clear()
            sweeps += 1
            try:
                await self._sweep(settling)
                if sweeps % OVERDUE_EVERY == 0:
                    await self._expire_overdue()
                if sweeps % LOST_EVERY == 0:
                    await self._expire_lost()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one sweep
                logger.error("holdgate: approvals sweep failed: %s: %s", type(exc).__name__, exc)

    async def _sweep(self, settling: set[asyncio.Task[None]]) -> None:
        """Decisions seen on the flows, then decisions the CLI wrote to the store (read off
        the event loop)."""
        for hold in list(self.holds.values()):
            if hold.decided.is_set() or hold.settling:
                continue
            if observed := self._observed(hold):
                hold.settling = True
                task = asyncio.create_task(self._settle(hold, observed))
                settling.add(task)
                task.add_done_callback(settling.discard)
        pending = [i for i, h in self.holds.items() if not h.settling]
        if not pending:
            return
        try:
            states = await self.core.audit.run(lambda store: store.approval_states(pending))
        except store.StoreError as exc:
            logger.error("holdgate: cannot read approvals: %s", exc)
            return
        for approval_id, row in states.items():
            held = self.holds.get(approval_id)
            if held is not None and row["state"] != "pending":
                held.decide(
                    row["state"],
                    row.get("decider"),
                    row.get("reason"),
                    row.get("channel"),
                    row.get("decided_as"),
                )

    def _record_state(self, hold: Hold, new_state: str, decider: str | None, reason: str) -> None:
        try:
            self.core.store().append_approval_state(hold.approval_id, new_state, decider, reason)
        except store.StoreError as exc:
            logger.error("holdgate: cannot record approval %s: %s", hold.approval_id, exc)
