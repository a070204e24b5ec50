"""MCP 2026-07-28 end to end: the official SDK 2.x client in modern mode (and in legacy
mode) through a real mitmdump to the real 2.x demo server.

`refund_order` asks its user before it runs (a resolver that elicits): mid-call over the
event stream for a legacy client, an `input_required` round for a modern one. Either way
the question carries the customer's email and card number, which the gateway masks, and
the user's answer is masked in the record. Header/body disagreement and filtered listings
are checked on the wire, as a hand-written modern client sends them.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import MCPError

from helpers.clients import META, MODERN, connect, raw_post
from helpers.configs import ALICE, BOB, identity
from helpers.leaks import assert_nothing_leaked
from helpers.processes import stop
from holdgate import store

DEMO_PER_TEST = True  # approved calls change the demo's data: a fresh demo each test

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: handshake
    match: {{method: [initialize, server/discover, ping, "notifications/*", tools/list]}}
    action: allow
  - name: support refunds
    match: {{groups: [support], tool: [refund_order, get_customer, touch_customer]}}
    action: allow
  - name: support listens
    match: {{groups: [support], method: subscriptions/listen}}
    action: allow
  - name: support reads customer 1
    match: {{groups: [support], method: resources/read, resource: "customers://1"}}
    action: allow
masking:
  - name: pii
    detectors: [email, credit_card]
    strategy: redact
"""
)
# customer 1 of the demo data, and what the user types in the answer
EMAIL = "ada.lovelace@example.com"
ANSWER_EMAIL = "grace.hopper@example.com"


def start(gateway_factory, demo):
    return gateway_factory(CONFIG.format(url=demo.url), demo.url)


class User:
    """The SDK client's elicitation callback: confirms, with an email in the note."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, context, params):
        self.asked.append(params.message)
        return types.ElicitResult(
            action="accept", content={"confirm": True, "note": f"cc {ANSWER_EMAIL}"}
        )


def events_of(gw) -> list[dict[str, Any]]:
    return list(store.export_rows(gw.db))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_servers_question_is_masked_and_the_answer_masked_in_the_record(
    demo, gateway_factory, mode
):
    gw = start(gateway_factory, demo)
    user = User()
    async with connect(gw.url + "/mcp", ALICE, mode=mode, elicitation_callback=user) as client:
        result = await client.call_tool("refund_order", {"customer_id": 1})
    assert not result.is_error and result.structured_content["refunded"] is True
    (question,) = user.asked
    assert EMAIL not in question and "[REDACTED:email]" in question
    assert "[REDACTED:credit_card]" in question
    rows = events_of(gw)
    assert EMAIL not in json.dumps(rows) and ANSWER_EMAIL not in json.dumps(rows)
    if mode == "auto":  # one input_required round, then the retry, decided like any call
        calls = [r for r in rows if r["direction"] == "request" and r["target"] == "refund_order"]
        assert [(r["decision"], r["rule"]) for r in calls] == [("allow", "support refunds")] * 2
        retry = json.loads(calls[1]["extra"])
        assert "[REDACTED:email]" in json.dumps(retry["input_responses"])
        asked = [
            json.loads(r["extra"])
            for r in rows
            if r["direction"] == "response" and json.loads(r["extra"] or "{}").get("input_required")
        ]
        assert len(asked) == 1
        assert asked[0]["request_state_digest"] == retry["request_state_digest"]  # linked
    # the server got the user's real answer: masking is for the client's view and the record
    (sent,) = [
        m
        for m in demo.messages()
        if m.get("method") == "tools/call" and m["params"].get("inputResponses")
    ] or [None]
    if mode == "auto":
        assert sent is not None and ANSWER_EMAIL in json.dumps(sent)
    assert_nothing_leaked(gw, EMAIL, ANSWER_EMAIL, ALICE["X-API-Key"])


async def test_a_caller_without_the_right_is_refused_before_any_question(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    user = User()
    async with connect(gw.url + "/mcp", BOB, elicitation_callback=user) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("refund_order", {"customer_id": 1})
    assert refused.value.error.code == -32003
    assert user.asked == []  # the server never ran, so it asked nothing
    assert demo.calls_to("refund_order") == []


def tools_list(gw, who: dict[str, str]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    answer = raw_post(gw.url + "/mcp", body, {**MODERN, "Mcp-Method": "tools/list", **who})
    assert answer.status == 200, answer.body
    found: dict[str, Any] = answer.json()
    return found


async def test_filtered_listings_are_private_to_the_identity(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    listed = tools_list(gw, ALICE)["result"]
    assert {t["name"] for t in listed["tools"]} == {
        "refund_order",
        "get_customer",
        "touch_customer",
    }
    assert listed["cacheScope"] == "private"
    assert 0 <= listed["ttlMs"] <= 60_000  # the server says 0 (do not cache); kept
    assert tools_list(gw, BOB)["result"]["tools"] == []


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"Mcp-Method": "tools/list"}, "Mcp-Method"),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "run_sql"}, "Mcp-Name"),
    ],
)
async def test_headers_that_disagree_with_the_body_are_400_32020(
    demo, gateway_factory, headers, named
):
    gw = start(gateway_factory, demo)
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_customer", "arguments": {"customer_id": 1}, "_meta": META},
    }
    answer = raw_post(gw.url + "/mcp", body, {**MODERN, **ALICE, **headers})
    assert answer.status == 400
    error = answer.json()["error"]
    assert error["code"] == -32020 and named in error["message"]
    assert demo.calls_to("get_customer") == []


async def test_a_listen_stream_carries_only_what_the_caller_may_read(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    async with connect(gw.url + "/mcp", ALICE) as client:
        watched = ["customers://2", "customers://1"]
        async with client.listen(resource_subscriptions=watched) as events:
            await client.call_tool("touch_customer", {"customer_id": 2})  # not alice's to read
            await client.call_tool("touch_customer", {"customer_id": 1})
            with anyio.fail_after(10):
                first = await anext(aiter(events))
    assert str(first.uri) == "customers://1"
    stop(gw.proc)
    notes = [
        (r["decision"], r["reason"])
        for r in events_of(gw)
        if r["direction"] == "server_notification"
        and r["method"] == "notifications/resources/updated"
    ]
    assert notes == [
        ("dropped", "names a resource this identity may not read"),
        ("pass", None),
    ]
