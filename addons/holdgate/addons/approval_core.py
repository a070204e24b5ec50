"""What the policy stage, the approval holds and the elicited approvals share, below all three.

- `forward_remaining`: the request that leaves once some of its messages were refused
  (by the policy, or by a human), or the answer when none is left.
- `LegacyPlaceholders`: on the legacy HTTP+SSE transport a refused request is replaced by
  a placeholder call, and the upstream's answer to it swapped for the refusal.
- `ApprovalCore`: the approval records both approval protocols write (the pending row, the
  grant window, the webhook notice), over the Recorder's store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http

from holdgate import store
from holdgate.addons.flowstate import DecidedMessage, Refusal, state
from holdgate.approvals import webhook
from holdgate.approvals.approval_rules import argument_changes, request_digest
from holdgate.config.gateway_config import GatewayConfig
from holdgate.identity import Identity
from holdgate.policy.rules import Decision
from holdgate.protocol.jsonrpc import Body, Message, dumps
from holdgate.store import Store
from holdgate.store import iso as now_iso

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.replicas import Replicas
    from holdgate.addons.tool_pinning import ToolPinning

logger = logging.getLogger("holdgate")

PLACEHOLDER = "holdgate/refused"


class LegacyPlaceholders:
    """Refusals waiting to be swapped in for the upstream's answer to a placeholder call,
    by (session, JSON of the id); bounded, the oldest first out."""

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self.substituted: dict[tuple[str, str], dict[str, Any]] = {}

    def placeholders(
        self, flow: http.HTTPFlow, errors: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """On the legacy HTTP+SSE transport answers travel on the GET stream, where the
        gateway can only speak when the upstream does. So a refused request is replaced by
        an empty placeholder call with the same id (the refused call itself never leaves);
        the upstream's "method not found" answer is swapped for the refusal on the stream.
        """
        if not errors:  # the common case, before the query string is parsed
            return []
        session = flow.request.query.get("session_id")
        if session is None or "mcp-session-id" in flow.request.headers:
            return []
        placeholders = []
        for error in errors:
            if len(self.substituted) >= self.limit:
                self.substituted.pop(next(iter(self.substituted)))
            self.substituted[(session, json.dumps(error["id"]))] = error
            placeholders.append({"jsonrpc": "2.0", "id": error["id"], "method": PLACEHOLDER})
        return placeholders

    def refusal_for(self, session: str, msg_id: Any) -> dict[str, Any] | None:
        """The refusal a placeholder's answer stands for, taken once."""
        return self.substituted.pop((session, json.dumps(msg_id)), None)


def forward_remaining(
    flow: http.HTTPFlow,
    body: Body,
    remaining: list[Message],
    errors: list[dict[str, Any]],
    legacy: LegacyPlaceholders,
    refusal: Refusal,
) -> bool:
    """Send on exactly `remaining`, re-serialised from what was parsed, with the refusals
    in `errors` kept for the answer; with nothing left to send, answer for the upstream
    (keeping the client's session) and record `refusal`. True when something leaves."""
    st = state(flow)
    outgoing = [m.raw for m in remaining]
    placeholders = legacy.placeholders(flow, errors)
    if placeholders:
        outgoing += placeholders
        errors = []
    st.pending_errors.extend(errors)
    if not outgoing:
        st.refused = refusal
        if not st.pending_errors:
            flow.response = http.Response.make(202, b"")
        else:
            payload = st.pending_errors if body.is_batch else st.pending_errors[0]
            flow.response = http.Response.make(
                200, dumps(payload), {"Content-Type": "application/json"}
            )
        return False
    decided = dumps(outgoing if body.is_batch else outgoing[0])
    flow.request.content = decided
    flow.request.headers["accept-encoding"] = "identity"
    st.decided_request = (flow.request.url, decided)
    return True


class ApprovalCore:
    """The approval records of both protocols (held calls, elicited approvals)."""

    def __init__(
        self, audit: AuditStore, pins: ToolPinning | None, replicas: Replicas | None
    ) -> None:
        self.audit = audit
        self.pins = pins
        self.replicas = replicas
        # Set once a previous run's pending approvals are closed: none is created before.
        self.started = asyncio.Event()
        self.last_approved: dict[tuple[str, str, str], Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def store(self) -> Store:
        """The AuditStore's store: one owner of the connection for the whole gateway."""
        return self.audit.store()

    def key(self, config: GatewayConfig) -> bytes:
        """The digest key of the store: argument digests, tokens and status links."""
        return self.audit.key(config)

    def replica(self) -> str | None:
        return self.replicas.replica if self.replicas is not None else None

    async def granted(
        self, flow: http.HTTPFlow, decided: DecidedMessage, identity: Identity, key: str
    ) -> bool:
        """An identical call approved within the grant window (on any replica) passes,
        each use recorded, while the rule that asked for the approval is unchanged."""
        approval_id = await self.audit.run(lambda store: store.find_grant(key))
        if approval_id is None:
            return False
        record = await self.audit.run(lambda store: store.approval(approval_id))
        asking = decided.decision
        if record is None or (record.get("rule"), record.get("rule_lineage")) != (
            asking.rule,
            asking.lineage or None,
        ):
            return False  # the rule changed since: asked for again
        decided.approval_id = approval_id
        decided.approval = {"granted_by": "grant window"}
        await self.audit.run(
            lambda store: store.append_approval_state(
                approval_id,
                "grant_used",
                identity.user,
                f"identical call within the grant ({flow.id})",
            )
        )
        return True

    async def grant(self, key: str, approval_id: str, seconds: float) -> None:
        """Open the grant window an approval gives (`grant:`), in the store every replica
        reads; when it cannot be written, identical calls are asked for again."""
        if seconds <= 0:
            return
        try:
            await self.audit.run(lambda store: store.add_grant(key, approval_id, seconds))
        except store.StoreError as exc:
            logger.error("holdgate: grant of approval %s not kept: %s", approval_id, exc)

    def approval_row(
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
        upstream = state(flow).route.upstream.name
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
            "request_digest": self.request_digest(upstream, identity, message),
            "rule": decision.rule,
            "approvers": json.dumps(list(decision.approvers)),
            "created": now_iso(),
            "expires": now_iso(expires_at),
            "changes": json.dumps(argument_changes(previous, masked_args))
            if previous is not None
            else None,
            "flow_id": flow.id,
            "via": via,
            "replica": self.replica() if via == "hold" else None,
            "rule_lineage": decision.lineage or None,
        }
        return row, masked_args

    def request_digest(self, upstream: str, identity: Identity, message: Message) -> str:
        pins = self.pins
        return request_digest(
            upstream,
            identity.user,
            message.method or "",
            message.target,
            message.arguments or {},
            pins.definition_digest(upstream, message.tool) if pins and message.tool else None,
        )

    def notify(self, config: GatewayConfig, row: dict[str, Any]) -> None:
        """Tell the config's webhook of a new approval, in the background."""
        hook = config.approvals.webhook
        if hook is None:
            return
        base = config.approvals.public_url or f"http://{ctx.options.holdgate_admin}"
        body = webhook.webhook_body(hook.format, row, base)
        task = asyncio.create_task(webhook.notify(hook.url, body, row["approval_id"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
