"""Gate in process: nothing leaves uncleared nor before its decision is on record;
credentials are injected only for the server the config names, and masked in the flow once
the request has left."""

import asyncio
import json
import sqlite3

import pytest

from helpers.configs import ALICE, DANA, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    find,
    gateway,
    json_response,
    mcp_flow,
    result,
    send,
)
from holdgate.addons.admin_api import AdminApi
from holdgate.addons.authentication import Authentication
from holdgate.addons.enforcement import PolicyEnforcer
from holdgate.addons.gate import Gate
from holdgate.addons.holds import ApprovalHolds
from holdgate.addons.recorder import Recorder
from holdgate.addons.router import Router
from holdgate.approvals.adminhttp import AdminRequest
from holdgate.credentials import CredentialBroker

pytestmark = pytest.mark.anyio

TOKEN = "gate-test-upstream-token-31f7"
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
    inject:
      headers: {{Authorization: "Bearer {TOKEN}"}}
rules:
  - name: reads
    match: {{tool: "get_*"}}
    action: allow
  - name: sql needs a dba
    match: {{tool: run_sql}}
    action: approve
    approvers: [dba]
"""
)


class Redirect:
    """Stands for anything that changes where a decided request goes (a script, an edit
    in mitmweb) between the policy and the Gate."""

    def request(self, flow):
        flow.request.host = "evil.example.test"


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG, Router, Authentication, PolicyEnforcer, Gate, Recorder) as tctx:
        yield tctx


async def test_a_cleared_request_leaves_with_the_upstreams_credential(tctx):
    flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
    assert flow.response is None
    assert flow.request.headers["Authorization"] == f"Bearer {TOKEN}"
    await answer(tctx, flow, json_response(result(1, {})))
    # once it has left, the flow (held, shown, saved) no longer carries it
    assert flow.request.headers["Authorization"] == "[injected by holdgate]"


async def test_a_flow_no_addon_routed_is_refused(tmp_path):
    with gateway(tmp_path, CONFIG, Gate) as tctx:  # nothing before the Gate
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
    status, code, message = error_of(flow)
    assert (status, code) == (502, -32603)
    assert "not cleared (no upstream)" in message
    assert "authorization" not in flow.request.headers


async def test_a_routed_but_undecided_flow_is_refused(tmp_path):
    with gateway(tmp_path, CONFIG, Router, Authentication, Gate) as tctx:  # no policy
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
    status, _, message = error_of(flow)
    assert status == 502 and "not cleared (no identity or decision)" in message
    assert "authorization" not in flow.request.headers


async def test_a_call_waiting_for_approval_never_passes_without_the_holds(tctx):
    flow = await send(tctx, mcp_flow(call("run_sql", {"query": "DELETE"}), ALICE))
    status, _, message = error_of(flow)
    assert status == 502 and "not cleared" in message
    assert "authorization" not in flow.request.headers


async def test_no_credential_goes_to_a_server_the_config_does_not_name(tmp_path):
    chain = (Router, Authentication, PolicyEnforcer, Gate)
    with gateway(tmp_path, CONFIG, *chain, before=(Gate, Redirect())) as tctx:
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
    status, _, message = error_of(flow)
    assert status == 502
    assert "not addressed to the server the config names for it" in message
    assert "authorization" not in flow.request.headers
    assert TOKEN not in str(flow.request.headers)


# --- the write-ahead: the decision on record before anything leaves --------------------


def committed(tmp_path, sql):
    """Rows as another process sees them now (committed, nothing flushed)."""
    with sqlite3.connect(tmp_path / "audit.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql)]


class FailingWriteAhead:
    """A write-ahead that cannot record: the Gate must not let the request leave."""

    async def write_ahead(self, flow):
        raise OSError("no space left on device")


async def test_a_request_whose_record_fails_is_refused_without_its_credential(tmp_path):
    gate = Gate(FailingWriteAhead().write_ahead, CredentialBroker(), lambda config: b"k" * 32)
    with gateway(tmp_path, CONFIG, Router, Authentication, PolicyEnforcer) as tctx:
        tctx.master.addons.add(gate)
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
    status, _, message = error_of(flow)
    assert status == 502 and "request was not forwarded" in message
    assert "authorization" not in flow.request.headers


async def test_a_held_call_is_on_record_before_it_is_held_and_released(tmp_path):
    config = CONFIG.replace(identity("alice"), identity("alice", "dana"))
    with gateway(tmp_path, config) as tctx:
        holds = find(tctx, ApprovalHolds)
        holds.running()
        await asyncio.wait_for(holds._tasks[0], 10)
        flow = mcp_flow(call("run_sql", {"query": "DELETE FROM t"}), ALICE)
        sending = asyncio.create_task(send(tctx, flow))
        for _ in range(200):
            if flow.intercepted:
                break
            await asyncio.sleep(0.05)
        assert flow.intercepted
        # held: its approval row is committed, so whoever may approve it sees it
        (pending,) = committed(tmp_path, "select * from approvals")
        assert (pending["state"], pending["flow_id"]) == ("pending", flow.id)
        assert committed(tmp_path, "select * from events where direction = 'request'") == []
        decided = await find(tctx, AdminApi).handle(
            AdminRequest(
                "POST",
                f"/approvals/{pending['approval_id']}/approve",
                {"x-api-key": [DANA["X-API-Key"]]},
                b"{}",
                "127.0.0.1",
            )
        )
        assert decided.status == 200
        await asyncio.wait_for(sending, 10)
        assert flow.response is None  # it leaves now, and its release is already on record
        (row,) = committed(tmp_path, "select * from events where direction = 'request'")
        assert (row["decision"], row["approval_id"]) == ("approve", pending["approval_id"])
        approval = json.loads(row["extra"])["approval"]
        assert (approval["state"], approval["decider"], approval["channel"]) == (
            "approved",
            "dana",
            "api",
        )
        assert approval["decided_as"]["qualified_by"] == "dba"
