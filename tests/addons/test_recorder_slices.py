"""Recorder in process, on an event stream: its notifications are gathered into one row per
time slice (`holdgate.store.event_slices`), written before any other row of the stream so
the store keeps its order, at the slice's time limit, when the stream ends, is cut or
killed, and at shutdown; masked values never in it; a failing store still ends the stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpResponseHook

from helpers.configs import ALICE, CAROL, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    fail,
    find,
    finish,
    gateway,
    mcp_flow,
    send,
    store_rows,
)
from holdgate.addons.audit_store import AuditStore
from holdgate.addons.flowstate import state
from holdgate.store.event_slices import SLICE_EVENTS, SLICE_SECONDS, recorded_messages

pytestmark = pytest.mark.anyio

TOKEN = "slice-test-token-4c1e"
EMAIL = "grace.hopper@example.com"
CONFIG = (
    "version: 1\n"
    + identity("alice", "carol")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
    inject:
      headers: {{Authorization: "Bearer {TOKEN}"}}
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
    exempt_groups: [compliance]
"""
)
EVENTS = "select * from events order by seq"


def progress(i: int, **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": "p", "progress": i, **params},
    }


def event(message: Any) -> bytes:
    return f"event: message\ndata: {json.dumps(message)}\n\n".encode()


async def streaming(tctx, caller: dict[str, str] = ALICE) -> http.HTTPFlow:
    """A call answered by an event stream, its headers passed (events not yet)."""
    flow = await send(tctx, mcp_flow(call("search", {"q": "x"}), caller))
    await answer(tctx, flow, http.Response.make(200, b"", {"Content-Type": "text/event-stream"}))
    assert callable(flow.response.stream)
    return flow


def stream(flow: http.HTTPFlow, *messages: Any) -> bytes:
    return b"".join(b"".join(flow.response.stream(event(m))) for m in messages)


async def end(tctx, flow: http.HTTPFlow) -> None:
    flow.response.stream(b"")
    await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))


def stream_rows(tmp_path) -> list[dict[str, Any]]:
    return [r for r in store_rows(tmp_path, EVENTS) if r["direction"] != "request"]


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:
        yield tctx


async def test_a_streams_notifications_are_rows_per_slice_in_order_each_findable(tctx, tmp_path):
    flow = await streaming(tctx)
    count = SLICE_EVENTS + 20
    stream(flow, *(progress(i) for i in range(count)))
    stream(flow, {"jsonrpc": "2.0", "id": 1, "result": {"content": []}})
    await end(tctx, flow)
    finish(tctx)
    rows = stream_rows(tmp_path)
    assert [(r["direction"], r["method"]) for r in rows] == [
        ("server_notification", "notifications/progress"),  # full at its count
        ("server_notification", "notifications/progress"),  # the rest, before the answer
        ("response", "tools/call"),
        ("outcome", "tools/call"),
    ]
    assert all(r["flow_id"] == flow.id and r["session_id"] for r in rows)
    messages = [m for r in rows[:3] for m in recorded_messages(r)]
    assert [m.n for m in messages] == list(range(1, count + 2))  # every message, numbered
    assert [m.message["params"]["progress"] for m in messages[:-1]] == list(range(count))
    assert len(json.loads(rows[0]["extra"])["events"]) == SLICE_EVENTS
    assert messages[-1].message["id"] == 1 and messages[-1].seq == rows[2]["seq"]


async def test_masked_and_injected_values_are_never_in_a_slice_row(tctx, tmp_path):
    flow = await streaming(tctx)
    sent = stream(
        flow,
        progress(0, message=f"mail {EMAIL}"),
        progress(1, message=f"echo Bearer {TOKEN}"),  # the upstream reflects its credential
        progress(2, message=f"again {EMAIL} and {EMAIL}"),
    )
    assert EMAIL.encode() not in sent and TOKEN.encode() not in sent
    await end(tctx, flow)
    finish(tctx)
    rows = stream_rows(tmp_path)
    assert EMAIL not in json.dumps(rows) and TOKEN not in json.dumps(rows)
    (batch,) = [r for r in rows if r["direction"] == "server_notification"]
    assert json.loads(batch["masked"])["email"] == 3  # counted as the events were
    messages = recorded_messages(batch)
    assert messages[0].masked == {"email": 1} and messages[2].masked == {"email": 2}
    assert "[REDACTED:email]" in messages[0].message["params"]["message"]


async def test_an_exempt_callers_cleartext_is_masked_in_the_slice_row(tctx, tmp_path):
    """Carol may see the email, the record never keeps it: not in the message, not in the
    progress token its entry names."""
    flow = await streaming(tctx, CAROL)
    message = progress(0, message=f"mail {EMAIL}")
    message["params"]["progressToken"] = f"job-for-{EMAIL}"
    assert EMAIL.encode() in stream(flow, message)  # exempt: cleartext to her
    await end(tctx, flow)
    finish(tctx)
    (batch,) = [r for r in stream_rows(tmp_path) if r["direction"] == "server_notification"]
    assert EMAIL not in json.dumps(batch)
    (recorded,) = recorded_messages(batch)
    assert recorded.details["exempted"] and "[REDACTED:email]" in recorded.details["progress_token"]


async def test_a_slice_is_written_at_its_time_limit_while_the_stream_goes_quiet(tctx, tmp_path):
    flow = await streaming(tctx)
    stream(flow, progress(0), progress(1))
    await asyncio.sleep(SLICE_SECONDS + 0.2)  # the stream is quiet: the slice is written
    stream(flow, progress(2))
    await end(tctx, flow)
    finish(tctx)
    rows = [r for r in stream_rows(tmp_path) if r["direction"] == "server_notification"]
    assert [[m.n for m in recorded_messages(r)] for r in rows] == [[1, 2], [3]]


async def test_a_stream_cut_mid_slice_still_writes_its_slice(tctx, tmp_path):
    flow = await streaming(tctx)
    stream(flow, progress(0), progress(1))
    await fail(tctx, flow, "connection reset by peer")  # the upstream went away
    finish(tctx)
    rows = stream_rows(tmp_path)
    assert [r["direction"] for r in rows] == ["server_notification", "outcome"]
    assert [m.n for m in recorded_messages(rows[0])] == [1, 2]


async def test_shutdown_writes_a_slice_still_open(tctx, tmp_path):
    flow = await streaming(tctx)
    stream(flow, progress(0))
    finish(tctx)  # the gateway stops while the stream is open
    (row,) = stream_rows(tmp_path)
    assert [m.message for m in recorded_messages(row)] == [progress(0)]


async def test_a_dropped_notification_has_its_own_row_after_the_slice_before_it(tctx, tmp_path):
    flow = await streaming(tctx)
    ambiguous = {
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": {"uri": ["crm://customers/1"]},  # which resource? dropped
    }
    sent = stream(flow, progress(0), ambiguous, progress(2))
    assert b"customers/1" not in sent
    await end(tctx, flow)
    finish(tctx)
    rows = [r for r in stream_rows(tmp_path) if r["direction"] == "server_notification"]
    decisions = [(r["decision"], [m.n for m in recorded_messages(r)]) for r in rows]
    assert decisions == [("pass", [1]), ("dropped", [2]), ("pass", [3])]
    assert rows[1]["reason"] and rows[1]["method"] == "notifications/resources/updated"


async def test_a_failing_store_cuts_the_stream_at_the_next_event(tctx, tmp_path):
    """audit: required (the default): an event that cannot be recorded never goes out, as
    with a row per event; the slice is no buffer that outlives the store."""
    flow = await streaming(tctx)
    assert b"progress" in stream(flow, progress(0))
    writer = find(tctx, AuditStore).writer
    assert writer is not None
    writer.healthy = False  # the store has failed
    sent = stream(flow, progress(1, secret="never-out"))
    assert b"never-out" not in sent and b"the gateway cut this stream" in sent
    assert state(flow).stream_cut is not None


async def test_a_slice_that_cannot_be_queued_at_its_time_limit_ends_the_stream(tctx, tmp_path):
    flow = await streaming(tctx)
    stream(flow, progress(0))
    writer = find(tctx, AuditStore).writer
    assert writer is not None
    writer.submit_all = lambda rows: False  # type: ignore[method-assign]  # a full queue
    await asyncio.sleep(SLICE_SECONDS + 0.2)
    assert state(flow).stream_cut == {
        "type": "RuntimeError",
        "message": "the audit store queue is full or failing",
    }
    assert flow.error is not None  # killed: nothing more goes out
