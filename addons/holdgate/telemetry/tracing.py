"""OpenTelemetry traces: one span per MCP message the gateway decides, exported over OTLP
by the SDK's batch processor on its own thread (never the event loop).

Imported only when tracing is on (`tracing_env.tracing_wanted`), so a gateway without it loads no
OpenTelemetry code. The exporter is configured by the standard `OTEL_*` variables
(endpoint, headers, timeout, protocol); the service is `OTEL_SERVICE_NAME` (default
"holdgate"); `OTEL_TRACES_SAMPLER` picks the sampler.

Span names and attributes follow the OpenTelemetry semantic conventions for MCP
(https://opentelemetry.io/docs/specs/semconv/gen-ai/mcp/, status Development): SERVER
spans named `{mcp.method.name} {target}` with `mcp.method.name`, `jsonrpc.request.id`,
`mcp.session.id`, `mcp.protocol.version`, `network.transport`, and for `tools/call`
`gen_ai.tool.name` with `gen_ai.operation.name=execute_tool`; `server.address` and
`server.port` name the upstream. Holdgate's own are `holdgate.*`. No argument value,
header or token is ever an attribute.

A message's parent is its `_meta.traceparent`, else the request's `traceparent` header;
one that is not valid W3C trace context is not continued (the span starts a new trace and
says `holdgate.traceparent_invalid`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

MAX_ATTRIBUTE = 256  # a client-chosen name (tool, method) is cut to this
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class MessageFacts:
    """What a span says about one message, known before it is forwarded."""

    method: str
    jsonrpc_id: str | int | None
    target: str | None
    meta_traceparent: str | None  # `_meta.traceparent` as sent (valid or not)
    decision: str | None
    rule: str | None


@dataclass(frozen=True)
class FlowFacts:
    """What every span of one HTTP request shares."""

    header_traceparent: str | None
    upstream: str | None
    upstream_url: str | None
    protocol_version: str | None
    client_address: str | None
    start_ns: int


@dataclass(frozen=True)
class Ending:
    """How the request ended, set on its spans as they end."""

    session: str | None
    status: int | None
    refusal: str | None
    end_ns: int


class GatewayTracer:
    """The gateway's own TracerProvider (never the global one) and its batch exporter."""

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "holdgate"}
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("holdgate")

    def start(self, flow: FlowFacts, messages: Sequence[MessageFacts]) -> list[Span]:
        """One started span per message (one for a request without messages)."""
        header_context, header_invalid = _parent(flow.header_traceparent)
        spans = []
        for message in messages:
            context, invalid = header_context, header_invalid
            if message.meta_traceparent is not None:
                context, invalid = _parent(message.meta_traceparent)
            name = (
                message.method if message.target is None else (f"{message.method} {message.target}")
            )
            span = self.tracer.start_span(
                name[:MAX_ATTRIBUTE],
                context=context,
                kind=SpanKind.SERVER,
                start_time=flow.start_ns,
                attributes=_attributes(flow, message, invalid),
            )
            spans.append(span)
        return spans

    def close(self, timeout: float = 2.0) -> bool:
        """Export what is queued and stop, waiting at most `timeout` seconds: a collector
        that is down (the exporter retries for OTEL_EXPORTER_OTLP_TIMEOUT) must not hold
        up the gateway's shutdown. False when spans were left unexported."""
        closing = threading.Thread(
            target=self.provider.shutdown, name="holdgate-trace-shutdown", daemon=True
        )
        closing.start()
        closing.join(timeout)
        return not closing.is_alive()


def end(spans: Sequence[Span], messages: Sequence[MessageFacts], ending: Ending) -> None:
    """End the spans of one request; a message without a decision of its own says what
    its audit row says (the refusal's kind, or "pass")."""
    for span, message in zip(spans, messages, strict=True):
        if message.decision is None:
            span.set_attribute("holdgate.decision", ending.refusal or "pass")
        if ending.session is not None:
            span.set_attribute("mcp.session.id", ending.session)
        if ending.status is not None:
            span.set_attribute("http.response.status_code", ending.status)
        if ending.refusal is not None:
            span.set_attribute("holdgate.refusal", ending.refusal)
            span.set_attribute("error.type", ending.refusal)
            span.set_status(Status(StatusCode.ERROR, ending.refusal))
        span.end(end_time=ending.end_ns)


def traceparent(span: Span) -> str:
    """The W3C traceparent naming `span` (what the upstream and the audit row get)."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _parent(value: str | None) -> tuple[Context | None, bool]:
    """The context to continue from a traceparent value; (None, True) for an invalid one."""
    if value is None:
        return None, False
    context = _PROPAGATOR.extract({"traceparent": value})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None, True
    return context, False


def _attributes(
    flow: FlowFacts, message: MessageFacts, invalid: bool
) -> dict[str, str | int | bool]:
    attributes: dict[str, str | int | bool] = {
        "mcp.method.name": message.method[:MAX_ATTRIBUTE],
        "network.transport": "tcp",
        "network.protocol.name": "http",
    }
    if message.jsonrpc_id is not None:
        attributes["jsonrpc.request.id"] = str(message.jsonrpc_id)[:MAX_ATTRIBUTE]
    if message.method == "tools/call" and message.target is not None:
        attributes["gen_ai.tool.name"] = message.target[:MAX_ATTRIBUTE]
        attributes["gen_ai.operation.name"] = "execute_tool"
    if flow.protocol_version:
        attributes["mcp.protocol.version"] = flow.protocol_version[:MAX_ATTRIBUTE]
    if flow.client_address:
        attributes["client.address"] = flow.client_address
    if flow.upstream is not None:
        attributes["holdgate.upstream"] = flow.upstream
    if flow.upstream_url:
        parts = urlsplit(flow.upstream_url)
        if parts.hostname:
            attributes["server.address"] = parts.hostname
        if parts.port:
            attributes["server.port"] = parts.port
    if message.decision is not None:
        attributes["holdgate.decision"] = message.decision
    if message.rule is not None:
        attributes["holdgate.rule"] = message.rule
    if invalid:
        attributes["holdgate.traceparent_invalid"] = True
    return attributes
