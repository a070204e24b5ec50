"""MCP 2026-07-28 multi round-trip requests in process: an input_required result is masked
for the client and the record; the retry with inputResponses is decided by the rules like
any call and its inputResponses are masked in the record; the opaque requestState passes
untouched but is recorded only as a keyed digest, which links the retry's request row to
the response row of the round that asked."""

import json
from typing import Any

import pytest

from helpers.configs import ALICE, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    finish,
    gateway,
    json_response,
    mcp_flow,
    response_json,
    result,
    send,
    store_rows,
)
from holdgate.protocol import mrtr
from holdgate.protocol.jsonrpc import POLICY_DENIED

pytestmark = pytest.mark.anyio

EMAIL = "ada.lovelace@example.com"
ANSWER_EMAIL = "grace.hopper@example.com"
STATE = "opaque-state-7f3a9c2e-round-one"
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: no refunds
    match: {{tool: "refund_*"}}
    action: deny
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
"""
)
EVENTS = "select * from events order by seq"
HEADERS = {**ALICE, "Mcp-Protocol-Version": "2026-07-28"}


def input_required(msg_id: Any = 1) -> dict[str, Any]:
    return result(
        msg_id,
        {
            "resultType": "input_required",
            "inputRequests": {
                "confirm": {
                    "method": "elicitation/create",
                    "params": {"message": f"Send the invoice to {EMAIL}?"},
                }
            },
            "requestState": STATE,
        },
    )


def retry(tool: str = "send_invoice", msg_id: Any = 2) -> dict[str, Any]:
    message = call(tool, {"invoice": "INV-1"}, msg_id)
    message["params"]["inputResponses"] = {
        "confirm": {"action": "accept", "content": {"cc": ANSWER_EMAIL}}
    }
    message["params"]["requestState"] = STATE
    return message


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:
        yield tctx


def test_the_library_reads_the_mrtr_fields():
    asked, again = input_required(), retry()
    assert mrtr.request_state(asked) == mrtr.request_state(again) == STATE
    assert mrtr.is_input_required(asked) and not mrtr.is_input_required(again)
    assert mrtr.input_responses(again) == again["params"]["inputResponses"]
    assert mrtr.input_responses(asked) is None and mrtr.request_state(call("x")) is None
    hidden = mrtr.without_request_state(again)
    assert hidden["params"]["requestState"] == mrtr.STATE_PLACEHOLDER
    assert again["params"]["requestState"] == STATE  # the message itself is untouched


async def test_input_requests_are_masked_for_the_client_and_the_record(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(call("send_invoice", {"invoice": "INV-1"}), HEADERS))
    await answer(tctx, flow, json_response(input_required()))
    seen = response_json(flow)["result"]
    assert EMAIL not in flow.response.text and "[REDACTED:email]" in flow.response.text
    assert seen["resultType"] == "input_required" and seen["requestState"] == STATE
    finish(tctx)
    rows = store_rows(tmp_path, EVENTS)
    (response,) = [row for row in rows if row["direction"] == "response"]
    assert EMAIL not in json.dumps(rows)
    assert json.loads(response["masked"]) == {"email": 1}
    assert json.loads(response["extra"])["input_required"] is True


async def test_a_retry_is_decided_by_the_rules_like_any_call(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(retry("refund_order"), HEADERS))
    assert error_of(flow)[:2] == (200, POLICY_DENIED)
    finish(tctx)
    (row,) = store_rows(tmp_path, EVENTS)
    assert (row["direction"], row["target"], row["decision"], row["rule"]) == (
        "request",
        "refund_order",
        "deny",
        "no refunds",
    )
    assert ANSWER_EMAIL not in json.dumps(row) and STATE not in json.dumps(row)
    extra = json.loads(row["extra"])
    assert "[REDACTED:email]" in json.dumps(extra["input_responses"])
    assert extra["request_state_digest"]


async def test_a_retry_is_linked_to_its_first_round_and_the_raw_state_is_never_stored(
    tctx, tmp_path
):
    first = await send(tctx, mcp_flow(call("send_invoice", {"invoice": "INV-1"}), HEADERS))
    await answer(tctx, first, json_response(input_required()))
    again = await send(tctx, mcp_flow(retry(), HEADERS))
    # requestState and inputResponses travel to the upstream untouched
    forwarded = json.loads(again.request.content)["params"]
    assert forwarded["requestState"] == STATE
    assert forwarded["inputResponses"]["confirm"]["content"]["cc"] == ANSWER_EMAIL
    await answer(tctx, again, json_response(result(2, {"content": [], "isError": False})))
    finish(tctx)
    rows = store_rows(tmp_path, EVENTS)
    dumped = json.dumps(rows)
    assert STATE not in dumped and ANSWER_EMAIL not in dumped and EMAIL not in dumped
    (asked,) = [r for r in rows if r["flow_id"] == first.id and r["direction"] == "response"]
    (retried,) = [r for r in rows if r["flow_id"] == again.id and r["direction"] == "request"]
    assert (retried["decision"], retried["rule"]) == ("allow", "support")
    link = json.loads(asked["extra"])["request_state_digest"]
    assert len(link) == 64 and json.loads(retried["extra"])["request_state_digest"] == link
    assert mrtr.STATE_PLACEHOLDER in asked["args_masked"]
    extra = json.loads(retried["extra"])
    assert extra["input_responses"]["confirm"]["content"]["cc"] == "[REDACTED:email]"
    assert extra["input_responses_findings"] == {"email": 1}
    # the stored arguments are the call's own, nothing of the round-trip fields
    assert json.loads(retried["args_masked"]) == {"invoice": "INV-1"}


async def test_a_request_state_that_looks_like_a_secret_reaches_the_client_untouched(tmp_path):
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdGF0ZSI6InN0ZXAtMSJ9.c2lnbmF0dXJlLWJ5dGVz"
    with gateway(tmp_path, CONFIG.replace("[email]", "[email, jwt]")) as tctx:
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
        body = {
            "resultType": "input_required",
            "requestState": token,
            "inputRequests": {"who": {"message": "mail x@example.com?"}},
        }
        await answer(tctx, flow, json_response(result(1, body)))
    sent = response_json(flow)["result"]
    assert sent["requestState"] == token  # the server's opaque state, byte for byte
    assert "x@example.com" not in json.dumps(sent)  # the rest is masked as before
