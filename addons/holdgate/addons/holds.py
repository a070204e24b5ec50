"""ApprovalHolds: hold a call a rule says needs a human, until someone decides or time runs out.

Decisions come from the CLI (through the store, polled off the event loop), the HTTP
approvals API on `holdgate_admin` of any replica sharing the store, or mitmweb (resume
approves, kill denies). Every decision is recorded with who made it; a held request that
was edited while waiting is refused, never forwarded.

Across replicas: each hold names its replica. At start a replica expires only its own
previous instance's holds; its watcher closes the holds of replicas that stopped
heartbeating ("holder lost"). On PostgreSQL a decision's notification wakes the watcher at
once; the poll every POLL_INTERVAL stays as the safety net for a notice lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from mitmproxy import connection, ctx, exceptions, http

from holdgate import store
from holdgate.addons.flowstate import (
    DecidedMessage,
    Refusal,
    fail_closed,
    header_lists,
    publish,
    refuse,
    state,
)
from holdgate.approvals import elicitation
from holdgate.approvals.adminhttp import (
    AdminCallers,
    AdminRequest,
    AdminResponse,
    Handler,
    parse_listen,
    serve,
)
from holdgate.approvals.approval_rules import (
    approver_groups,
    argument_changes,
    grant_key,
    may_see,
    request_digest,
)
from holdgate.approvals.campaign_http import handle_campaigns
from holdgate.approvals.refusal_budget import RefusalBudget
from holdgate.approvals.spendable import SpendRefusal, rule_in_force, spend_refusal
from holdgate.config.gateway_config import GatewayConfig
from holdgate.identity.identities import Identity
from holdgate.policy.rules import Decision
from holdgate.protocol.canonical_json import args_digest
from holdgate.protocol.jsonrpc import (
    APPROVAL_REFUSED,
    BodyError,
    Message,
    check_routing_headers,
    dumps,
    error_object,
    shown,
    single_valued,
)
from holdgate.protocol.mrtr import request_state
from holdgate.store import Store
from holdgate.store import iso as now_iso
from holdgate.store.approval_records import Decision as Decided

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.config_loader import ConfigLoader
    from holdgate.addons.enforcement import PolicyEnforcer
    from holdgate.addons.replicas import Replicas
    from holdgate.store.interface import ApprovalListener

logger = logging.getLogger("holdgate")

POLL_INTERVAL = 0.25
OVERDUE_EVERY = 20  # sweeps between closing overdue elicitation approvals (5 s)
LOST_EVERY = 8  # sweeps between closing holds of replicas that stopped heartbeating (2 s)
UNRECORDED = "unrecorded"  # a hold that ended with a decision the store would not take
MITMWEB = "mitmweb operator"
UNAUTHENTICATED_ADMIN = (
    "authenticate like an MCP client (JWT or API key); trusted headers count here only "
    "with admin.trusted_header in the config"
)
WEBHOOK_ATTEMPTS = 4
# How the approvals API answers the store's refusal of a decision.
REFUSAL_STATUS: dict[type[store.ApprovalRefused], int] = {
    store.UnknownApproval: 404,
    store.SelfApproval: 403,
    store.NotAnApprover: 403,
    store.ApprovalNotPending: 409,
    store.ApprovalExpired: 409,
}


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

    def decide(self, new_state: str, decider: str | None, reason: str | None) -> None:
        if not self.decided.is_set():
            self.state, self.decider, self.reason = new_state, decider, reason
            self.decided.set()


class ApprovalHolds:
    def __init__(
        self,
        loader: ConfigLoader,
        policy: PolicyEnforcer,
        audit: AuditStore,
        replicas: Replicas | None = None,
    ) -> None:
        self.loader = loader
        self.policy = policy
        self.audit = audit
        self.replicas = replicas
        self._wake = asyncio.Event()  # a decision was noticed: sweep now
        self._listener: ApprovalListener | None = None
        self.holds: dict[str, Hold] = {}
        self.last_approved: dict[tuple[str, str, str], Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None
        self.callers = AdminCallers()
        self.refusals = RefusalBudget()  # refused certifications recorded one by one
        self._started = asyncio.Event()
        self._warned_no_link = False
        self.routes: dict[str, Handler] = {}  # other paths on the admin listener (/metrics)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "holdgate_admin",
            str,
            "127.0.0.1:8181",
            "Listen address (HOST:PORT) of Holdgate's approvals API; empty disables it.",
        )

    def configure(self, updated: set[str]) -> None:
        if "holdgate_admin" in updated:
            try:
                parse_listen(ctx.options.holdgate_admin)
            except ValueError as exc:
                raise exceptions.OptionsError(f"holdgate_admin: {exc}") from None

    def running(self) -> None:
        # Never await here: later addons' running hooks (TLS set-up) wait for ours.
        self._tasks.append(asyncio.create_task(self._start()))

    def _store(self) -> Store:
        """The AuditStore's: one owner of the connection for the whole gateway."""
        return self.audit.store()

    def _replica(self) -> str | None:
        return self.replicas.replica if self.replicas is not None else None

    async def _start(self) -> None:
        replica = self._replica()
        try:
            if replica is None:
                closed = await asyncio.to_thread(self._store().expire_pending, "gateway restarted")
            else:
                closed = await asyncio.to_thread(
                    self._store().expire_own_holds, replica, "gateway restarted"
                )
        finally:
            self._started.set()  # holds wait for this, so none is expired as a leftover
        if closed:
            logger.warning("holdgate: %d approval(s) pending at shutdown closed as expired", closed)
        loop = asyncio.get_running_loop()

        def wake(approval_id: str) -> None:  # on the listener's thread
            loop.call_soon_threadsafe(self._noticed, approval_id)

        self._listener = self._store().approval_listener(wake)
        self._tasks.append(asyncio.create_task(self._watch()))
        listen = parse_listen(ctx.options.holdgate_admin)
        if listen is not None:
            self._server = await serve(listen[0], listen[1], self.handle_admin)
            logger.info("holdgate: approvals API on http://%s:%d/approvals", *listen)

    def done(self) -> None:
        for hold in list(self.holds.values()):
            hold.decide("expired", None, "the gateway shut down")
            self._record_state(hold, "expired", None, "the gateway shut down")
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # --- the hold -----------------------------------------------------------------------

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if st.upstream is None or not st.awaiting_approval or st.approvals_settled:
            return
        config, identity, body = st.config, st.identity, st.body
        if config is None or identity is None or body is None:
            raise RuntimeError("approval without a decided body")
        if self._by_elicitation(flow):
            await self._elicitation_round(flow, st.decided[0], identity, config)
            return
        refused: list[tuple[int, str]] = []
        for index, decided in enumerate(st.decided):
            decision = decided.decision
            if decision.action != "approve":
                continue
            message = decided.message
            digest_args = args_digest(self.audit.key(config), message.arguments or {})
            upstream = st.upstream.name
            key = grant_key(
                identity.user,
                upstream,
                message.method or "",
                message.target or "",
                digest_args or "",
            )
            if await self._granted(flow, decided, identity, key):
                continue
            outcome = await self._hold(flow, message, decision, identity, digest_args, config)
            decided.approval_id = outcome.approval_id
            decided.approval = {"state": outcome.state, "decider": outcome.decider}
            if outcome.state == "approved":
                void = await self._spend_refusal(outcome.approval_id, upstream, identity)
                if void is None:
                    await self._grant(key, outcome.approval_id, decision.grant)
                    continue
                decided.approval["void"] = void.kind
                refused.append((index, f"{void.reason} (rule {decision.rule!r})"))
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
        self._release(flow, refused)

    async def _spend_refusal(
        self, approval_id: str, upstream: str, identity: Identity
    ) -> SpendRefusal | None:
        """Whether an approved approval may let its call through now (`spendable`), judged
        on the store's record and the rule of that name in the config now in force; a
        refusal is recorded against the approval."""
        record = await asyncio.to_thread(self._store().approval, approval_id)
        if record is None:
            return SpendRefusal("approval-expired", f"approval {approval_id} is not in the store")
        in_force = rule_in_force(self.loader.current, str(record.get("rule")), upstream)
        void = spend_refusal(record, in_force, time.time())
        if void is not None:
            await asyncio.to_thread(
                self._store().append_approval_state,
                approval_id,
                "refused_attempt",
                identity.user,
                f"not forwarded: {void.reason}",
            )
        return void

    async def _granted(
        self,
        flow: http.HTTPFlow,
        decided: DecidedMessage,
        identity: Identity,
        key: str,
    ) -> bool:
        """An identical call approved within the grant window (on any replica) passes,
        each use recorded, while the rule that asked for the approval is unchanged."""
        approval_id = await asyncio.to_thread(self._store().find_grant, key)
        if approval_id is None:
            return False
        record = await asyncio.to_thread(self._store().approval, approval_id)
        asking = decided.decision
        if record is None or (record.get("rule"), record.get("rule_lineage")) != (
            asking.rule,
            asking.lineage or None,
        ):
            return False  # the rule changed since: asked for again
        decided.approval_id = approval_id
        decided.approval = {"granted_by": "grant window"}
        await asyncio.to_thread(
            self._store().append_approval_state,
            approval_id,
            "grant_used",
            identity.user,
            f"identical call within the grant ({flow.id})",
        )
        return True

    async def _grant(self, key: str, approval_id: str, seconds: float) -> None:
        """Open the grant window an approval gives (`grant:`), in the store every replica
        reads; when it cannot be written, identical calls are asked for again."""
        if seconds <= 0:
            return
        try:
            await asyncio.to_thread(self._store().add_grant, key, approval_id, seconds)
        except store.StoreError as exc:
            logger.error("holdgate: grant of approval %s not kept: %s", approval_id, exc)

    async def _hold(
        self,
        flow: http.HTTPFlow,
        message: Message,
        decision: Decision,
        identity: Identity,
        digest_args: str | None,
        config: GatewayConfig,
    ) -> Hold:
        st = state(flow)
        assert st.upstream is not None
        hold_until = time.time() + decision.timeout
        row, masked_args = self._approval_row(
            flow, message, decision, identity, digest_args, config, hold_until
        )
        approval_id = row["approval_id"]
        changes_key = (identity.user, st.upstream.name, message.target or "")
        hold = Hold(approval_id, flow, decision.approvers, hold_until)
        await self._started.wait()
        await asyncio.to_thread(self._store().create_approval, row)
        self.holds[approval_id] = hold
        st.held = approval_id
        publish(flow)  # mitmweb shows the held flow with what was decided
        if config.approvals.webhook:
            self._tasks.append(asyncio.create_task(self._notify(config, row)))
        flow.intercept()
        try:
            await hold.decided.wait()  # set by the watcher, the API, mitmweb or shutdown
        finally:
            self.holds.pop(approval_id, None)
            st.held = None
        if hold.state == UNRECORDED:
            raise RuntimeError(f"approval {approval_id}: {hold.reason}")
        if hold.state == "approved":
            self.last_approved[changes_key] = masked_args
        return hold

    def _approval_row(
        self,
        flow: http.HTTPFlow,
        message: Message,
        decision: Decision,
        identity: Identity,
        digest_args: str | None,
        config: GatewayConfig,
        expires_at: float,
        via: str = "hold",
    ) -> tuple[dict[str, Any], Any]:
        """The `pending` row of a new approval, and the arguments as it shows them."""
        st = state(flow)
        assert st.upstream is not None
        upstream = st.upstream.name
        # Masked as the store masks the call's own row: the approval shows no more.
        masked_args = self.audit.masked_for_record(
            message.arguments or {}, config, upstream, message.tool
        ).value
        previous = self.last_approved.get((identity.user, upstream, message.target or ""))
        row = {
            "approval_id": uuid.uuid4().hex[:12],
            "state": "pending",
            "requester": identity.user,
            "upstream": upstream,
            "tool": message.target,
            "method": message.method,
            "args_masked": json.dumps(masked_args, ensure_ascii=False),
            "args_digest": digest_args,
            "request_digest": self._request_digest(upstream, identity, message),
            "rule": decision.rule,
            "approvers": json.dumps(list(decision.approvers)),
            "created": now_iso(),
            "expires": now_iso(expires_at),
            "changes": json.dumps(argument_changes(previous, masked_args))
            if previous is not None
            else None,
            "flow_id": flow.id,
            "via": via,
            "replica": self._replica() if via == "hold" else None,
            "rule_lineage": decision.lineage or None,
        }
        return row, masked_args

    def _request_digest(self, upstream: str, identity: Identity, message: Message) -> str:
        pins = self.policy.pins
        return request_digest(
            upstream,
            identity.user,
            message.method or "",
            message.target,
            message.arguments or {},
            pins.definition_digest(upstream, message.tool) if pins and message.tool else None,
        )

    # --- approvals through MCP elicitation (nothing held open) ---------------------------

    def _by_elicitation(self, flow: http.HTTPFlow) -> bool:
        """A single call that carries the gateway's own requestState (a retry), or whose
        rule asks for elicitation and whose client can follow a link (else it is held)."""
        st = state(flow)
        body = st.body
        if body is None or body.is_batch or len(st.decided) != 1:
            return False
        decided = st.decided[0]
        if decided.decision.action != "approve":
            return False
        if elicitation.is_gateway_state(request_state(decided.message.raw)):
            return True
        if (
            decided.decision.approval_via != "elicitation"
            or not elicitation.accepts_url_elicitation(
                decided.message.raw, flow.request.headers.get("mcp-protocol-version")
            )
        ):
            return False
        if self._status_base() is None:
            if not self._warned_no_link:
                self._warned_no_link = True
                logger.warning(
                    "holdgate: rule %r asks for approval_via: elicitation, but the approvals "
                    "API is disabled (holdgate_admin is empty) and approvals.public_url is "
                    "not set, so there is no page to link to: such calls are held instead",
                    decided.decision.rule,
                )
            return False
        return True

    def _status_base(self) -> str | None:
        """Where clients are sent to follow an approval: the approvals API's address."""
        config = self.loader.current
        if config is not None and config.approvals.public_url:
            return config.approvals.public_url.rstrip("/")
        listen = ctx.options.holdgate_admin
        return f"http://{listen}" if listen.strip() else None

    async def _elicitation_round(
        self,
        flow: http.HTTPFlow,
        decided: DecidedMessage,
        identity: Identity,
        config: GatewayConfig,
    ) -> None:
        """First round: a new approval, answered `input_required`. A retry: its token
        checked, then asked again (pending), forwarded once (approved) or refused."""
        st = state(flow)
        assert st.upstream is not None
        message, decision = decided.message, decided.decision
        upstream = st.upstream.name
        key = self.audit.key(config)
        token = request_state(message.raw)
        if token is None or not elicitation.is_gateway_state(token):
            await self._ask(flow, decided, identity, config)
            return
        approval_id = elicitation.token_approval(token)
        record = (
            await asyncio.to_thread(self._store().approval, approval_id)
            if approval_id is not None
            else None
        )
        digest = self._request_digest(upstream, identity, message)
        if (
            approval_id is None
            or record is None
            or record.get("via") != "elicitation"
            or record.get("requester") != identity.user
            or record.get("upstream") != upstream
            or record.get("request_digest") != digest
            or not elicitation.token_holds(key, token, approval_id, identity.user, upstream, digest)
        ):
            refuse(
                flow,
                200,
                APPROVAL_REFUSED,
                "approval void: the requestState was not issued by this gateway for this "
                "identity and this exact call; not forwarded (call again without it)",
                msg_id=message.id,
                kind="tampered",
            )
            return
        decided.approval_id = approval_id
        current = record["state"]
        if current != "approved" and (record.get("rule"), record.get("rule_lineage")) != (
            decision.rule,
            decision.lineage or None,
        ):  # the policy changed before anyone said yes: a new approval under the new rule
            await self._ask(flow, decided, identity, config)
            return
        if current == "pending":
            current = await self._pending_answer(flow, decided, identity, record)
            if current == "pending":
                return
            record = await asyncio.to_thread(self._store().approval, approval_id) or record
        if current == "approved":
            void = spend_refusal(record, decision, time.time())
            if void is not None:
                await asyncio.to_thread(
                    self._store().append_approval_state,
                    approval_id,
                    "refused_attempt",
                    identity.user,
                    f"not forwarded: {void.reason}",
                )
                decided.approval = {"state": "approved", "void": void.kind, "via": "elicitation"}
                refuse(flow, 200, APPROVAL_REFUSED, void.reason, msg_id=message.id, kind=void.kind)
                return
            redeemed = await asyncio.to_thread(
                self._store().redeem_approval,
                approval_id,
                identity.user,
                f"call forwarded ({flow.id})",
            )
            if not redeemed:
                self._refuse_elicited(
                    flow,
                    decided,
                    f"approval {approval_id} was already used for one call; call again "
                    "without its requestState to ask for a new approval",
                )
                return
            digest_args = args_digest(key, message.arguments or {})
            granted = grant_key(
                identity.user,
                upstream,
                message.method or "",
                message.target or "",
                digest_args or "",
            )
            await self._grant(granted, approval_id, decision.grant)
            with contextlib.suppress(TypeError, json.JSONDecodeError):
                self.last_approved[(identity.user, upstream, message.target or "")] = json.loads(
                    record.get("args_masked") or "null"
                )
            decided.approval = {
                "state": "approved",
                "decider": record.get("decider"),
                "via": "elicitation",
            }
            flow.request.content = dumps(elicitation.without_gateway_round(message.raw))
            st.approvals_settled = True
            return
        who = f" by {record['decider']}" if record.get("decider") else ""
        why = f": {record['reason']}" if record.get("reason") else ""
        self._refuse_elicited(
            flow,
            decided,
            f"approval {current}{who}{why} (rule {decision.rule!r}, approval {approval_id})",
        )

    async def _pending_answer(
        self, flow: http.HTTPFlow, decided: DecidedMessage, identity: Identity, record: Any
    ) -> str:
        """A retry while nobody has decided: the client's user may have declined (the
        approval is cancelled), time may be up (expired); else it is asked again."""
        approval_id = record["approval_id"]
        answer = elicitation.client_answer(decided.message.raw)
        closing: tuple[str, str | None, str] | None = None
        if answer in ("decline", "cancel"):
            closing = ("cancelled", identity.user, f"the requester chose {answer!r}")
        elif record.get("expires") and time.time() >= store.parse_iso(record["expires"]):
            closing = ("expired", None, "nobody decided in time")
        if closing is None:
            self._answer_input_required(flow, decided, record)
            return "pending"
        await asyncio.to_thread(self._store().append_approval_state, approval_id, *closing)
        latest = await asyncio.to_thread(self._store().approval, approval_id)
        return str(latest["state"]) if latest is not None else "expired"

    async def _ask(
        self,
        flow: http.HTTPFlow,
        decided: DecidedMessage,
        identity: Identity,
        config: GatewayConfig,
    ) -> None:
        """A new approval, created pending, and the client sent to its status page."""
        st = state(flow)
        assert st.upstream is not None
        message, decision = decided.message, decided.decision
        digest_args = args_digest(self.audit.key(config), message.arguments or {})
        key = grant_key(
            identity.user,
            st.upstream.name,
            message.method or "",
            message.target or "",
            digest_args or "",
        )
        if await self._granted(flow, decided, identity, key):
            flow.request.content = dumps(elicitation.without_gateway_round(message.raw))
            st.approvals_settled = True
            return
        row, _ = self._approval_row(
            flow,
            message,
            decision,
            identity,
            digest_args,
            config,
            time.time() + decision.timeout,
            via="elicitation",
        )
        await self._started.wait()
        await asyncio.to_thread(self._store().create_approval, row)
        decided.approval_id = row["approval_id"]
        if config.approvals.webhook:
            self._tasks.append(asyncio.create_task(self._notify(config, row)))
        self._answer_input_required(flow, decided, row)

    def _answer_input_required(
        self, flow: http.HTTPFlow, decided: DecidedMessage, record: Any
    ) -> None:
        st = state(flow)
        config = st.config
        assert config is not None and st.identity is not None and st.upstream is not None
        approval_id = record["approval_id"]
        key = self.audit.key(config)
        base = self._status_base()
        if base is None:
            raise RuntimeError("the approvals API is disabled (holdgate_admin is empty)")
        url = (
            f"{base}/approvals/{approval_id}/status?t={elicitation.status_token(key, approval_id)}"
        )
        token = elicitation.state_token(
            key, approval_id, st.identity.user, st.upstream.name, record["request_digest"]
        )
        answer = elicitation.input_required(
            decided.message.id,
            approval_id,
            url,
            elicitation.prompt_text(record, "pending"),
            token,
        )
        decided.approval = {"state": "pending", "via": "elicitation"}
        flow.response = http.Response.make(200, dumps(answer), {"Content-Type": "application/json"})
        st.refused = Refusal(
            200,
            None,
            f"approval {approval_id} pending: answered input_required",
            "approval-pending",
        )

    def _refuse_elicited(self, flow: http.HTTPFlow, decided: DecidedMessage, text: str) -> None:
        refuse(
            flow, 200, APPROVAL_REFUSED, text, msg_id=decided.message.id, kind="approval-refused"
        )

    async def _expire_overdue(self) -> None:
        closed = await asyncio.to_thread(self._store().expire_overdue, "nobody decided in time")
        if closed:
            logger.info("holdgate: %d elicitation approval(s) expired", closed)

    async def _expire_lost(self) -> None:
        closed = await asyncio.to_thread(self._store().expire_lost_holds)
        if closed:
            logger.warning(
                "holdgate: %d approval(s) of replicas that stopped heartbeating closed as "
                "expired (holder lost)",
                closed,
            )

    @staticmethod
    def _observed(hold: Hold) -> tuple[str, str | None, str] | None:
        """A decision the gateway can see on the flow itself, if there is one yet."""
        flow = hold.flow
        if flow.error is not None:
            # mitmweb's Kill does not wake wait_for_resume (mitmproxy #8045): look instead.
            return "denied", MITMWEB, "flow killed in mitmweb"
        if not flow.intercepted:
            return "approved", MITMWEB, "flow resumed in mitmweb"
        if hold.client_gone:
            return "cancelled", None, "the client disconnected"
        if time.time() >= hold.expires_at:
            return "expired", None, "nobody decided in time"
        return None

    async def _settle(self, hold: Hold, observed: tuple[str, str | None, str]) -> None:
        try:
            await self._decide_locally(hold, *observed)
        except Exception as exc:  # the decision cannot be recorded: the hold must still end
            hold.decide(UNRECORDED, None, f"{observed[0]}, not recorded: {exc}")

    async def _decide_locally(
        self, hold: Hold, new_state: str, decider: str | None, reason: str
    ) -> None:
        """Record a decision the gateway itself observed; a decision already stored wins."""
        ok = await asyncio.to_thread(
            self._store().append_approval_state,
            hold.approval_id,
            new_state,
            decider,
            reason,
        )
        if ok:
            hold.decide(new_state, decider, reason)
            return
        current = await asyncio.to_thread(self._store().approval, hold.approval_id)
        if current is None:
            hold.decide("expired", None, None)
        else:
            hold.decide(current["state"], current.get("decider"), current.get("reason"))

    def _release(self, flow: http.HTTPFlow, refused: list[tuple[int, str]]) -> None:
        st = state(flow)
        body, upstream = st.body, st.upstream
        if body is None or upstream is None or st.decided_request is None:
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
            pins = self.policy.pins
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
        placeholders = self.policy.legacy_placeholders(flow, errors)
        if placeholders:
            errors = []
        st.pending_errors.extend(errors)
        if not remaining and not placeholders:
            payload = st.pending_errors if body.is_batch else st.pending_errors[0]
            flow.response = http.Response.make(
                200, dumps(payload), {"Content-Type": "application/json"}
            )
            st.refused = Refusal(200, None, "no approval was granted", "approval-refused")
            return
        outgoing = [m.raw for m in remaining] + placeholders
        flow.request.content = dumps(outgoing if body.is_batch else outgoing[0])
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
            states = await asyncio.to_thread(self._store().approval_states, pending)
        except store.StoreError as exc:
            logger.error("holdgate: cannot read approvals: %s", exc)
            return
        for approval_id, row in states.items():
            held = self.holds.get(approval_id)
            if held is not None and row["state"] != "pending":
                held.decide(row["state"], row.get("decider"), row.get("reason"))

    def _record_state(self, hold: Hold, new_state: str, decider: str | None, reason: str) -> None:
        try:
            self._store().append_approval_state(hold.approval_id, new_state, decider, reason)
        except store.StoreError as exc:
            logger.error("holdgate: cannot record approval %s: %s", hold.approval_id, exc)

    async def _notify(self, config: Any, row: dict[str, Any]) -> None:
        """POST a notice to the webhook, retrying with backoff; never blocks the hold."""
        base = config.approvals.public_url or f"http://{ctx.options.holdgate_admin}"
        notice = {
            "type": "approval_requested",
            "approval_id": row["approval_id"],
            "requester": row["requester"],
            "upstream": row["upstream"],
            "tool": row["tool"],
            "rule": row["rule"],
            "approvers": json.loads(row["approvers"]),
            "arguments": json.loads(row["args_masked"]),
            "expires": row["expires"],
            "link": f"{base}/approvals/{row['approval_id']}",
        }
        data = json.dumps(notice).encode()
        for attempt in range(WEBHOOK_ATTEMPTS):
            try:
                await asyncio.to_thread(_post_json, config.approvals.webhook, data)
                return
            except OSError as exc:
                logger.warning("holdgate: webhook attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(0.5 * 2**attempt)
        logger.error("holdgate: webhook gave up on approval %s", row["approval_id"])

    async def handle_admin(self, request: AdminRequest) -> AdminResponse:
        if (route := self.routes.get(request.path.partition("?")[0])) is not None:
            return await route(request)
        config = self.loader.current
        if config is None:
            return AdminResponse(500, {"error": "no config loaded"})
        parts = [p for p in request.path.partition("?")[0].split("/") if p]
        if parts[:1] == ["campaigns"]:
            reviewer = await self.callers.identity(config, request)
            if reviewer is None:
                return AdminResponse(401, {"error": UNAUTHENTICATED_ADMIN})
            return await handle_campaigns(
                self._store(),
                self.refusals,
                config.review.reviewers,
                reviewer.user,
                reviewer.groups,
                request,
                parts,
            )
        if not parts or parts[0] != "approvals" or len(parts) > 3:
            return AdminResponse(404, {"error": "see GET /approvals or GET /campaigns"})
        if len(parts) == 3 and parts[2] == "status" and request.method == "GET":
            return await self._status_page(config, parts[1], request.path)
        approver = await self.callers.identity(config, request)
        if approver is None:
            return AdminResponse(401, {"error": UNAUTHENTICATED_ADMIN})
        if len(parts) == 1 and request.method == "GET":
            pending = await asyncio.to_thread(self._store().approvals, pending_only=True)
            return AdminResponse(
                200, [row for row in pending if may_see(row, approver.user, approver.groups)]
            )
        found = await asyncio.to_thread(self._store().approval, parts[1])
        if found is None or not may_see(found, approver.user, approver.groups):
            deciding = request.method == "POST" and parts[2:] in (["approve"], ["deny"])
            if found is not None and deciding:  # still an attempt worth an audit row
                attempted: Decided = "approved" if parts[2] == "approve" else "denied"
                # neither approver nor requester: the store refuses it and records that
                with contextlib.suppress(store.ApprovalRefused):
                    await asyncio.to_thread(
                        self._store().decide_approval,
                        parts[1],
                        attempted,
                        approver.user,
                        approver.groups,
                    )
            # One answer for "absent" and "not yours": the API is no oracle for either.
            return AdminResponse(
                404, {"error": f"no approval {shown(parts[1])} that {approver.user} may see"}
            )
        if len(parts) == 2 and request.method == "GET":
            return AdminResponse(200, found)
        if len(parts) != 3 or request.method != "POST" or parts[2] not in ("approve", "deny"):
            return AdminResponse(404, {"error": "POST /approvals/ID/approve or /deny"})
        try:
            reason = request.json().get("reason")
        except (json.JSONDecodeError, AttributeError):
            return AdminResponse(400, {"error": "the body must be a JSON object"})
        new_state: Decided = "approved" if parts[2] == "approve" else "denied"
        try:
            await asyncio.to_thread(
                self._store().decide_approval,
                parts[1],
                new_state,
                approver.user,
                approver.groups,
                reason,
            )
        except store.ApprovalRefused as exc:  # recorded by the store as a refused attempt
            return AdminResponse(REFUSAL_STATUS.get(type(exc), 409), {"error": str(exc)})
        hold = self.holds.get(parts[1])
        if hold is not None:
            hold.decide(new_state, approver.user, reason)
        return AdminResponse(
            200, {"approval_id": parts[1], "state": new_state, "decider": approver.user}
        )

    async def _status_page(
        self, config: GatewayConfig, approval_id: str, path: str
    ) -> AdminResponse:
        """The page an elicitation sends the requester to. Its link is its credential (a
        browser carries no bearer token): without the right `t` it is a plain 404."""
        token = parse_qs(urlsplit(path).query).get("t", [""])[0]
        key = self.audit.key(config)
        missing = AdminResponse(404, {"error": "no such approval page"})
        if not approval_id.isalnum() or not elicitation.status_token_holds(key, approval_id, token):
            return missing
        found = await asyncio.to_thread(self._store().approval, approval_id)
        if found is None:
            return missing
        page = elicitation.status_page(found, sorted(approver_groups(found)))
        return AdminResponse(200, None, page=page)


def _post_json(url: str, data: bytes) -> None:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as response:
        response.read()
