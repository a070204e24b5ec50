"""PolicyEnforcer in process: every JSON-RPC message decided; only allowed ones leave.

Driven through Router and Authentication (which find the upstream and the caller), as in
the gateway; the outcome is read where a client or mitmweb reads it: the response, the
forwarded body, `flow.comment` and `flow.marked`.
"""

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.configs import ALICE, BOB, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    find,
    gateway,
    json_response,
    mcp_flow,
    response_json,
    result,
    send,
)
from holdgate.addons.audit_store import AuditStore
from holdgate.addons.authentication import Authentication
from holdgate.addons.enforcement import PolicyEnforcer
from holdgate.addons.recorder import Recorder
from holdgate.addons.router import Router

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
    reason: shell access is not granted
  - name: support reads
    match: {{groups: [support], tool: "get_*"}}
    action: allow
  - name: support searches
    match: {{groups: [support], tool: search}}
    action: allow
    limit: 2/min
  - name: listing
    match: {{method: [tools/list, ping]}}
    action: allow
  - name: sql needs a dba
    match: {{tool: run_sql}}
    action: approve
    approvers: [dba]
"""
)


@pytest.fixture
def tctx(tmp_path):
    # the Recorder owns the store, where rate limits are counted
    with gateway(tmp_path, CONFIG, Router, Authentication, PolicyEnforcer, Recorder) as tctx:
        yield tctx


async def test_an_allowed_call_leaves_as_decided_with_comment_and_marker(tctx):
    flow = await send(tctx, mcp_flow(call("get_customer", {"id": 1}), ALICE))
    assert flow.response is None
    assert json.loads(flow.request.content) == call("get_customer", {"id": 1})
    assert flow.request.headers["accept-encoding"] == "identity"
    assert flow.comment == "holdgate: alice tools/call get_customer: allow (rule 'support reads')"
    assert flow.marked == ":white_check_mark:"


async def test_a_denied_call_is_answered_32003_naming_the_rule(tctx):
    flow = await send(tctx, mcp_flow(call("exec_shell", msg_id=7), ALICE))
    assert flow.response.status_code == 200  # a JSON-RPC error; the session survives
    body = response_json(flow)
    assert body["id"] == 7 and body["error"]["code"] == -32003
    assert body["error"]["message"] == ("denied by rule 'no shell': shell access is not granted")
    assert flow.marked == ":no_entry:"


async def test_what_no_rule_allows_is_denied(tctx):
    flow = await send(tctx, mcp_flow(call("get_customer"), BOB))  # bob is no support
    assert response_json(flow)["error"]["code"] == -32003
    assert "default-deny" in response_json(flow)["error"]["message"]


async def test_a_call_needing_approval_is_marked_and_not_cleared(tctx):
    flow = await send(tctx, mcp_flow(call("run_sql", {"query": "DELETE"}), ALICE))
    assert flow.response is None  # the ApprovalHolds decide; without them the Gate refuses
    assert flow.marked == ":hourglass:"
    assert "tools/call run_sql: hold (rule 'sql needs a dba'" in flow.comment


async def test_a_batch_leaves_without_its_denied_message_whose_error_joins_the_answer(tctx):
    batch = [call("get_customer", msg_id=1), call("exec_shell", msg_id=2)]
    flow = await send(tctx, mcp_flow(batch, ALICE))
    assert flow.response is None
    assert json.loads(flow.request.content) == [batch[0]]  # exec_shell never leaves
    assert flow.marked == ":no_entry:"
    assert "tools/call exec_shell: deny (rule 'no shell')" in flow.comment


async def test_a_batch_whose_requests_share_an_id_is_400(tctx):
    batch = [call("get_customer", msg_id=1), {"jsonrpc": "2.0", "id": 1, "method": "ping"}]
    status, _, message = error_of(await send(tctx, mcp_flow(batch, ALICE)))
    assert status == 400 and "share the id 1" in message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_a","name":"exec_b"}}',
            -32700,
        ),
        (b'{"jsonrpc":"2.0","id":1}', -32600),
        (b"[]", -32600),
    ],
)
async def test_a_malformed_body_is_400_and_never_decided(tctx, body, code):
    flow = await send(tctx, mcp_flow(body, ALICE))
    status, got, _ = error_of(flow)
    assert (status, got) == (400, code)


async def test_routing_headers_must_agree_with_the_body(tctx):
    headers = {**ALICE, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
    flow = mcp_flow(call("exec_shell"), {**headers, "Mcp-Name": "get_customer"})
    status, code, message = error_of(await send(tctx, flow))
    assert (status, code) == (400, -32020) and "Mcp-Name" in message


async def test_a_rate_limit_denies_the_call_over_it(tctx):
    codes = []
    for msg_id in range(3):
        flow = await send(tctx, mcp_flow(call("search", msg_id=msg_id), ALICE))
        codes.append(response_json(flow)["error"]["code"] if flow.response else None)
    assert codes == [None, None, -32005]


async def test_a_store_that_cannot_count_refuses_limited_calls_only(tctx):
    find(tctx, AuditStore).store().close()  # the store is down: no statement runs on it
    limited = await send(tctx, mcp_flow(call("search", msg_id=1), ALICE))
    status, code, message = error_of(limited)
    assert (status, code) == (503, -32603)
    assert "rate limit of rule 'support searches' cannot be checked" in message
    assert "audit store is unavailable" in message
    unlimited = await send(tctx, mcp_flow(call("get_customer", msg_id=2), ALICE))
    assert unlimited.response is None  # no counter involved: decided as before


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_get_and_delete_carry_no_call_and_pass(tctx, method):
    flow = await send(tctx, mcp_flow(None, ALICE, method=method))
    assert flow.response is None


async def test_other_http_methods_are_405(tctx):
    status, _, message = error_of(await send(tctx, mcp_flow(call("x"), ALICE, method="PUT")))
    assert status == 405 and "not part of MCP" in message


async def test_a_listing_shows_only_what_the_caller_may_use(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:  # every addon: Responses runs the policy stage
        flow = await send(
            tctx, mcp_flow({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, ALICE)
        )
        tools = [{"name": n} for n in ("get_customer", "exec_shell", "delete_all", "search")]
        await answer(tctx, flow, json_response(result(3, {"tools": tools})))
    listed = [t["name"] for t in response_json(flow)["result"]["tools"]]
    assert listed == ["get_customer", "search"]


async def test_explain_logs_every_rule_considered(tctx, caplog):
    flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
    with caplog.at_level(logging.WARNING, logger="holdgate"):
        find(tctx, PolicyEnforcer).explain([flow])
    assert "skip  rule 'no shell'" in caplog.text
    assert "MATCH rule 'support reads'" in caplog.text
    assert "decision: allow by 'support reads'" in caplog.text


EXPLAINED = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: reads by email
    match: {{tool: find, args: {{"$.email": {{regex: "[a-z]+@example[.]org"}}}}}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    exempt_groups: [support]
"""
)


async def test_explain_logs_argument_values_only_as_the_record_keeps_them(tmp_path, caplog):
    """The log is no place for a clear value, exempt caller or not: the value is shown masked
    with the condition it failed."""
    with gateway(tmp_path, EXPLAINED, Router, Authentication, PolicyEnforcer, Recorder) as tctx:
        flow = await send(tctx, mcp_flow(call("find", {"email": "ann@example.com"}), ALICE))
        with caplog.at_level(logging.WARNING, logger="holdgate"):
            find(tctx, PolicyEnforcer).explain([flow])
    assert "ann@example.com" not in caplog.text
    assert (
        'FAIL args: args $.email: "[REDACTED:email]" does not match regex '
        "'[a-z]+@example[.]org'" in caplog.text
    )


@pytest.fixture
def sync_tctx(tmp_path):
    with gateway(tmp_path, CONFIG, Router, Authentication, PolicyEnforcer) as tctx:
        yield tctx


TOOLS = ["exec_shell", "get_customer", "other", "Get_x", "ping"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(st.lists(st.sampled_from(TOOLS), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_a_batch_is_decided_as_its_messages_alone_in_any_order(sync_tctx, tools, rng):
    def sent(body):
        return sync_tctx.master.event_loop.run_until_complete(
            send(sync_tctx, mcp_flow(body, ALICE))
        )

    def forwarded(flow) -> set:
        if flow.response is not None:
            return set()
        value = json.loads(flow.request.content)
        return {m["id"] for m in (value if isinstance(value, list) else [value])}

    messages = [
        {"jsonrpc": "2.0", "id": i, "method": "ping"} if tool == "ping" else call(tool, msg_id=i)
        for i, tool in enumerate(tools)
    ]
    alone = {m["id"] for m in messages if forwarded(sent(m))}
    assert forwarded(sent(messages)) == alone
    rng.shuffle(messages)
    assert forwarded(sent(messages)) == alone


LISTED = [{"name": "get_customer"}, {"name": "exec_shell"}]


@pytest.mark.parametrize(
    ("version", "upstream_ttl", "sent_ttl"),
    [
        ("2026-07-28", 3_600_000, 60_000),
        ("2026-07-28", 5_000, 5_000),
        ("2026-07-28", None, 60_000),
        ("2026-07-28", True, 60_000),
        ("2026-07-28", -1, 60_000),
    ],
)
async def test_a_modern_listing_is_private_and_cached_no_longer_than_the_cap(
    tmp_path, version, upstream_ttl, sent_ttl
):
    with gateway(tmp_path, CONFIG) as tctx:
        request = mcp_flow(
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            {**ALICE, "MCP-Protocol-Version": version},
        )
        flow = await send(tctx, request)
        listing: dict[str, object] = {"tools": LISTED, "cacheScope": "shared"}
        if upstream_ttl is not None:
            listing["ttlMs"] = upstream_ttl
        await answer(tctx, flow, json_response(result(3, listing)))
    sent = response_json(flow)["result"]
    assert sent["cacheScope"] == "private"  # one identity's filtered list
    assert sent["ttlMs"] == sent_ttl
    assert [t["name"] for t in sent["tools"]] == ["get_customer"]


async def test_an_older_client_gets_no_caching_fields(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:
        request = mcp_flow(
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            {**ALICE, "MCP-Protocol-Version": "2025-06-18"},
        )
        flow = await send(tctx, request)
        await answer(tctx, flow, json_response(result(3, {"tools": LISTED})))
    assert set(response_json(flow)["result"]) == {"tools"}


async def test_listing_ttl_is_configurable(tmp_path):
    with gateway(tmp_path, CONFIG + "listing_ttl: 5s\n") as tctx:
        request = mcp_flow(
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            {**ALICE, "MCP-Protocol-Version": "2026-07-28"},
        )
        flow = await send(tctx, request)
        await answer(tctx, flow, json_response(result(3, {"tools": LISTED, "ttlMs": 90_000})))
    assert response_json(flow)["result"]["ttlMs"] == 5_000
