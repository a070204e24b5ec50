"""The tracing library on an in-memory exporter: when it is on, what a span says, which
parent it continues."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from holdgate.telemetry.tracing import (
    Ending,
    FlowFacts,
    GatewayTracer,
    MessageFacts,
    end,
    traceparent,
)
from holdgate.telemetry.tracing_env import tracing_wanted

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
FLOW = FlowFacts(None, "crm", "http://127.0.0.1:9000/mcp", "2025-06-18", "127.0.0.1", 10**18)


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(env, wanted):
    assert tracing_wanted(env) is wanted


def traced(flow: FlowFacts, *messages: MessageFacts, ending: Ending | None = None):
    exporter = InMemorySpanExporter()
    tracer = GatewayTracer(exporter)
    spans = tracer.start(flow, messages)
    parents = [traceparent(s) for s in spans]
    end(spans, messages, ending or Ending("s-1", 200, None, 2 * 10**18))
    assert tracer.close()
    return exporter.get_finished_spans(), parents


def test_a_tool_call_span_follows_the_mcp_conventions():
    message = MessageFacts("tools/call", 7, "get_customer", PARENT, "allow", "reads")
    (span,), (parent,) = traced(FLOW, message)
    assert span.name == "tools/call get_customer"
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert parent == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert dict(span.attributes or {}) == {
        "mcp.method.name": "tools/call",
        "jsonrpc.request.id": "7",
        "gen_ai.tool.name": "get_customer",
        "gen_ai.operation.name": "execute_tool",
        "mcp.protocol.version": "2025-06-18",
        "mcp.session.id": "s-1",
        "network.transport": "tcp",
        "network.protocol.name": "http",
        "client.address": "127.0.0.1",
        "holdgate.upstream": "crm",
        "server.address": "127.0.0.1",
        "server.port": 9000,
        "holdgate.decision": "allow",
        "holdgate.rule": "reads",
        "http.response.status_code": 200,
    }


def test_each_message_of_a_batch_has_its_own_span_and_parent():
    header = FlowFacts(PARENT, "crm", None, None, None, 10**18)
    own = f"00-{'a' * 32}-{'b' * 16}-01"
    spans, _ = traced(
        header,
        MessageFacts("ping", 1, None, None, "allow", "r"),
        MessageFacts("tools/list", 2, None, own, "allow", "r"),
    )
    assert [f"{s.context.trace_id:032x}" for s in spans] == [TRACE_ID, "a" * 32]


def test_a_refusal_is_an_error_and_a_message_without_decision_says_it():
    message = MessageFacts("HTTP POST", None, None, None, None, None)
    (span,), _ = traced(FLOW, message, ending=Ending(None, 401, "unauthenticated", 2 * 10**18))
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["holdgate.decision"] == "unauthenticated"
    assert span.attributes["error.type"] == "unauthenticated"


@pytest.mark.parametrize("forged", ["invalid", f"00-{'0' * 32}-{'b' * 16}-01", "00-xyz"])
def test_an_invalid_parent_is_never_continued(forged):
    message = MessageFacts("ping", 1, None, forged, "allow", "r")
    (span,), _ = traced(FLOW, message)
    assert span.parent is None
    assert span.attributes is not None and span.attributes["holdgate.traceparent_invalid"]


def test_a_client_chosen_name_is_cut():
    message = MessageFacts("tools/call", 1, "x" * 5000, None, "deny", "default-deny")
    (span,), _ = traced(FLOW, message)
    assert len(span.name) <= 256
    assert span.attributes is not None and len(str(span.attributes["gen_ai.tool.name"])) == 256


def test_a_gateway_with_tracing_off_loads_no_opentelemetry_code():
    script = (
        "import sys, os\n"
        "from holdgate.addons import default_addons\n"
        "from holdgate.addons.telemetry import Telemetry\n"
        "(t,) = [a for a in default_addons() if isinstance(a, Telemetry)]\n"
        "assert t.tracer is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('holdgate.telemetry.tracing')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['holdgate.telemetry.tracing_env']"
