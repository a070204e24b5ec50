"""ElicitedApprovals: approvals asked through MCP URL elicitation, with nothing held open.

A call whose rule says `approval_via: elicitation`, from a client that can follow a link,
is answered `input_required` with a link to the approval's status page and a signed
`requestState`; the client calls again with it and the call leaves once (approved), is
asked again (pending), or is refused. The `ApprovalHolds` stage hands such calls here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http

from holdgate import store
from holdgate.addons.flowstate import DecidedMessage, Refusal, refuse, state
from holdgate.approvals import elicitation
from holdgate.approvals.approval_rules import grant_key
from holdgate.approvals.spendable import spend_refusal
from holdgate.config.gateway_config import GatewayConfig
from holdgate.identity import Identity
from holdgate.protocol.canonical_json import args_digest
from holdgate.protocol.jsonrpc import APPROVAL_REFUSED, dumps
from holdgate.protocol.mrtr import request_state

if TYPE_CHECKING:
    from holdgate.addons.approval_core import ApprovalCore
    from holdgate.addons.config_loader import ConfigLoader

logger = logging.getLogger("holdgate")


class ElicitedApprovals:
    def __init__(self, loader: ConfigLoader, core: ApprovalCore) -> None:
        self.loader = loader
        self.core = core
        self._warned_no_link = False

    def applies(self, flow: http.HTTPFlow) -> bool:
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

    async def round(
        self,
        flow: http.HTTPFlow,
        decided: DecidedMessage,
        identity: Identity,
        config: GatewayConfig,
    ) -> None:
        """First round: a new approval, answered `input_required`. A retry: its token
        checked, then asked again (pending), forwarded once (approved) or refused."""
        st = state(flow)
        message, decision = decided.message, decided.decision
        upstream = st.route.upstream.name
        key = self.core.key(config)
        token = request_state(message.raw)
        if token is None or not elicitation.is_gateway_state(token):
            await self._ask(flow, decided, identity, config)
            return
        approval_id = elicitation.token_approval(token)
        record = (
            await self.core.audit.run(lambda store: store.approval(approval_id))
            if approval_id is not None
            else None
        )
        digest = self.core.request_digest(upstream, identity, message)
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
            record = await self.core.audit.run(lambda store: store.approval(approval_id)) or record
        if current == "approved":
            void = spend_refusal(record, decision, time.time())
            if void is not None:
                await self.core.audit.run(
                    lambda store: store.append_approval_state(
                        approval_id,
                        "refused_attempt",
                        identity.user,
                        f"not forwarded: {void.reason}",
                    )
                )
                decided.approval = {"state": "approved", "void": void.kind, "via": "elicitation"}
                refuse(flow, 200, APPROVAL_REFUSED, void.reason, msg_id=message.id, kind=void.kind)
                return
            redeemed = await self.core.audit.run(
                lambda store: store.redeem_approval(
                    approval_id, identity.user, f"call forwarded ({flow.id})"
                )
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
            await self.core.grant(granted, approval_id, decision.grant)
            with contextlib.suppress(TypeError, json.JSONDecodeError):
                self.core.last_approved[(identity.user, upstream, message.target or "")] = (
                    json.loads(record.get("args_masked") or "null")
                )
            decided.approval = {
                "state": "approved",
                "decider": record.get("decider"),
                "via": "elicitation",
            }
            decided.channel = record.get("channel")
            flow.request.content = dumps(elicitation.without_gateway_round(message.raw))
            st.approvals_settled = True
            return
        who = f" by {record['decider']}" if record.get("decider") else ""
        why = f": {record['reason']}" if record.get("reason") else ""
        decided.approval = {
            "state": current,
            "decider": record.get("decider"),
            "via": "elicitation",
        }
        decided.channel = record.get("channel")
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
        await self.core.audit.run(lambda store: store.append_approval_state(approval_id, *closing))
        latest = await self.core.audit.run(lambda store: store.approval(approval_id))
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
        message, decision = decided.message, decided.decision
        digest_args = args_digest(self.core.key(config), message.arguments or {})
        key = grant_key(
            identity.user,
            st.route.upstream.name,
            message.method or "",
            message.target or "",
            digest_args or "",
        )
        if await self.core.granted(flow, decided, identity, key):
            flow.request.content = dumps(elicitation.without_gateway_round(message.raw))
            st.approvals_settled = True
            return
        row, _ = self.core.approval_row(
            flow,
            message,
            decision,
            identity,
            digest_args,
            config,
            time.time() + decision.timeout,
            via="elicitation",
        )
        await self.core.started.wait()
        await self.core.audit.run(lambda store: store.create_approval(row))
        decided.approval_id = row["approval_id"]
        self.core.notify(config, row)
        self._answer_input_required(flow, decided, row)

    def _answer_input_required(
        self, flow: http.HTTPFlow, decided: DecidedMessage, record: Any
    ) -> None:
        st = state(flow)
        config = st.route.config
        approval_id = record["approval_id"]
        key = self.core.key(config)
        base = self._status_base()
        if base is None:
            raise RuntimeError("the approvals API is disabled (holdgate_admin is empty)")
        url = (
            f"{base}/approvals/{approval_id}/status?t={elicitation.status_token(key, approval_id)}"
        )
        token = elicitation.state_token(
            key, approval_id, st.identity.user, st.route.upstream.name, record["request_digest"]
        )
        answer = elicitation.input_required(
            decided.message.id,
            approval_id,
            url,
            elicitation.prompt_text(record, "pending"),
            token,
        )
        decided.approval = {"state": "pending", "via": "elicitation"}
        if record.get("expires"):
            decided.expires = store.parse_iso(record["expires"])
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
