"""TaskOwnership in process: status notifications, a store that cannot say who owns a
task, and a listing answered on a stream."""

import asyncio
import json

import pytest
from mitmproxy import http

from helpers.configs import ALICE, BOB, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    find,
    finish,
    gateway,
    json_response,
    mcp_flow,
    request_message,
    response_json,
    result,
    send,
    store_rows,
)
from holdgate.addons.audit_store import AuditStore
from holdgate.addons.enforcement import PolicyEnforcer

pytestmark = pytest.mark.anyio

EMAIL = "ada.lovelace@example.com"
CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: everyone
    match: {{groups: [support, engineering]}}
    action: allow
masking:
  - name: report pii
    tools: [report]
    detectors: [email]
    strategy: redact
"""
)


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:
        yield tctx


async def created(tctx, who, task_id):
    """`who` calls `report` as a task; the upstream answers with task `task_id`."""
    message = call("report")
    message["params"]["task"] = {"ttl": 60_000}
    flow = await send(tctx, mcp_flow(message, who))
    task = {"taskId": task_id, "status": "working", "ttl": 60_000}
    await answer(tctx, flow, json_response(result(1, {"task": task})))
    ownership = find(tctx, PolicyEnforcer).tasks
    for _ in range(200):  # the store claim runs off the loop
        if not ownership.claims:
            break
        await asyncio.sleep(0.01)
    return response_json(flow)


def status(task_id, text):
    params = {"taskId": task_id, "status": "completed", "result": {"content": [{"text": text}]}}
    return {"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": params}


async def test_status_notifications_reach_only_the_tasks_owner_masked(tctx, tmp_path):
    await created(tctx, ALICE, "t-alice")
    await created(tctx, BOB, "t-bob")
    stream = await send(tctx, mcp_flow(method="GET", headers=BOB))
    await answer(tctx, stream, http.Response.make(200, b"", {"Content-Type": "text/event-stream"}))
    sent = b""
    for message in (status("t-alice", f"mail {EMAIL}"), status("t-bob", f"mail {EMAIL}")):
        sent += b"".join(stream.response.stream(f"data: {json.dumps(message)}\n\n".encode()))
    assert b"t-alice" not in sent  # another caller's task: dropped
    assert b"t-bob" in sent and EMAIL.encode() not in sent and b"[REDACTED:email]" in sent
    finish(tctx)
    dropped = store_rows(tmp_path, "SELECT * FROM events WHERE decision = 'dropped'")
    assert [r["reason"] for r in dropped] == [
        "a status notification about a task that is not the caller's"
    ]


async def test_a_task_whose_owner_cannot_be_looked_up_is_refused(tctx, tmp_path):
    await created(tctx, ALICE, "t-1")
    find(tctx, PolicyEnforcer).tasks.known.clear()  # another replica's task: only the store knows
    find(tctx, AuditStore).store().close()  # the store is down
    flow = await send(tctx, mcp_flow(request_message("tasks/get", taskId="t-1"), ALICE))
    status_code, code, message = error_of(flow)
    assert (status_code, code) == (503, -32603)
    assert "task's owner cannot be checked" in message


async def test_a_listing_answered_on_a_stream_keeps_the_callers_tasks(tctx):
    await created(tctx, ALICE, "t-a")
    await created(tctx, BOB, "t-b")
    flow = await send(tctx, mcp_flow(request_message("tasks/list"), ALICE))
    assert flow.response is None
    await answer(tctx, flow, http.Response.make(200, b"", {"Content-Type": "text/event-stream"}))
    listing = result(1, {"tasks": [{"taskId": "t-a"}, {"taskId": "t-b"}], "nextCursor": "t-b"})
    sent = b"".join(flow.response.stream(f"data: {json.dumps(listing)}\n\n".encode()))
    assert b"t-a" in sent and b"t-b" not in sent  # bob's task, and the cursor naming it


async def test_the_creating_answer_and_later_answers_are_linked_in_the_record(tctx, tmp_path):
    await created(tctx, ALICE, "t-1")
    flow = await send(tctx, mcp_flow(request_message("tasks/result", taskId="t-1"), ALICE))
    payload = {"content": [{"text": f"mail {EMAIL}"}]}
    await answer(tctx, flow, json_response(result(1, payload)))
    assert EMAIL not in json.dumps(response_json(flow))
    finish(tctx)
    rows = store_rows(tmp_path, "SELECT * FROM events WHERE direction = 'response'")
    links = [json.loads(r["extra"])["task"] for r in rows]
    assert len(links) == 2 and links[0] == links[1]  # the creating answer and the result
    assert links[0]["tool"] == "report"
    request = store_rows(tmp_path, "SELECT * FROM events WHERE method = 'tasks/result'")[0]
    assert json.loads(request["extra"])["task"] == links[0]


async def test_a_status_notification_right_after_the_creating_answer_reaches_its_owner(tctx):
    message = call("report")
    message["params"]["task"] = {"ttl": 60_000}
    flow = await send(tctx, mcp_flow(message, ALICE))
    await answer(tctx, flow, http.Response.make(200, b"", {"Content-Type": "text/event-stream"}))
    created = result(1, {"task": {"taskId": "t-new", "status": "working"}})
    sent = b""
    for event in (created, status("t-new", f"mail {EMAIL}")):
        sent += b"".join(flow.response.stream(f"data: {json.dumps(event)}\n\n".encode()))
    assert sent.count(b"t-new") == 2 and EMAIL.encode() not in sent


async def test_input_sent_to_a_task_is_recorded_masked_with_its_tools_profiles(tctx, tmp_path):
    await created(tctx, ALICE, "t-1")
    update = request_message(
        "tasks/update", taskId="t-1", inputResponses={"mail": {"action": "accept", "to": EMAIL}}
    )
    flow = await send(tctx, mcp_flow(update, ALICE))
    assert flow.response is None  # forwarded: alice's own task
    await answer(tctx, flow, json_response(result(1, {"resultType": "complete"})))
    finish(tctx)
    (row,) = store_rows(tmp_path, "SELECT * FROM events WHERE method = 'tasks/update'")[:1]
    assert EMAIL not in row["extra"] and "[REDACTED:email]" in row["extra"]
