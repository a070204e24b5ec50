"""PolicyEnforcer: parses the MCP request body once and decides every JSON-RPC message in it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from mitmproxy import command, flow, http

from holdgate.addons.approval_core import LegacyPlaceholders, forward_remaining
from holdgate.addons.flowstate import (
    Correlator,
    DecidedMessage,
    FlowState,
    MessageContext,
    Refusal,
    annotate,
    fail_closed,
    header_lists,
    refuse,
    session_key,
    state,
)
from holdgate.config.gateway_config import Upstream
from holdgate.identity import Identity
from holdgate.policy.policytest import format_explanation, masked_values
from holdgate.policy.quota import Hit, rate_bucket
from holdgate.policy.rules import Decision, Policy
from holdgate.policy.tasks import is_task_request
from holdgate.protocol.bodies import decode_bounded
from holdgate.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    POLICY_DENIED,
    RATE_LIMITED,
    BodyError,
    Message,
    check_routing_headers,
    error_object,
    is_stateless_revision,
    parse_body,
    single_valued,
)
from holdgate.store import Store, StoreError

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.config_loader import ConfigLoader
    from holdgate.addons.decision_log import DecisionLog
    from holdgate.addons.shadow import ShadowPolicy
    from holdgate.addons.task_ownership import TaskOwnership
    from holdgate.addons.tool_pinning import ToolPinning


logger = logging.getLogger("holdgate")

CLIENT_RESPONSE = Decision("allow", "client-response", "answers to server requests are passed")
EVERY_MESSAGE_DENIED = Refusal(200, None, "every message was denied", "denied")
LISTINGS = {
    "tools/list": ("tools", "tools/call", "name"),
    "resources/list": ("resources", "resources/read", "uri"),
    "prompts/list": ("prompts", "prompts/get", "name"),
}
LISTED = frozenset(key for key, _, _ in LISTINGS.values())


class LimitUncheckable(Exception):
    """A call's rate limit could not be counted (the store is down): it is refused."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class PolicyEnforcer:
    def __init__(
        self,
        loader: ConfigLoader,
        audit: AuditStore,
        tasks: TaskOwnership,
        pins: ToolPinning | None = None,
        legacy: LegacyPlaceholders | None = None,
        shadow: ShadowPolicy | None = None,
        decision_log: DecisionLog | None = None,
    ) -> None:
        self.loader = loader
        self.decision_log = decision_log
        self.audit = audit
        self.tasks = tasks
        self.pins = pins
        self.shadow = shadow  # decides each message again by a candidate, never enforced
        self.correlator = Correlator()
        # refusals swapped in on the legacy SSE transport (shared with the approval holds)
        self.legacy = legacy if legacy is not None else LegacyPlaceholders(self.correlator.limit)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if not st.routed:
            return
        config, upstream, identity = st.route.config, st.route.upstream, st.identity
        method = flow.request.method
        if method in ("GET", "DELETE"):
            # Opening the server's event stream or ending a session carries no call;
            # messages arriving on the stream are decided as they pass. A body there
            # (HTTP/2 sends one without announcing it) would reach the upstream unread.
            if flow.request.raw_content:
                refuse(
                    flow,
                    400,
                    INVALID_REQUEST,
                    f"an HTTP {method} carries no MCP message; send it without a body",
                    kind="malformed",
                )
                return
            st.policy_checked = True
            return
        if method != "POST":
            refuse(
                flow, 405, INVALID_REQUEST, f"HTTP {method} is not part of MCP", kind="malformed"
            )
            return
        try:
            content = decode_bounded(
                flow.request.raw_content or b"",
                flow.request.headers.get("content-encoding", ""),
                self.loader.max_body,
            )
            body = parse_body(content, max_bytes=self.loader.max_body)
            params = self.pins.header_params(upstream.name, body) if self.pins else None
            check_routing_headers(body, single_valued(header_lists(flow.request.headers)), params)
        except BodyError as exc:
            refuse(flow, exc.status, exc.code, f"refused: {exc.message}", kind="malformed")
            return
        try:
            body = await self.tasks.resolve(flow, body)
        except StoreError as exc:
            refuse(
                flow,
                503,
                INTERNAL_ERROR,
                f"the task's owner cannot be checked: the audit store is unavailable ({exc}); "
                "not forwarded",
                kind="audit-unavailable",
            )
            st.audit_error = str(exc)
            return
        st.body = body
        forwarded: list[Message] = []
        errors: list[dict[str, Any]] = []
        shadow_budget = self.shadow.budget() if self.shadow is not None else None
        for index, message in enumerate(body.messages):
            try:
                decision = await self.decide(
                    config.policy, identity, upstream, message, st.rate_hits, st
                )
            except LimitUncheckable as exc:
                # The whole request is refused; each message's row says why.
                unchecked = Decision("deny", exc.rule, "the rate limit could not be checked")
                st.decided += [DecidedMessage(m, unchecked) for m in body.messages[index:]]
                refuse(flow, 503, INTERNAL_ERROR, str(exc), kind="audit-unavailable")
                st.audit_error = str(exc.__cause__)
                st.policy_checked = True
                self._log_decided(flow)
                return
            shadow = None
            if self.shadow is not None and shadow_budget is not None and message.kind != "response":
                deciding = partial(
                    self.ruled, identity=identity, upstream=upstream, message=message, st=st
                )
                shadow = self.shadow.decide_beside(
                    decision, partial(deciding, quiet=True), identity.user, shadow_budget
                )
            st.decided.append(DecidedMessage(message, decision, shadow=shadow))
            if decision.action == "deny":
                if message.kind == "request":
                    code = RATE_LIMITED if decision.rate_limited else POLICY_DENIED
                    errors.append(
                        self.tasks.refusal(message, decision)
                        or error_object(message.id, code, _denial_text(decision))
                    )
                continue
            forwarded.append(message)
        session = session_key(flow)
        if session is not None:
            for message in forwarded:
                if message.kind == "request" and message.method:
                    self.correlator.remember(session, message.id, message.method, message.target)
        st.policy_checked = True
        # Messages waiting for a human are settled by the ApprovalHolds addon, or never.
        st.awaiting_approval = any(d.decision.action == "approve" for d in st.decided)
        forward_remaining(flow, body, forwarded, errors, self.legacy, EVERY_MESSAGE_DENIED)
        annotate(flow)
        self._log_decided(flow)

    def _log_decided(self, flow: http.HTTPFlow) -> None:
        """The console lines of what the policy decided; a held message's line comes with
        its approval (ApprovalHolds)."""
        if self.decision_log is not None:
            decided = state(flow).decided
            self.decision_log.decided(flow, [d for d in decided if d.decision.action != "approve"])

    @command.command("holdgate.explain")
    def explain(self, flows: Sequence[flow.Flow]) -> None:
        """Log, for each selected flow, every rule considered and why, and the decision."""
        for selected in flows:
            st = state(selected) if isinstance(selected, http.HTTPFlow) else None
            if st is None or st.body is None or not st.authenticated:
                logger.warning("holdgate.explain: flow %s carries no decided MCP body", selected.id)
                continue
            config, upstream = st.route.config, st.route.upstream.name
            for message in st.body.messages:
                decision, trace = config.policy.explain(st.identity, upstream, message)
                masked = self.audit.masked_for_record(
                    message.arguments or {}, config, upstream, message.tool
                )
                logger.warning(
                    "holdgate.explain %s %s %s:\n%s",
                    selected.id,
                    message.method,
                    message.target or "",
                    format_explanation(decision, trace, masked_values(masked.value)),
                )

    async def decide(
        self,
        policy: Policy,
        identity: Identity,
        upstream: Upstream,
        message: Message,
        hits: list[Hit] | None = None,
        st: FlowState | None = None,
    ) -> Decision:
        """The policy's decision for one message (tasks/* requests: by their task's owner
        too, `st` holding what `TaskOwnership.resolve` found); an allowed call of a limited
        rule is counted in the store (shared by replicas), or `LimitUncheckable` when it
        cannot be."""
        if message.kind == "response":
            return CLIENT_RESPONSE
        decision = self.ruled(policy, identity, upstream, message, st)
        if decision.action == "allow" and decision.limit is not None:
            count, per = decision.limit
            bucket = rate_bucket(decision.rule, identity.user)
            try:
                taken, window_start = await self.audit.run(
                    lambda store: store.take_rate(bucket, per)
                )
            except StoreError as exc:
                logger.error("holdgate: rate limit of rule %r not counted: %s", decision.rule, exc)
                raise LimitUncheckable(
                    decision.rule,
                    f"the rate limit of rule {decision.rule!r} cannot be checked: the audit "
                    "store is unavailable, so the call was not forwarded; the operator must "
                    "fix the store (see the gateway log)",
                ) from exc
            if taken > count:
                return Decision(
                    "deny",
                    decision.rule,
                    f"rate limit of {count} per {int(per)}s reached for {identity.user}",
                    rate_limited=True,
                )
            if hits is not None:
                hits.append(Hit(bucket, window_start))
        return decision

    def ruled(
        self,
        policy: Policy,
        identity: Identity,
        upstream: Upstream,
        message: Message,
        st: FlowState | None,
        *,
        quiet: bool = False,
    ) -> Decision:
        """The decision of `policy`'s rules for one request or notification, as task
        ownership and tool pins review it; before any rate limit is counted. `quiet`: no
        tool-change alert logged (the shadow policy's second look at a call)."""
        if is_task_request(message):
            if st is None:
                raise RuntimeError("a tasks/* request decided without its flow's task records")
            decision = self.tasks.decide(st, policy, identity, upstream.name, message)
        else:
            decision = policy.evaluate(identity, upstream.name, message)
        if self.pins is not None:
            decision = self.pins.review(identity.user, upstream, message, decision, alert=not quiet)
        return decision

    @fail_closed
    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        await self._settle_quota(flow)

    @fail_closed
    async def error(self, flow: http.HTTPFlow) -> None:
        await self._settle_quota(flow)

    async def _settle_quota(self, flow: http.HTTPFlow) -> None:
        """A request refused after it was decided (audit store down, a held call refused,
        an internal error) never reached the upstream: its calls use no quota. Runs on the
        first response or error hook, before any response-side stage can refuse."""
        st = state(flow)
        hits, st.rate_hits = st.rate_hits, []
        if st.refused is None or not hits:
            return
        try:
            await self.audit.run(lambda store: _give_back(store, hits))
        except StoreError as exc:  # the calls stay counted: a limit errs on the safe side
            logger.error("holdgate: rate-limit quota not given back: %s", exc)

    def answered_request(self, flow: http.HTTPFlow, msg_id: Any) -> tuple[str, str | None] | None:
        """The (method, target) of the request a response message answers."""
        body = state(flow).body
        if body is not None:
            for message in body.messages:
                if message.kind == "request" and message.id == msg_id and message.method:
                    return message.method, message.target
        session = session_key(flow)
        return self.correlator.pop(session, msg_id) if session is not None else None

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any:
        """Response side: filter discovery listings; decide server-to-client requests."""
        if not isinstance(message, dict):
            return message
        st = state(flow)
        config = st.route.config
        session = session_key(flow)
        if "method" not in message and session is not None:
            refusal = self.legacy.refusal_for(session, message.get("id"))
            if refusal is not None:
                return refusal
        if "method" in message and "id" in message:
            if config.server_requests == "deny":
                context.dropped = "server requests are denied by the config (server_requests)"
                return None
            return message
        if "id" not in message:
            if "method" in message:
                return self._police_notification(flow, message, context)
            return message
        # Errors too: tool-scoped masking must know which call an error answers.
        answered = context.answers = self.answered_request(flow, message["id"])
        result = message.get("result")
        if answered is None or answered[0] not in LISTINGS or not isinstance(result, dict):
            return message
        identity = st.identity
        key, use_method, name_key = LISTINGS[answered[0]]
        items = result.get(key)
        if not isinstance(items, list):
            return message
        upstream = st.route.upstream.name
        kept = [
            item
            for item in items
            if isinstance(item, dict)
            and isinstance(item.get(name_key), str)
            and config.policy.may_use(identity, upstream, use_method, item[name_key])
        ]
        hidden = len(items) - len(kept)
        if hidden:
            st.hidden += hidden
        filtered = {**result, key: kept}
        if _caches_listings(flow, result):
            # This identity's list: never for a shared cache, never kept past the policy.
            filtered["cacheScope"] = "private"
            cap = int(config.listing_ttl * 1000)
            ttl = result.get("ttlMs")
            given = ttl if type(ttl) is int and ttl >= 0 else cap  # not a bool, not negative
            filtered["ttlMs"] = min(given, cap)
        return {**message, "result": filtered}

    def _police_notification(
        self, flow: http.HTTPFlow, message: dict[str, Any], context: MessageContext
    ) -> dict[str, Any] | None:
        """A server notification (on a `subscriptions/listen` stream, the GET stream or a
        call's answer stream) that names a resource this identity may not read is dropped;
        one that carries a list of tools, resources or prompts is filtered like a listing."""
        params = message.get("params")
        if not isinstance(params, dict) or not ("uri" in params or LISTED.intersection(params)):
            return message
        st = state(flow)
        config, identity, upstream = st.route.config, st.identity, st.route.upstream
        if "uri" in params:  # notifications/resources/updated, and any other naming one
            uri = params["uri"]
            if not (
                isinstance(uri, str)
                and config.policy.may_use(identity, upstream.name, "resources/read", uri)
            ):
                context.dropped = "names a resource this identity may not read"
                return None
        changed = False
        filtered = dict(params)
        for key, use_method, name_key in LISTINGS.values():
            items = params.get(key)
            if not isinstance(items, list):
                continue
            kept = [
                item
                for item in items
                if isinstance(item, dict)
                and isinstance(item.get(name_key), str)
                and config.policy.may_use(identity, upstream.name, use_method, item[name_key])
            ]
            if len(kept) != len(items):
                st.hidden += len(items) - len(kept)
                filtered[key] = kept
                changed = True
        return {**message, "params": filtered} if changed else message


def _denial_text(decision: Decision) -> str:
    return f"denied by rule {decision.rule!r}: {decision.reason}"


def _caches_listings(flow: http.HTTPFlow, result: dict[str, Any]) -> bool:
    """Whether the listing's client may cache it: MCP 2026-07-28 (`ttlMs`, `cacheScope`)."""
    version: str = flow.request.headers.get("mcp-protocol-version", "")
    return is_stateless_revision(version) or "ttlMs" in result or "cacheScope" in result


def _give_back(store: Store, hits: list[Hit]) -> None:
    for hit in hits:
        store.give_back_rate(hit.bucket, hit.window_start)
