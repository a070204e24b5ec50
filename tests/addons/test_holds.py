"""ApprovalHolds in process: a call a rule sends to a human waits, then leaves only if a
permitted approver says yes; denial, expiry and edits while held are refusals."""

import asyncio
import json

import pytest
from mitmproxy.flow import Error

from helpers.configs import ALICE, BOB, DANA, identity
from helpers.flows import UPSTREAM_URL, call, find, gateway, mcp_flow, response_json, send
from holdgate.addons.admin_api import AdminApi
from holdgate.addons.holds import ApprovalHolds
from holdgate.approvals.adminhttp import AdminRequest

pytestmark = pytest.mark.anyio

DELETE = {"query": "DELETE FROM orders WHERE id = 1"}
CONFIG = (
    "version: 1\n"
    + identity("alice", "bob", "dana")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: destructive SQL needs a DBA
    match: {{tool: run_sql}}
    action: approve
    approvers: [dba]
    timeout: {{timeout}}
"""
)


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG.replace("{timeout}", "30s")) as tctx:
        yield tctx


async def admin(tctx, method, path, who, body=None):
    """One request through the admin listener's route table, in process."""
    headers = {name.lower(): [value] for name, value in who.items()}
    data = json.dumps(body).encode() if body is not None else b""
    api = find(tctx, AdminApi)
    return await api.handle(AdminRequest(method, path, headers, data, "127.0.0.1"))


async def run(holds):
    """The running hook (it also starts the sweep that sees holds expire or resumed), and
    its start-up, which closes holds left by a previous run, done: a hold created before
    that would be expired with them (the gateway has the same window at start)."""
    holds.running()
    await asyncio.wait_for(holds._tasks[0], 10)


async def held(tctx):
    """Start the holds (as the gateway's running hook does), send the DELETE, and return
    the pending send and its approval id once it waits."""
    holds = find(tctx, ApprovalHolds)
    await run(holds)
    flow = mcp_flow(call("run_sql", DELETE), ALICE)
    sending = asyncio.create_task(send(tctx, flow))
    for _ in range(200):  # 10 s at most
        listing = await admin(tctx, "GET", "/approvals", DANA)
        if listing.payload:
            return flow, sending, listing.payload[0]["approval_id"]
        await asyncio.sleep(0.05)
    raise AssertionError("the call was never held")


async def test_a_held_call_leaves_unchanged_once_an_approver_agrees(tctx):
    flow, sending, approval = await held(tctx)
    assert flow.intercepted and flow.response is None and not sending.done()
    approved = await admin(tctx, "POST", f"/approvals/{approval}/approve", DANA, {})
    assert approved.status == 200
    await asyncio.wait_for(sending, 10)
    assert flow.response is None and not flow.intercepted
    assert json.loads(flow.request.content) == call("run_sql", DELETE)
    record = await admin(tctx, "GET", f"/approvals/{approval}", DANA)
    assert (record.payload["state"], record.payload["decider"]) == ("approved", "dana")
    # JSON columns as JSON, not strings inside JSON
    assert record.payload["approvers"] == ["dba"]
    assert record.payload["args_masked"] == DELETE
    assert record.payload["channel"] == "api"
    assert record.payload["decided_as"]["key"] == "dana"
    assert record.payload["history"][0]["approvers"] == ["dba"]


async def test_the_requester_and_non_approvers_cannot_decide(tctx):
    flow, sending, approval = await held(tctx)
    own = await admin(tctx, "POST", f"/approvals/{approval}/approve", ALICE, {})
    assert own.status == 403 and "separation of duties" in own.payload["error"]
    other = await admin(tctx, "POST", f"/approvals/{approval}/approve", BOB, {})
    assert other.status == 404  # bob is no DBA: not even shown
    wrong_key = await admin(tctx, "GET", "/approvals", {"X-API-Key": "nope"})
    assert wrong_key.status == 401  # as clear as the MCP endpoint's answer
    assert wrong_key.payload["error"].startswith("unauthorized: unknown API key; authenticate")
    no_key = await admin(tctx, "GET", "/approvals", {})
    assert no_key.payload["error"].startswith("unauthorized: no credentials; authenticate")
    assert not sending.done()  # still waiting
    await admin(tctx, "POST", f"/approvals/{approval}/deny", DANA, {"reason": "no"})
    await asyncio.wait_for(sending, 10)


async def test_a_denied_call_is_answered_32004_naming_who(tctx):
    flow, sending, approval = await held(tctx)
    await admin(tctx, "POST", f"/approvals/{approval}/deny", DANA, {"reason": "not today"})
    await asyncio.wait_for(sending, 10)
    error = response_json(flow)["error"]
    assert error["code"] == -32004
    assert "denied by dana: not today" in error["message"]


async def test_a_request_edited_while_held_is_void(tctx):
    flow, sending, approval = await held(tctx)
    flow.request.content = json.dumps(call("run_sql", {"query": "DELETE FROM orders"})).encode()
    await admin(tctx, "POST", f"/approvals/{approval}/approve", DANA, {})
    await asyncio.wait_for(sending, 10)
    error = response_json(flow)["error"]
    assert error["code"] == -32004 and "approval void" in error["message"]


async def test_nobody_deciding_in_time_is_expiry(tmp_path):
    with gateway(tmp_path, CONFIG.replace("{timeout}", "1s")) as tctx:
        flow, sending, approval = await held(tctx)
        await asyncio.wait_for(sending, 15)
        error = response_json(flow)["error"]
        assert error["code"] == -32004 and "expired" in error["message"]
        record = await admin(tctx, "GET", f"/approvals/{approval}", DANA)
        assert record.payload["state"] == "expired"


async def test_resuming_the_flow_in_mitmweb_is_the_named_operators_decision(tmp_path):
    config = CONFIG.replace("{timeout}", "30s")
    with gateway(tmp_path, config, holdgate_mitmweb_operator="dana") as tctx:
        flow, sending, approval = await held(tctx)
        flow.resume()  # mitmweb's Resume button
        await asyncio.wait_for(sending, 10)
        assert flow.response is None
        record = await admin(tctx, "GET", f"/approvals/{approval}", DANA)
        assert (record.payload["state"], record.payload["decider"]) == ("approved", "dana")
        assert record.payload["channel"] == "mitmweb"
        assert record.payload["decided_as"] == {
            "via": "console",
            "user": "dana",
            "groups": ["dba", "engineering"],
            "qualified_by": "dba",
        }


@pytest.mark.parametrize(
    ("operator", "why"),
    [
        ("", "holdgate_mitmweb_operator is not set"),
        ("mallory", "names no API key"),
        ("bob", "bob is not in the approver groups"),
        ("alice", "separation of duties"),
    ],
)
@pytest.mark.parametrize("button", ["resume", "kill"])
async def test_a_mitmweb_button_without_a_permitted_operator_leaves_the_call_held(
    tmp_path, caplog, operator, why, button
):
    config = CONFIG.replace("{timeout}", "30s")
    with gateway(tmp_path, config, holdgate_mitmweb_operator=operator) as tctx:
        flow, sending, approval = await held(tctx)
        getattr(flow, button)()
        for _ in range(100):  # the sweep sees the button and puts the flow back on hold
            await asyncio.sleep(0.05)
            if flow.intercepted and why in caplog.text:
                break
        assert flow.intercepted and flow.error is None and not sending.done()
        assert f"holdgate approvals approve|deny {approval}" in caplog.text
        record = await admin(tctx, "GET", f"/approvals/{approval}", DANA)
        assert record.payload["state"] == "pending"
        # still decidable the proper way, and the call then leaves
        await admin(tctx, "POST", f"/approvals/{approval}/approve", DANA, {})
        await asyncio.wait_for(sending, 10)
        assert flow.response is None and not flow.intercepted


async def test_a_flow_failing_while_held_is_never_the_operators_decision(tmp_path):
    config = CONFIG.replace("{timeout}", "30s")
    with gateway(tmp_path, config, holdgate_mitmweb_operator="dana") as tctx:
        flow, sending, approval = await held(tctx)
        flow.error = Error("connection closed")  # not mitmweb's Kill
        await asyncio.wait_for(sending, 10)
        record = await admin(tctx, "GET", f"/approvals/{approval}", DANA)
        assert (record.payload["state"], record.payload["decider"]) == ("cancelled", None)
        assert record.payload["reason"] == "the flow failed: connection closed"
