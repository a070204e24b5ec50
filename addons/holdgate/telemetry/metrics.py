"""The gateway's Prometheus metrics, in a registry of its own (never the global default,
so reloads and in-process tests start clean).

Counts come from the audit rows as the writer commits them (`count_rows`, on the writer
thread): what the metrics say was decided is what the store says. Latencies come from the
flow's timestamps when it ends (`observe_flow`). Current values (queue depth, store
health, pending approvals, config version, rejected reloads, whether the file on disk is in
force, JWKS fetches) are read at scrape time by a collector, so the hot path pays nothing
for them.

Every label value is bounded: upstreams and rules by the loaded config, methods by the MCP
methods known here, refusal kinds and approval outcomes by fixed sets; anything else is
"other". Never a user, a tool name or any other value a client chooses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from holdgate.identity import Identity
from holdgate.policy.rules import ACTIONS, DEFAULT_DENY
from holdgate.store.rows import Row
from holdgate.telemetry.metrics_config import MetricsConfig

OTHER = "other"
MCP_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/message",
        "notifications/roots/list_changed",
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
        "notifications/prompts/list_changed",
        "HTTP GET",
        "HTTP POST",
        "HTTP DELETE",
    }
)
REFUSAL_KINDS = frozenset(
    {
        "refused",
        "denied",
        "approval-pending",
        "unauthenticated",
        "malformed",
        "tampered",
        "no-upstream",
        "foreign-session",
        "approval-refused",
        "approval-expired",
        "rule-changed",
        "audit-unavailable",
        "unrecordable",
        "internal-error",
        "host-refused",
        "upstream-failed",
    }
)
APPROVAL_OUTCOMES = frozenset({"approved", "denied", "expired", "cancelled", "granted"})
# Request latencies from a millisecond to a held call's ten minutes.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    600,
)


def bounded(value: str | None, allowed: Iterable[str]) -> str:
    """`value` when it is one of `allowed`, "" when absent, else "other"."""
    if not value:
        return ""
    return value if value in allowed else OTHER


def method_label(methods: Sequence[str | None], http_method: str) -> str:
    """A flow's method label: its one message's MCP method, "batch" for several, the HTTP
    method for a request without messages (a GET stream, a DELETE)."""
    if len(methods) > 1:
        return "batch"
    method = methods[0] if methods else None
    return bounded(method or f"HTTP {http_method}", MCP_METHODS)


def detector_label(finding: str, detectors: Iterable[str]) -> str:
    """A finding's detector: `email(split)` is `email`, a field rule's `path:$.x` is
    "field" (its path is config, but one series per path is not worth it)."""
    if finding.startswith("path:"):
        return "field"
    return bounded(finding.removesuffix("(split)"), detectors)


@dataclass(frozen=True)
class Known:
    """The label values the loaded config allows (upstream and rule names)."""

    upstreams: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset({DEFAULT_DENY})
    detectors: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Snapshot:
    """What the state collector reports, read at scrape time."""

    queue_depth: int
    rows_lost: int
    store_healthy: bool
    approvals_pending: int
    config_digest: str
    jwks_fetches: dict[str, int]
    config_reload_failures: int
    # Whether the config file on disk now is the config in force (same sha256).
    config_file_in_force: bool


class StateCollector(Collector):
    """Gauges and counters read from the gateway's current state at each scrape."""

    def __init__(self, read: Callable[[], Snapshot], version: str) -> None:
        self.read = read
        self.version = version

    def collect(self) -> Iterator[Metric]:
        now = self.read()
        build = GaugeMetricFamily("holdgate_build_info", "Holdgate's version.", labels=["version"])
        build.add_metric([self.version], 1)
        yield build
        config = GaugeMetricFamily(
            "holdgate_config_info",
            "The loaded config: its digest (as in the audit rows' config_hash).",
            labels=["digest"],
        )
        config.add_metric([now.config_digest], 1)
        yield config
        yield CounterMetricFamily(
            "holdgate_config_reload_failures",
            "Reloads of the config file rejected (the last good config stays in force).",
            value=now.config_reload_failures,
        )
        yield GaugeMetricFamily(
            "holdgate_config_file_in_force",
            "1 when the config file on disk is the config in force, 0 otherwise.",
            value=1 if now.config_file_in_force else 0,
        )
        yield GaugeMetricFamily(
            "holdgate_audit_queue_depth",
            "Audit rows queued for the store, not yet written.",
            value=now.queue_depth,
        )
        yield CounterMetricFamily(
            "holdgate_audit_rows_lost",
            "Audit rows that never reached the store (queue full, store failing).",
            value=now.rows_lost,
        )
        yield GaugeMetricFamily(
            "holdgate_store_healthy",
            "1 while the audit store is being written, 0 while it fails.",
            value=1 if now.store_healthy else 0,
        )
        yield GaugeMetricFamily(
            "holdgate_approvals_pending",
            "Calls this gateway holds until an approver decides.",
            value=now.approvals_pending,
        )
        jwks = CounterMetricFamily(
            "holdgate_jwks_fetches", "JWKS fetches from OIDC issuers.", labels=["result"]
        )
        for result in ("ok", "failed"):
            jwks.add_metric([result], now.jwks_fetches.get(result, 0))
        yield jwks


class GatewayMetrics:
    """One gateway process's registry and the instruments the gateway feeds."""

    def __init__(self, read: Callable[[], Snapshot], version: str) -> None:
        # No `_created` series beside every counter: they double the series and say only
        # when the gateway started (a setting of the library, for the whole process).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.known = Known()
        self.decisions = Counter(
            "holdgate_decisions",
            "Policy decisions on MCP messages, by upstream, action and rule.",
            ["upstream", "action", "rule"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "holdgate_refusals",
            "Requests the gateway answered itself with a refusal, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.approvals_decided = Counter(
            "holdgate_approvals_decided",
            "Held calls released or refused, by outcome (granted: a grant window passed it).",
            ["outcome"],
            registry=self.registry,
        )
        self.rows_written = Counter(
            "holdgate_audit_rows_written",
            "Audit rows committed to the store.",
            registry=self.registry,
        )
        self.masked = Counter(
            "holdgate_masked_findings",
            "Values masked in arguments and responses, by detector.",
            ["detector"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "holdgate_request_duration_seconds",
            "From the request's first byte to the response's last, by upstream and method.",
            ["upstream", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "holdgate_upstream_duration_seconds",
            "From the request sent upstream to the upstream's response headers.",
            ["upstream", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StateCollector(read, version))

    def know(
        self, upstreams: Iterable[str], rules: Iterable[str], detectors: Iterable[str]
    ) -> None:
        """A config loaded: its upstream, rule and detector names become label values."""
        self.known = Known(
            self.known.upstreams | frozenset(upstreams),
            self.known.rules | frozenset(rules),
            self.known.detectors | frozenset(detectors),
        )

    def count_rows(self, rows: Sequence[tuple[str, Row]]) -> None:
        """Count the decisions, refusals, approvals and findings in committed rows."""
        self.rows_written.inc(len(rows))
        known = self.known
        refused_flows: set[object] = set()
        for table, row in rows:
            if table != "events":
                continue
            direction = row.get("direction")
            masked = row.get("masked")
            if isinstance(masked, str):
                for finding, count in _findings(masked).items():
                    self.masked.labels(detector_label(finding, known.detectors)).inc(count)
            if direction not in ("request", "notification", "outcome"):
                continue
            extra = row.get("extra")
            details = _details(extra) if isinstance(extra, str) else {}
            refused = details.get("refused")
            if isinstance(refused, dict) and row.get("flow_id") not in refused_flows:
                refused_flows.add(row.get("flow_id"))  # one refusal per flow, not per message
                self.refusals.labels(bounded(str(refused.get("kind")), REFUSAL_KINDS)).inc()
            if direction == "outcome":
                continue
            action = row.get("decision")
            if action in ACTIONS:
                self.decisions.labels(
                    bounded(_text(row.get("upstream")), known.upstreams),
                    str(action),
                    bounded(_text(row.get("rule")), known.rules),
                ).inc()
            approval = details.get("approval")
            if isinstance(approval, dict):
                outcome = "granted" if "granted_by" in approval else str(approval.get("state"))
                if outcome != "pending":
                    self.approvals_decided.labels(bounded(outcome, APPROVAL_OUTCOMES)).inc()

    def observe_flow(
        self, upstream: str | None, method: str, total: float | None, upstream_wait: float | None
    ) -> None:
        """A flow ended: its latencies (seconds; None when it has none)."""
        label = bounded(upstream, self.known.upstreams)
        if total is not None:
            self.request_seconds.labels(label, method).observe(total)
        if upstream_wait is not None:
            self.upstream_seconds.labels(label, method).observe(upstream_wait)

    def exposition(self) -> tuple[str, bytes]:
        """The text exposition format: its content type and body."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)


def scrape_refusal(
    config: MetricsConfig, on_loopback: bool, scraper: Identity | None
) -> tuple[int, str] | None:
    """Why a scrape is refused (HTTP status, what to do), or None to serve it.
    `scraper`: the caller's identity, authenticated when `auth: identity`."""
    if config.auth == "open":
        return None
    if config.auth == "loopback":
        if on_loopback:
            return None
        return (
            403,
            "/metrics is served without credentials only on a loopback admin listener, and "
            "holdgate_admin is not one; set `metrics: {auth: identity}` in the config (the "
            "scraper authenticates like an MCP client) or `metrics: {auth: open}`",
        )
    if scraper is None:
        return 401, "authenticate like an MCP client (JWT or API key) to read /metrics"
    if config.groups and not set(config.groups) & set(scraper.groups):
        return 403, f"{scraper.user} is in none of the groups metrics.groups allows"
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _details(extra: str) -> dict[str, object]:
    """The parts of a row's `extra` counted here (parsed only when they are there)."""
    if '"refused"' not in extra and '"approval"' not in extra:
        return {}
    try:
        value = json.loads(extra)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _findings(masked: str) -> dict[str, int]:
    """A row's `masked` column: finding -> count."""
    try:
        value = json.loads(masked)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and v > 0}
