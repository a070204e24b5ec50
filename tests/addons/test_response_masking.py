"""ResponseMasking in process: profiles by upstream, tool and group; streams look behind."""

import json

import pytest
from mitmproxy import http

from helpers.configs import ALICE, CAROL, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    finish,
    gateway,
    json_response,
    mcp_flow,
    response_json,
    result,
    send,
    store_rows,
)

pytestmark = pytest.mark.anyio

EMAIL = "ada.lovelace@example.com"
CONFIG = (
    "version: 1\n"
    + identity("alice", "carol")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: partial
    exempt_groups: [compliance]
  - name: ids in lookups
    tools: [get_customer]
    paths: ["$..customer_id"]
    strategy: redact
"""
)


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:  # every addon: Recorder is the last stage
        yield tctx


async def answered(tctx, who, tool, value):
    flow = await send(tctx, mcp_flow(call(tool), who))
    assert flow.response is None
    await answer(tctx, flow, json_response(result(1, value)))
    return response_json(flow)["result"]


async def test_pii_is_masked_and_the_findings_recorded(tctx, tmp_path):
    got = await answered(tctx, ALICE, "search", {"email": EMAIL, "customer_id": 7})
    assert got == {"email": "a***@example.com", "customer_id": 7}  # ids: get_customer only
    finish(tctx)
    sql = "select masked from events where direction = 'response'"
    assert [json.loads(r["masked"]) for r in store_rows(tmp_path, sql)] == [{"email": 1}]


async def test_a_profile_scoped_to_a_tool_applies_to_its_answers_only(tctx):
    got = await answered(tctx, ALICE, "get_customer", {"customer_id": 7})
    assert got == {"customer_id": "[REDACTED:$..customer_id]"}


async def test_an_exempt_group_sees_cleartext(tctx):
    got = await answered(tctx, CAROL, "search", {"email": EMAIL})
    assert got == {"email": EMAIL}


async def test_the_envelope_stays_byte_identical(tctx):
    flow = await send(tctx, mcp_flow(call("search", msg_id=EMAIL), ALICE))
    await answer(tctx, flow, json_response(result(EMAIL, {"text": EMAIL})))
    assert response_json(flow)["id"] == EMAIL  # an id is the client's, never data


async def test_an_address_split_across_two_events_is_masked_in_the_second(tctx):
    flow = await send(tctx, mcp_flow(call("search"), ALICE))
    await answer(tctx, flow, http.Response.make(200, b"", {"Content-Type": "text/event-stream"}))
    first = {
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"data": "to ada.lovelace@exa"},
    }
    second = {
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"data": "mple.com now"},
    }
    sent = b""
    for message in (first, second):
        sent += b"".join(flow.response.stream(f"data: {json.dumps(message)}\n\n".encode()))
    assert b'"to ada.lovelace@exa"' in sent  # sent before it was whole
    assert b'"a***@example.com now"' in sent  # the second carries the mask of the whole
    assert sent.count(b"mple.com") == sent.count(b"a***@example.com")  # only in the mask
