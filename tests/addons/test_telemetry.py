"""Telemetry in process: the metrics count what the store records, a flow's latency is
observed when it ends, and with a tracer the upstream and the audit row name the span."""

import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from helpers.configs import ALICE, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    find,
    finish,
    gateway,
    json_response,
    mcp_flow,
    result,
    send,
    store_rows,
)
from holdgate.addons.telemetry import Telemetry
from holdgate.telemetry.tracing import GatewayTracer

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
  - name: support
    match: {{groups: [support]}}
    action: allow
"""
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:
        yield tctx


def samples(telemetry: Telemetry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = telemetry.metrics.exposition()[1].decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_metrics_count_what_the_store_records(tctx, tmp_path):
    telemetry = find(tctx, Telemetry)
    assert telemetry.tracer is None  # no OTEL_* variables: tracing off
    flow = await send(tctx, mcp_flow(call("search"), ALICE))
    await answer(tctx, flow, json_response(result(1, {"found": 1})))
    await send(tctx, mcp_flow(call("exec_shell"), ALICE))
    await send(tctx, mcp_flow(call("search"), {"X-API-Key": "nope"}))
    assert "traceparent" not in flow.request.headers
    finish(tctx)
    got = samples(telemetry)
    decision = "holdgate_decisions_total"
    allowed = {("upstream", "crm"), ("action", "allow"), ("rule", "support")}
    denied = {("upstream", "crm"), ("action", "deny"), ("rule", "no shell")}
    assert got[(decision, frozenset(allowed))] == 1
    assert got[(decision, frozenset(denied))] == 1
    assert got[("holdgate_refusals_total", frozenset({("kind", "unauthenticated")}))] == 1
    assert got[("holdgate_refusals_total", frozenset({("kind", "denied")}))] == 1
    requests = "holdgate_request_duration_seconds_count"
    assert got[(requests, frozenset({("upstream", "crm"), ("method", "tools/call")}))] == 2
    assert got[("holdgate_audit_rows_written_total", frozenset())] == len(
        store_rows(tmp_path, "select * from events")
    ) + len(store_rows(tmp_path, "select * from sessions")) + len(
        store_rows(tmp_path, "select * from config_versions")
    )


async def test_with_a_tracer_the_upstream_and_the_row_name_the_span(tctx, tmp_path):
    telemetry = find(tctx, Telemetry)
    exporter = InMemorySpanExporter()
    telemetry.tracer = GatewayTracer(exporter)
    headers = {**ALICE, "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    flow = await send(tctx, mcp_flow(call("search", {"q": "secret-arg"}), headers))
    sent = flow.request.headers["traceparent"]
    assert sent.startswith(f"00-{TRACE_ID}-") and "00f067aa0ba902b7" not in sent
    await answer(tctx, flow, json_response(result(1, {"found": 1})))
    telemetry.tracer.close()
    telemetry.tracer = None
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.span_id:016x}" == sent.split("-")[2]
    assert span.attributes is not None and span.attributes["holdgate.decision"] == "allow"
    assert "secret-arg" not in json.dumps(dict(span.attributes))
    finish(tctx)
    (request,) = store_rows(tmp_path, "select * from events where direction = 'request'")
    assert json.loads(request["extra"])["trace"] == sent
