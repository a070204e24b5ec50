"""Traces from a real gateway to an OTLP/HTTP receiver started here: the client's trace
is continued, the upstream is told the gateway's span, the audit row names it; off by
default; a receiver that is down costs the clients nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from helpers.clients import raw_post
from helpers.configs import ALICE, identity
from helpers.flows import call
from helpers.otlp import OtlpReceiver, ReceivedSpan
from helpers.processes import Gateway, free_port, stop
from helpers.upstreams import FakeUpstream, Reply, Request, result_for

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: crm
    url: {url}
rules:
  - name: reads
    match: {{tool: ["get_*"]}}
    action: allow
  - name: no shell
    match: {{tool: ["exec_*"]}}
    action: deny
"""
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SECRET_ARGUMENT = "hunter2-do-not-trace"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver().start()
    yield started
    started.stop()


def answer(request: Request) -> Reply:
    return result_for(request, {"content": [{"type": "text", "text": "ok"}]})


def start(
    gateway_factory: Callable[..., Gateway], upstream: FakeUpstream, endpoint: str | None
) -> Gateway:
    env = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "holdgate-test"}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    return gateway_factory(CONFIG.format(url=upstream.url), upstream.url, env=env)


async def post(url: str, body: Any, headers: dict[str, str]) -> Any:
    return await anyio.to_thread.run_sync(lambda: raw_post(url, body, headers))


async def spans_of(receiver: OtlpReceiver, count: int) -> list[ReceivedSpan]:
    with anyio.fail_after(20):
        while len(receiver.spans) < count:
            await anyio.sleep(0.1)
    return receiver.spans


def request_rows(gw: Gateway) -> list[dict[str, Any]]:
    with sqlite3.connect(gw.db) as db:
        found = db.execute(
            "select target, traceparent, extra from events where direction = 'request'"
        ).fetchall()
    return [{"target": t, "traceparent": p, "extra": json.loads(e)} for t, p, e in found]


async def test_the_clients_trace_is_continued_and_passed_to_the_upstream(
    gateway_factory, fake_upstream, receiver
):
    upstream = fake_upstream(answer)
    gw = start(gateway_factory, upstream, receiver.endpoint)
    headers = {**ALICE, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    response = await post(gw.url + "/mcp", call("get_customer", {"q": SECRET_ARGUMENT}), headers)
    assert "result" in response.json()
    (span,) = await spans_of(receiver, 1)
    assert span.trace_id == TRACE_ID and span.parent_span_id == PARENT_ID
    assert span.name == "tools/call get_customer"
    assert span.kind == 2  # SERVER
    assert span.service == "holdgate-test"
    assert span.attributes["mcp.method.name"] == "tools/call"
    assert span.attributes["gen_ai.tool.name"] == "get_customer"
    assert span.attributes["gen_ai.operation.name"] == "execute_tool"
    assert span.attributes["holdgate.decision"] == "allow"
    assert span.attributes["holdgate.rule"] == "reads"
    assert span.attributes["holdgate.upstream"] == "crm"
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["jsonrpc.request.id"] == "1"
    # the upstream's request is a child of the gateway's span, in the client's trace
    sent = upstream.received[-1].headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{span.span_id}-01"
    # and the audit row names the same span
    with anyio.fail_after(10):
        while not (rows := [r for r in request_rows(gw) if r["target"] == "get_customer"]):
            await anyio.sleep(0.1)
    assert rows[0]["extra"]["trace"] == sent
    # no argument, header value or key in any span
    for secret in (SECRET_ARGUMENT, ALICE["X-API-Key"], "alice"):
        assert secret.encode() not in span.raw


async def test_meta_traceparent_is_continued_and_a_denial_is_an_error_span(
    gateway_factory, fake_upstream, receiver
):
    upstream = fake_upstream(answer)
    gw = start(gateway_factory, upstream, receiver.endpoint)
    message = call("exec_shell", {"command": "id"})
    message["params"]["_meta"] = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    assert "error" in (await post(gw.url + "/mcp", message, ALICE)).json()
    (span,) = await spans_of(receiver, 1)
    assert span.trace_id == TRACE_ID and span.parent_span_id == PARENT_ID
    assert span.attributes["holdgate.decision"] == "deny"
    assert span.attributes["holdgate.rule"] == "no shell"
    assert span.attributes["error.type"] == "denied"
    assert span.status_code == 2  # ERROR
    assert upstream.received == []
    with anyio.fail_after(10):
        while not request_rows(gw):
            await anyio.sleep(0.1)
    (row,) = request_rows(gw)
    assert row["traceparent"] == f"00-{TRACE_ID}-{PARENT_ID}-01"  # what the client sent
    assert row["extra"]["trace"] == f"00-{TRACE_ID}-{span.span_id}-01"  # the gateway's span


@pytest.mark.parametrize(
    "forged",
    [f"00-{'0' * 32}-{PARENT_ID}-01", "ff-not-a-trace", f"00-{TRACE_ID}-{PARENT_ID}-01-extra"],
)
async def test_a_malformed_traceparent_starts_a_new_trace(
    gateway_factory, fake_upstream, receiver, forged
):
    upstream = fake_upstream(answer)
    gw = start(gateway_factory, upstream, receiver.endpoint)
    headers = {**ALICE, "traceparent": forged}
    assert "result" in (await post(gw.url + "/mcp", call("get_customer"), headers)).json()
    (span,) = await spans_of(receiver, 1)
    assert span.parent_span_id == "" and span.trace_id != TRACE_ID
    assert span.attributes["holdgate.traceparent_invalid"] is True
    sent = upstream.received[-1].headers["traceparent"]
    assert sent.startswith(f"00-{span.trace_id}-{span.span_id}-")  # flags: sampled (and random)


async def test_an_unauthenticated_request_gets_a_span_of_its_own(
    gateway_factory, fake_upstream, receiver
):
    gw = start(gateway_factory, fake_upstream(answer), receiver.endpoint)
    assert (await post(gw.url + "/mcp", call("get_customer"), {"X-API-Key": "x"})).status == 401
    (span,) = await spans_of(receiver, 1)
    assert span.name == "HTTP POST"
    assert span.attributes["holdgate.decision"] == "unauthenticated"
    assert span.attributes["error.type"] == "unauthenticated"


async def test_tracing_is_off_by_default(gateway_factory, fake_upstream, receiver):
    upstream = fake_upstream(answer)
    gw = start(gateway_factory, upstream, None)
    for _ in range(3):
        assert "result" in (await post(gw.url + "/mcp", call("get_customer"), ALICE)).json()
    await anyio.sleep(1)  # ten times the schedule delay the gateway was given
    assert receiver.requests == 0
    assert "traceparent" not in upstream.received[-1].headers  # none added
    assert "tracing on" not in gw.log_text()
    with sqlite3.connect(gw.db) as db:
        extras = [json.loads(e) for (e,) in db.execute("select extra from events")]
    assert not any("trace" in e for e in extras)


async def test_a_receiver_that_is_down_costs_the_clients_nothing(gateway_factory, fake_upstream):
    upstream = fake_upstream(answer)
    gw = start(gateway_factory, upstream, f"http://127.0.0.1:{free_port()}")  # nothing there
    with anyio.fail_after(30):
        for _ in range(10):
            assert "result" in (await post(gw.url + "/mcp", call("get_customer"), ALICE)).json()
    assert len(upstream.received) == 10
    stop(gw.proc)  # and the shutdown does not wait for the collector: the store is closed
    assert "audit writer closed" in gw.log_text()
