"""Glue shared by every Holdgate addon: the typed per-flow state, refusals, failing closed.

mitmproxy logs an exception raised in an addon hook and then forwards the flow
anyway. `fail_closed` wraps every hook so that an error becomes a 502 JSON-RPC
refusal instead; it is the one mechanism all addons use.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from holdgate import STATE_KEY
from holdgate.config.gateway_config import GatewayConfig, Upstream
from holdgate.credentials import Delegation
from holdgate.identity import Identity, SubjectToken
from holdgate.masking.masker import StreamMasker
from holdgate.policy.decision_text import DecisionText, held_outcome
from holdgate.policy.quota import Hit
from holdgate.policy.rules import Decision
from holdgate.protocol.jsonrpc import INTERNAL_ERROR, Body, Message, error_object
from holdgate.store.task_records import TaskRecord

logger = logging.getLogger("holdgate")

RECORDED_STREAM_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Refusal:
    """The gateway answered the client itself: what it said, and why (`kind`). `detail`
    is what the record says beyond the client's `message` (the operator's view: an
    upstream's address, the network error), never sent to the client."""

    status: int
    code: int | None
    message: str
    kind: str
    detail: str | None = None

    @property
    def recorded(self) -> str:
        """The reason the record keeps."""
        return self.detail or self.message

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "kind": self.kind,
        }
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class DecidedMessage:
    """One JSON-RPC message of the request, the PolicyEnforcer's decision on it, and, for a
    held one, what the ApprovalHolds made of it."""

    message: Message
    decision: Decision
    approval_id: str | None = None  # ApprovalHolds
    approval: dict[str, Any] | None = None  # ApprovalHolds: {state, decider} or {granted_by}
    shadow: dict[str, Any] | None = None  # ShadowPolicy: the candidate's, where it differs
    # ApprovalHolds, for the comment and the console line (not in the rows): the hold's
    # expiry, and how its decider decided
    expires: float | None = None
    channel: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {**self.message.summary(), "decision": self.decision.to_json()}
        if self.approval_id is not None:
            out["approval_id"] = self.approval_id
        if self.approval is not None:
            out["approval"] = self.approval
        if self.shadow is not None:
            out["shadow"] = self.shadow
        return out


@dataclass(frozen=True)
class Route:
    """What the Router decided for a flow it sends on: the config that decided it, the
    upstream it goes to, and the client's address."""

    config: GatewayConfig
    upstream: Upstream
    client_addr: str | None


class StageSkipped(RuntimeError):
    """A stage read what an earlier stage sets, on a flow that stage never set it for."""


@dataclass(eq=False)
class FlowState:
    """What the gateway learns and decides about one flow, each field written by one addon.

    It lives beside the flow (never pickled or saved); `publish` writes its plain-JSON
    view into `flow.metadata`, the one place mitmproxy saves and mitmweb shows it.
    """

    # Router: the config the flow arrived under (kept for refusals too), then its Route
    config: GatewayConfig | None = None
    front: str | None = None  # the gateway's own base URL as the client addressed it
    local: str | None = None  # a document the gateway serves itself
    _route: Route | None = None
    # Authentication: the caller's Identity, or why there is none
    _identity: Identity | None = None
    auth_error: str | None = None
    spoofing: dict[str, Any] | None = None
    subject: SubjectToken | None = field(default=None, repr=False)  # never published
    # PolicyEnforcer
    body: Body | None = None
    decided: list[DecidedMessage] = field(default_factory=list)
    decided_request: tuple[str, bytes] | None = None  # what was decided, to spot edits
    pending_errors: list[dict[str, Any]] = field(default_factory=list)
    rate_hits: list[Hit] = field(default_factory=list)
    policy_checked: bool = False  # every message decided (or none to decide: GET, DELETE)
    awaiting_approval: bool = False
    hidden: int = 0  # listing entries withheld (PolicyEnforcer, then ToolPinning adds)
    # TaskOwnership: the record of the task each tasks/* request names, or a call's answer
    # created (by JSON-RPC id; None: no task of this upstream has that id), the caller's
    # task keys for a tasks/list,
    # the ids of tasks/list requests whose cursor the gateway did not give this caller
    task_requests: dict[str, TaskRecord | None] = field(default_factory=dict)
    task_listing: frozenset[str] | None = None
    task_bad_cursors: set[str] = field(default_factory=set)
    # ApprovalHolds
    held: str | None = None  # the approval id while the flow waits
    approvals_settled: bool = False
    # ToolPinning
    tools_changed: list[str] = field(default_factory=list)
    # Gate
    injected: tuple[str, ...] = ()
    delegation: Delegation | None = field(default=None, repr=False)  # the exchanged token
    upstream_credential: dict[str, Any] | None = None  # what the record says of the credential
    # Responses / ResponseMasking
    masked: dict[str, int] = field(default_factory=dict)
    exempted: tuple[str, ...] = ()
    reflected_secret: int = 0
    stream_cut: dict[str, str] | None = None
    streamed: bytearray = field(default_factory=bytearray)  # the stream as the client got it
    stream_masker: StreamMasker | None = None
    stream_session: str | None = None  # the legacy transport's session, from its endpoint
    # Recorder
    session: str | None = None  # the session its rows and flow file belong to, once known
    # "mcp" (a protocol session id), "grouped" (Holdgate's) or "overflow" (a caller's shared one)
    session_kind: str | None = None
    recorded: bool = False
    stream_messages: int = 0  # the messages of its event stream recorded so far
    audit_lost: bool = False
    audit_error: str | None = None
    # any addon, through refuse() / fail_closed
    refused: Refusal | None = None
    refusal_body: bytes | None = None  # what the client is told, kept by refuse()
    error: dict[str, str] | None = None

    @property
    def route(self) -> Route:
        """The Router's decision; every stage after it reads the upstream and config here."""
        if self._route is None:
            raise StageSkipped("a stage after the Router on a flow it did not route")
        return self._route

    @route.setter
    def route(self, route: Route) -> None:
        if self._route is not None:
            raise StageSkipped("the flow was routed twice")
        self._route = route

    @property
    def routed(self) -> bool:
        """Sent on to an upstream (observers also see flows refused or served locally)."""
        return self._route is not None

    @property
    def identity(self) -> Identity:
        """The caller, as Authentication settled it; every stage after it reads it here."""
        if self._identity is None:
            raise StageSkipped("a stage after Authentication on a flow it did not authenticate")
        return self._identity

    @identity.setter
    def identity(self, identity: Identity) -> None:
        if self._identity is not None:
            raise StageSkipped("the flow was authenticated twice")
        self._identity = identity

    @property
    def authenticated(self) -> bool:
        return self._identity is not None

    @property
    def cleared(self) -> bool:
        """Every message decided, and nothing waiting for a human any more."""
        return self.policy_checked and (not self.awaiting_approval or self.approvals_settled)

    def count_masked(self, findings: dict[str, int]) -> None:
        for name, count in findings.items():
            self.masked[name] = self.masked.get(name, 0) + count

    def keep_for_recording(self, data: bytes) -> None:
        """Keep the first RECORDED_STREAM_BYTES of a stream as the client got it."""
        room = RECORDED_STREAM_BYTES - len(self.streamed)
        self.streamed += data[: max(room, 0)]

    def to_json(self) -> dict[str, Any]:
        """The plain-JSON view saved with the flow (no argument values, no objects)."""
        out: dict[str, Any] = {}
        if self.config is not None:
            out["config_hash"] = self.config.digest
        if self._route is not None:
            out["upstream"] = self._route.upstream.name
            if self._route.client_addr is not None:
                out["client_addr"] = self._route.client_addr
        if self._identity is not None:
            out["identity"] = self._identity.to_json()
        if self.decided:
            out["messages"] = [d.to_json() for d in self.decided]
        if self.refused is not None:
            out["refused"] = self.refused.to_json()
        for name in (
            "local",
            "session",
            "auth_error",
            "spoofing",
            "held",
            "error",
            "upstream_credential",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("hidden", "reflected_secret", "audit_lost", "audit_error", "stream_cut"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.masked:
            out["masked"] = dict(self.masked)
        if self.exempted:
            out["exempted"] = list(self.exempted)
        if self.tools_changed:
            out["tools_changed"] = list(self.tools_changed)
        if self.injected:
            out["injected"] = list(self.injected)
        return out


_states: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()


def state(flow: http.HTTPFlow) -> FlowState:
    """This flow's FlowState (a fresh one for a flow the gateway has not seen)."""
    found = _states.get(flow)
    if found is None:
        found = _states[flow] = FlowState()
        # The key says the gateway has seen the flow (the entry script's sentinel looks);
        # `publish` fills it.
        flow.metadata.setdefault(STATE_KEY, {})
    return found


def publish(flow: http.HTTPFlow) -> None:
    """Write the flow's state into `flow.metadata` (before it is saved, shown or recorded)."""
    flow.metadata[STATE_KEY] = state(flow).to_json()


def decision_text(st: FlowState, decided: DecidedMessage) -> DecisionText:
    """One message's decision in words (`policy.decision_text`), as far as it has gone."""
    decision, approval = decided.decision, decided.approval or {}
    outcome: str
    if decision.action in ("allow", "deny"):
        outcome = decision.action
    elif "granted_by" in approval:
        outcome = "approved"
    else:
        outcome = held_outcome(approval.get("state"))
    if approval.get("void"):
        note: str | None = f"void: {approval['void']}"
    elif decision.rate_limited:
        note = "rate limited"
    else:
        note = approval.get("granted_by")
    held = outcome == "hold"
    return DecisionText(
        user=st.identity.user if st.authenticated else None,
        method=decided.message.method,
        target=decided.message.target,
        outcome=outcome,
        rule=decision.rule,
        approval_id=decided.approval_id,
        approvers=decision.approvers if held else (),
        expires=decided.expires if held else None,
        decider=approval.get("decider"),
        channel=decided.channel,
        note=note,
    )


# mitmweb's marker of a flow the shadow policy would decide differently
SHADOW_MARKER = ":crystal_ball:"


def annotate(flow: http.HTTPFlow) -> None:
    """The flow's comment and marker in mitmweb (and in its recording): its decisions (the
    words of the console's decision lines), any refusal and what was masked. The one place
    they are written, so the live flow and the recorded one never disagree."""
    st = state(flow)
    parts = [str(decision_text(st, d)) for d in st.decided]
    if st.refused is not None:
        parts.append(f"refused ({st.refused.kind}): {st.refused.recorded}")
    if st.masked:
        parts.append("masked: " + ", ".join(f"{k}={v}" for k, v in st.masked.items()))
    shadowed = [d for d in st.decided if d.shadow is not None]
    parts += [
        f"shadow {d.shadow['kind']}: {d.message.target or d.message.method} would be "
        f"{d.shadow['action']} by {d.shadow['rule']!r}"
        for d in shadowed
        if d.shadow is not None
    ]
    flow.comment = "holdgate: " + "; ".join(parts)
    actions = {d.decision.action for d in st.decided}
    if shadowed and st.held is None:  # what a shadow run is watched for; a hold stays shown
        flow.marked = SHADOW_MARKER
    elif st.refused is not None or "deny" in actions:
        flow.marked = ":no_entry:"
    elif st.held is not None or ("approve" in actions and not st.approvals_settled):
        flow.marked = ":hourglass:"
    else:
        flow.marked = ":white_check_mark:"


def is_mcp(flow: http.HTTPFlow) -> bool:
    """Flows the gateway handles (routed to an upstream); others it refuses or serves itself."""
    return state(flow).routed


def json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> http.Response:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return http.Response.make(status, body, {"Content-Type": "application/json", **(headers or {})})


def refuse(
    flow: http.HTTPFlow,
    status: int,
    code: int,
    message: str,
    *,
    msg_id: str | int | None = None,
    kind: str = "refused",
    headers: dict[str, str] | None = None,
) -> None:
    """Answer the client ourselves; the request never reaches the upstream."""
    flow.response = json_response(status, error_object(msg_id, code, message), headers)
    st = state(flow)
    st.refused = Refusal(status, code, message, kind)
    st.refusal_body = flow.response.content


def keep_refusal_body(flow: http.HTTPFlow) -> None:
    """A refusal made once the upstream answered (at `responseheaders`) replaces the
    response, but mitmproxy still reads the upstream's body into the replacement: put the
    refusal's own body back before anything is sent or recorded."""
    st = state(flow)
    if st.refusal_body is None or flow.response is None:
        return
    if flow.response.content != st.refusal_body:
        flow.response.content = st.refusal_body


RESPONSE_HOOKS = frozenset({"responseheaders", "response"})


def refuse_internal(flow: http.HTTPFlow, where: str, exc: BaseException) -> None:
    """Turn an unexpected error into a 502 refusal (never a pass) and say where it happened."""
    logger.error("holdgate: %s failed (%s: %s); flow refused", where, type(exc).__name__, exc)
    st = state(flow)
    if st.refused is not None and st.refused.kind == "internal-error":
        if flow.intercepted:
            flow.resume()  # a held flow must not wait for ever on a refusal
        return  # the client is told the first failure, the one that caused the rest
    withheld = (
        "response was withheld"
        if where.rsplit(".", 1)[-1] in RESPONSE_HOOKS
        else ("request was not forwarded")
    )
    message = f"internal error in the gateway ({where}); the {withheld}"
    refuse(flow, 502, INTERNAL_ERROR, message, kind="internal-error")
    st.error = {"where": where, "type": type(exc).__name__}
    if flow.intercepted:
        flow.resume()  # a held flow must not wait for ever on a refusal


Hook = Callable[..., Any]


def fail_closed(hook: Hook) -> Hook:
    """Wrap an addon hook so an exception refuses the flow instead of forwarding it.

    Request-phase hooks also skip flows another addon already refused.
    """
    where_prefix = hook.__qualname__

    def skip(flow: Any) -> bool:
        return (
            isinstance(flow, http.HTTPFlow)
            and hook.__name__ in ("request", "requestheaders")
            and state(flow).refused is not None
        )

    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def async_wrapper(self: Any, flow: Any, *args: Any) -> Any:
            if skip(flow):
                return None
            try:
                return await hook(self, flow, *args)
            except Exception as exc:  # noqa: BLE001 - the one place every error becomes a refusal
                refuse_internal(flow, where_prefix, exc)
                return None

        return async_wrapper

    @functools.wraps(hook)
    def wrapper(self: Any, flow: Any, *args: Any) -> Any:
        if skip(flow):
            return None
        try:
            return hook(self, flow, *args)
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes a refusal
            refuse_internal(flow, where_prefix, exc)
            return None

    return wrapper


def header_lists(headers: http.Headers) -> dict[str, list[str]]:
    """Lowercased header names mapped to every value sent (duplicates kept, to refuse them).
    One pass over the raw fields, decoded as mitmproxy decodes them (a `get_all` per name
    walks every field again)."""
    out: dict[str, list[str]] = {}
    for name, value in headers.fields:
        key = name.lower().decode("utf-8", "surrogateescape")  # ASCII case, as HTTP's
        found = out.get(key)
        text = value.decode("utf-8", "surrogateescape")
        if found is None:
            out[key] = [text]
        else:
            found.append(text)
    return out


@dataclass
class MessageContext:
    """What the response stages learn about one message as it passes them."""

    transport: str  # "json", "sse", or "text" (a non-JSON error body)
    answers: tuple[str, str | None] | None = None  # (method, target) of the request answered
    findings: dict[str, int] = field(default_factory=dict)
    exemptions: tuple[str, ...] = ()
    dropped: str | None = None
    task: TaskRecord | None = None  # the task the message is about (TaskOwnership)


def answered_tool(context: MessageContext) -> str | None:
    """The tool whose masking profiles apply to a message: the call it answers, or the
    call that created the task it is about."""
    if context.task is not None:
        return context.task.tool
    answers = context.answers
    return answers[1] if answers and answers[0] == "tools/call" else None


def session_key(flow: http.HTTPFlow) -> str | None:
    """The MCP session a flow belongs to: Mcp-Session-Id, or the legacy transport's query id."""
    found: str | None = flow.request.headers.get("mcp-session-id")
    if found:
        return found
    if "session_id=" in flow.request.path:  # parsing the query is costly
        query: str | None = flow.request.query.get("session_id")
        if query:
            return query
    return state(flow).stream_session


class Correlator:
    """Which request a response answers, across flows (legacy SSE answers on another flow).

    Bounded: the oldest entries go first once `limit` is reached.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._requests: dict[tuple[str, str], tuple[str, str | None]] = {}

    def remember(self, session: str, msg_id: Any, method: str, target: str | None) -> None:
        if len(self._requests) >= self.limit:
            self._requests.pop(next(iter(self._requests)))
        self._requests[(session, json.dumps(msg_id))] = (method, target)

    def pop(self, session: str, msg_id: Any) -> tuple[str, str | None] | None:
        return self._requests.pop((session, json.dumps(msg_id)), None)
