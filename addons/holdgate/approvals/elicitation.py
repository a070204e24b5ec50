"""Approvals without a held connection: MCP 2026-07-28 URL-mode elicitation, the pure parts.

A call that needs approval is answered at once with `input_required`: one URL-mode
elicitation pointing at the approval's status page, and a `requestState` that is an
HMAC-bound token of the approval. The client retries with that token; the gateway answers
`input_required` again until someone decides, then forwards the call (approved, once) or
refuses it. Nothing waits on an open HTTP request, so load-balancer timeouts and gateway
restarts do not end the wait.

The token binds the approval to the requester, the upstream and the exact request (its
`request_digest`), so it cannot be replayed by someone else, for another call, or be forged
without the gateway's key; the store makes it single use (`redeemed`).
"""

from __future__ import annotations

import hashlib
import hmac
import html
from typing import Any

from holdgate.protocol.jsonrpc import PROTOCOL_VERSION_META, is_stateless_revision
from holdgate.store.rows import ApprovalRecord

# The key of the gateway's question among `inputRequests`, and of the client's answer.
INPUT_KEY = "holdgate-approval"
STATE_PREFIX = "holdgate-approval.v1."
# Methods a 2026-07-28 server may answer `input_required` (the client retries them).
RETRIABLE = frozenset({"tools/call", "prompts/get", "resources/read"})
_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"


def _subkey(key: bytes, purpose: bytes) -> bytes:
    """One key per use, so a status-page token is never a valid requestState."""
    return hmac.new(key, b"holdgate elicitation " + purpose, hashlib.sha256).digest()


def _mac(key: bytes, purpose: bytes, *parts: str) -> str:
    material = "\n".join(parts).encode("utf-8", "surrogatepass")
    return hmac.new(_subkey(key, purpose), material, hashlib.sha256).hexdigest()


def state_token(key: bytes, approval_id: str, requester: str, upstream: str, digest: str) -> str:
    """The `requestState` handed to the client for this approval."""
    mac = _mac(key, b"state", approval_id, requester, upstream, digest)
    return f"{STATE_PREFIX}{approval_id}.{mac}"


def is_gateway_state(value: Any) -> bool:
    """A requestState that claims to be the gateway's (genuine or not: `token_approval`)."""
    return isinstance(value, str) and value.startswith(STATE_PREFIX)


def token_approval(value: str) -> str | None:
    """The approval id a gateway-looking token names, or None when it is malformed."""
    approval_id, dot, mac = value[len(STATE_PREFIX) :].partition(".")
    if not dot or not approval_id.isalnum() or len(approval_id) > 64 or len(mac) != 64:
        return None
    return approval_id


def token_holds(
    key: bytes, value: str, approval_id: str, requester: str, upstream: str, digest: str
) -> bool:
    """Whether `value` is the token this gateway issued for exactly this approval and call."""
    expected = state_token(key, approval_id, requester, upstream, digest)
    return hmac.compare_digest(value.encode(), expected.encode())


def status_token(key: bytes, approval_id: str) -> str:
    """The capability in a status page's URL (the page has no other authentication)."""
    return _mac(key, b"status", approval_id)[:32]


def status_token_holds(key: bytes, approval_id: str, token: str) -> bool:
    return hmac.compare_digest(token.encode(), status_token(key, approval_id).encode())


def _meta(message: dict[str, Any]) -> dict[str, Any]:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else {}


def accepts_url_elicitation(message: dict[str, Any], header_version: str | None) -> bool:
    """A 2026-07-28 (or later) request whose client declares URL-mode elicitation for it
    (capabilities are per request in that revision), on a method the client retries."""
    if message.get("method") not in RETRIABLE or "id" not in message:
        return False
    meta = _meta(message)
    version = meta.get(PROTOCOL_VERSION_META, header_version)
    if not is_stateless_revision(version):
        return False
    capabilities = meta.get(_CAPABILITIES)
    elicitation = capabilities.get("elicitation") if isinstance(capabilities, dict) else None
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def client_answer(message: dict[str, Any]) -> str | None:
    """What the client's user did with the gateway's elicitation: accept, decline, cancel."""
    params = message.get("params")
    responses = params.get("inputResponses") if isinstance(params, dict) else None
    answer = responses.get(INPUT_KEY) if isinstance(responses, dict) else None
    action = answer.get("action") if isinstance(answer, dict) else None
    return action if action in ("accept", "decline", "cancel") else None


def without_gateway_round(message: dict[str, Any]) -> dict[str, Any]:
    """The call as the upstream must get it: the gateway's own round (its requestState and
    the answer to its question) removed; anything else in `inputResponses` kept."""
    params = message.get("params")
    if not isinstance(params, dict):
        return message
    kept = {k: v for k, v in params.items() if k != "requestState"}
    responses = params.get("inputResponses")
    if isinstance(responses, dict):
        others = {k: v for k, v in responses.items() if k != INPUT_KEY}
        if others:
            kept["inputResponses"] = others
        else:
            kept.pop("inputResponses", None)
    return {**message, "params": kept}


def input_required(
    msg_id: Any, approval_id: str, url: str, prompt: str, token: str
) -> dict[str, Any]:
    """The JSON-RPC answer asking the client to send its user to the status page."""
    question = {
        "method": "elicitation/create",
        "params": {"mode": "url", "message": prompt, "url": url, "elicitationId": approval_id},
    }
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "result": {
            "resultType": "input_required",
            "inputRequests": {INPUT_KEY: question},
            "requestState": token,
        },
    }


def prompt_text(record: ApprovalRecord, state: str) -> str:
    """What the client shows its user beside the link."""
    what = record.get("tool") or record.get("method") or "this call"
    if state == "pending":
        return (
            f"{what} needs approval ({record.get('rule')}, approval {record['approval_id']}). "
            "Open the link to follow it; continue once it is approved."
        )
    return f"{what}: approval {record['approval_id']} is {state}."


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
{refresh}<title>Approval {approval_id}: {state}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}}
dt{{font-weight:600}}.state{{font-size:1.4em}}</style></head>
<body><h1>Approval <code>{approval_id}</code></h1>
<p class="state" id="state">{headline}</p>
<dl><dt>Call</dt><dd><code>{what}</code> on <code>{upstream}</code></dd>
<dt>Requested by</dt><dd>{requester}</dd>
<dt>Rule</dt><dd>{rule}</dd>
<dt>Approvers</dt><dd>{approvers}</dd>
<dt>Expires</dt><dd>{expires}</dd>{decided}</dl>
<p>{advice}</p></body></html>
"""


def status_page(record: ApprovalRecord, approver_groups: list[str]) -> str:
    """The page a requester follows: the approval's state, never its arguments (the URL is
    the only credential, and URLs end up in histories and logs)."""
    state = record["state"]
    pending = state == "pending"
    headline = {
        "pending": "Waiting for an approver.",
        "approved": "Approved: continue in your MCP client to run the call.",
    }.get(state, f"{state.capitalize()}: the call will not run.")
    decided = ""
    if not pending:
        who = record.get("decider") or "the gateway"
        why = f": {record['reason']}" if record.get("reason") else ""
        decided = f"\n<dt>Decided</dt><dd>{html.escape(str(who) + why)}</dd>"
    approval_id = html.escape(record["approval_id"])
    advice = (
        "An approver decides with <code>holdgate approvals approve "
        f"{approval_id}</code> or the approvals API. This page refreshes itself."
        if pending
        else "This approval is settled."
    )
    return _PAGE.format(
        refresh='<meta http-equiv="refresh" content="5">\n' if pending else "",
        approval_id=approval_id,
        state=html.escape(state),
        headline=html.escape(headline),
        what=html.escape(str(record.get("tool") or record.get("method") or "")),
        upstream=html.escape(str(record.get("upstream") or "")),
        requester=html.escape(str(record.get("requester") or "")),
        rule=html.escape(str(record.get("rule") or "")),
        approvers=html.escape(", ".join(approver_groups)),
        expires=html.escape(str(record.get("expires") or "")),
        decided=decided,
        advice=advice,
    )
