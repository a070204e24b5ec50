"""Telemetry: Prometheus metrics on the admin listener (`/metrics`) and, when the OTEL_*
variables ask for it, OpenTelemetry traces.

Lifecycle hooks only. `default_addons()` gives the Recorder `traces`, which it calls as a
flow's request rows are built (on the way out, the upstream gets the gateway span's
`traceparent` header), and `finished`, once its rows are queued; and subscribes
`metrics.count_rows` to the AuditStore's committed batches (on the writer's thread). With
tracing off, a flow costs a None check and two histogram observations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http

from holdgate.addons.config_loader import file_digest
from holdgate.addons.flowstate import state
from holdgate.approvals.adminhttp import AdminCallers, AdminRequest, AdminResponse, parse_listen
from holdgate.configfile import is_loopback
from holdgate.identity import JWKS_FETCHES
from holdgate.masking.detectors import BUILTIN_DETECTORS
from holdgate.protocol.sessionless import invalid_traceparent, traceparent_of
from holdgate.telemetry.metrics import GatewayMetrics, Snapshot, method_label, scrape_refusal
from holdgate.telemetry.tracing_env import tracing_wanted

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.config_loader import ConfigLoader
    from holdgate.config.gateway_config import GatewayConfig
    from holdgate.telemetry.tracing import GatewayTracer, MessageFacts

logger = logging.getLogger("holdgate")

try:
    VERSION = version("holdgate")
except PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "unknown"
# Stands in for a `_meta.traceparent` that was sent but is not valid: never continued.
_INVALID = "invalid"


class Telemetry:
    def __init__(
        self, loader: ConfigLoader, audit: AuditStore, approvals_pending: Callable[[], int]
    ) -> None:
        self.loader = loader
        self.audit = audit
        self.approvals_pending = approvals_pending
        self.metrics = GatewayMetrics(self.snapshot, VERSION)
        self.tracer: GatewayTracer | None = None
        self._spans: weakref.WeakKeyDictionary[
            http.HTTPFlow, tuple[list[Span], list[MessageFacts]]
        ] = weakref.WeakKeyDictionary()
        self.callers = AdminCallers()

    def configure(self, updated: set[str]) -> None:
        self._know(self.loader.current)

    def config_loaded(self, _event: dict[str, Any]) -> None:
        """A config loaded or reloaded: its upstreams, rules and detectors are known."""
        self._know(self.loader.current)

    def running(self) -> None:
        if self.tracer is None and tracing_wanted(os.environ):
            from holdgate.telemetry.tracing import GatewayTracer

            self.tracer = GatewayTracer()
            logger.info("holdgate: tracing on: spans exported over OTLP (OTEL_* variables)")

    def done(self) -> None:
        if self.tracer is not None:
            if not self.tracer.close():
                logger.warning("holdgate: the OTLP collector did not take the last spans")
            self.tracer = None

    def _know(self, config: GatewayConfig | None) -> None:
        if config is not None:
            self.metrics.know(
                (u.name for u in config.upstreams),
                (r.name for r in config.policy.rules),
                [*BUILTIN_DETECTORS, *config.masking.custom_detectors],
            )

    def snapshot(self) -> Snapshot:
        """The gateway's current state, for a scrape (read on the scrape's thread, never
        the event loop's: it reads the config file to compare it with the one in force)."""
        writer = self.audit.writer
        config = self.loader.current
        on_disk = file_digest(self.loader.path) if config is not None else None
        return Snapshot(
            queue_depth=writer.queue_depth if writer is not None else 0,
            rows_lost=writer.lost if writer is not None else 0,
            store_healthy=writer is not None and writer.healthy,
            approvals_pending=self.approvals_pending(),
            config_digest=config.digest if config is not None else "",
            jwks_fetches=dict(JWKS_FETCHES),
            config_reload_failures=self.loader.reload_failures,
            config_file_in_force=config is not None and on_disk == config.digest,
        )

    def traces(self, flow: http.HTTPFlow, *, leaving: bool) -> list[str] | None:
        """The traceparent of the gateway's span for each of the flow's messages (started
        now if need be), or None with tracing off. `leaving`: the request is about to be
        forwarded, so the upstream gets the first span as its parent."""
        tracer = self.tracer
        if tracer is None:
            return None
        from holdgate.telemetry.tracing import traceparent

        found = self._spans.get(flow)
        if found is None:
            facts = _message_facts(flow)
            found = self._spans[flow] = (tracer.start(_flow_facts(flow), facts), facts)
        parents = [traceparent(span) for span in found[0]]
        if leaving:
            flow.request.headers["traceparent"] = parents[0]
        return parents

    def finished(self, flow: http.HTTPFlow) -> None:
        """The flow's rows are queued: its latencies observed, its spans ended."""
        st = state(flow)
        request, response = flow.request, flow.response
        total = wait = None
        ended = response.timestamp_end if response is not None else None
        if response is not None and ended:
            total = ended - request.timestamp_start
            if st.refused is None and request.timestamp_end and response.timestamp_start:
                wait = max(0.0, response.timestamp_start - request.timestamp_end)
        method = method_label([d.message.method for d in st.decided], request.method)
        self.metrics.observe_flow(
            st.route.upstream.name if st.routed else None, method, total, wait
        )
        found = self._spans.pop(flow, None) if self.tracer is not None else None
        if found is not None:
            from holdgate.telemetry.tracing import Ending, end

            ending = Ending(
                session=st.session,
                status=response.status_code if response is not None else None,
                refusal=st.refused.kind if st.refused is not None else None,
                end_ns=int(ended * 1e9) if ended else time.time_ns(),
            )
            end(found[0], found[1], ending)

    async def handle_metrics(self, request: AdminRequest) -> AdminResponse:
        """GET /metrics: the exposition, for whom `metrics.auth` lets in."""
        if request.method != "GET":
            return AdminResponse(405, {"error": "GET /metrics"})
        config = self.loader.current
        if config is None:
            return AdminResponse(503, {"error": "no config loaded"})
        identity = None
        if config.metrics.auth == "identity":
            identity = await self.callers.identity(config, request)
        refusal = scrape_refusal(config.metrics, _admin_on_loopback(), identity)
        if refusal is not None:
            return AdminResponse(refusal[0], {"error": refusal[1]})
        content_type, body = await asyncio.to_thread(self.metrics.exposition)
        return AdminResponse(200, None, raw=(content_type, body))


def _admin_on_loopback() -> bool:
    """Whether the admin listener (`holdgate_admin`) is bound to a loopback address."""
    listen = parse_listen(ctx.options.holdgate_admin)
    return listen is not None and is_loopback(listen[0])


def _message_facts(flow: http.HTTPFlow) -> list[MessageFacts]:
    from holdgate.telemetry.tracing import MessageFacts

    st = state(flow)
    facts = []
    for decided in st.decided:
        message = decided.message
        raw = message.raw
        meta = traceparent_of(raw) or (_INVALID if invalid_traceparent(raw) else None)
        facts.append(
            MessageFacts(
                method=message.method or "unknown",
                jsonrpc_id=message.id,
                target=message.target if message.method in _NAMED else None,
                meta_traceparent=meta,
                decision=decided.decision.action,
                rule=decided.decision.rule,
            )
        )
    return facts or [MessageFacts(f"HTTP {flow.request.method}", None, None, None, None, None)]


# Methods whose target is a low-cardinality name fit for the span name (a resource URI is
# not: the conventions keep it out of span names by default).
_NAMED = frozenset({"tools/call", "prompts/get"})


def _flow_facts(flow: http.HTTPFlow) -> Any:
    from holdgate.telemetry.tracing import FlowFacts

    st = state(flow)
    route = st.route if st.routed else None
    return FlowFacts(
        header_traceparent=flow.request.headers.get("traceparent"),
        upstream=route.upstream.name if route is not None else None,
        upstream_url=route.upstream.url if route is not None else None,
        protocol_version=flow.request.headers.get("mcp-protocol-version"),
        client_address=route.client_addr if route is not None else None,
        start_ns=int(flow.request.timestamp_start * 1e9),
    )
