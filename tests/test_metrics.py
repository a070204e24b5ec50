"""The metrics library: label values bounded, counts taken from committed audit rows, the
scrape-time collector, and who may scrape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from holdgate.config.gateway_config import parse_config_text
from holdgate.configfile import ConfigErrors
from holdgate.identity import Identity
from holdgate.telemetry.metrics import (
    GatewayMetrics,
    Snapshot,
    bounded,
    detector_label,
    method_label,
    scrape_refusal,
)
from holdgate.telemetry.metrics_config import MetricsConfig

SNAPSHOT = Snapshot(
    queue_depth=3,
    rows_lost=2,
    store_healthy=True,
    approvals_pending=1,
    config_digest="abc123",
    jwks_fetches={"ok": 5},
    config_reload_failures=4,
    config_file_in_force=False,
)


def samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition()[1].decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def metrics() -> GatewayMetrics:
    m = GatewayMetrics(lambda: SNAPSHOT, "1.2.3")
    m.know(["crm"], ["reads"], ["email"])
    return m


def event(**columns: object) -> tuple[str, dict[str, object]]:
    return ("events", {"flow_id": "f1", "upstream": "crm", "extra": "{}", **columns})


def test_label_values_are_bounded():
    assert bounded("crm", {"crm"}) == "crm"
    assert bounded("evil", {"crm"}) == "other"
    assert bounded(None, {"crm"}) == ""
    assert method_label(["tools/call"], "POST") == "tools/call"
    assert method_label(["x/made-up"], "POST") == "other"
    assert method_label(["tools/call", "ping"], "POST") == "batch"
    assert method_label([], "GET") == "HTTP GET"
    assert method_label([], "PATCH") == "other"
    assert detector_label("email(split)", {"email"}) == "email"
    assert detector_label("path:$.secret", {"email"}) == "field"
    assert detector_label("made_up", {"email"}) == "other"


def test_decisions_refusals_approvals_and_findings_come_from_rows():
    m = metrics()
    m.count_rows(
        [
            event(direction="request", decision="allow", rule="reads", masked='{"email": 2}'),
            event(direction="request", decision="deny", rule="default-deny", upstream="evil"),
            event(
                direction="request",
                decision="approve",
                rule="reads",
                extra=json.dumps({"approval": {"state": "approved", "decider": "dana"}}),
            ),
            ("sessions", {"session_id": "s", "decision": "allow"}),  # not an event: ignored
            event(direction="response", decision="pass", masked='{"email(split)": 1}'),
        ]
    )
    # a refused batch of two messages: one refusal, not two
    refused = json.dumps({"refused": {"kind": "unauthenticated"}})
    m.count_rows(
        [
            event(flow_id="f2", direction="request", decision="unauthenticated", extra=refused),
            event(flow_id="f2", direction="request", decision="unauthenticated", extra=refused),
            event(flow_id="f3", direction="outcome", extra=json.dumps({"refused": {"kind": "x"}})),
        ]
    )
    got = samples(m)
    assert (
        got[
            (
                "holdgate_decisions_total",
                frozenset({("upstream", "crm"), ("action", "allow"), ("rule", "reads")}),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "holdgate_decisions_total",
                frozenset({("upstream", "other"), ("action", "deny"), ("rule", "default-deny")}),
            )
        ]
        == 1
    )
    assert got[("holdgate_approvals_decided_total", frozenset({("outcome", "approved")}))] == 1
    assert got[("holdgate_masked_findings_total", frozenset({("detector", "email")}))] == 3
    assert got[("holdgate_refusals_total", frozenset({("kind", "unauthenticated")}))] == 1
    assert got[("holdgate_refusals_total", frozenset({("kind", "other")}))] == 1


def test_the_collector_reads_state_at_scrape_time():
    got = samples(metrics())
    assert got[("holdgate_build_info", frozenset({("version", "1.2.3")}))] == 1
    assert got[("holdgate_config_info", frozenset({("digest", "abc123")}))] == 1
    assert got[("holdgate_audit_queue_depth", frozenset())] == 3
    assert got[("holdgate_audit_rows_written_total", frozenset())] == 0
    assert got[("holdgate_audit_rows_lost_total", frozenset())] == 2
    assert got[("holdgate_store_healthy", frozenset())] == 1
    assert got[("holdgate_approvals_pending", frozenset())] == 1
    assert got[("holdgate_jwks_fetches_total", frozenset({("result", "ok")}))] == 5
    assert got[("holdgate_jwks_fetches_total", frozenset({("result", "failed")}))] == 0
    assert got[("holdgate_config_reload_failures_total", frozenset())] == 4
    assert got[("holdgate_config_file_in_force", frozenset())] == 0


def test_a_hostile_mix_of_names_makes_no_new_series():
    m = metrics()
    for n in range(1000):
        m.count_rows([event(direction="request", decision="deny", rule=f"r{n}", upstream=f"u{n}")])
        m.observe_flow(f"u{n}", method_label([f"x/{n}"], "POST"), 0.01, 0.005)
    series = [
        key for key in samples(m) if key[0].startswith(("holdgate_decisions", "holdgate_request"))
    ]
    assert len(series) < 30


def test_a_batch_that_cannot_be_counted_is_left_uncounted():
    m = metrics()
    m.count_rows(
        [
            event(
                direction="request", decision="allow", rule="reads", extra="{not json", masked="[1]"
            )
        ]
    )
    got = samples(m)
    assert (
        got[
            (
                "holdgate_decisions_total",
                frozenset({("upstream", "crm"), ("action", "allow"), ("rule", "reads")}),
            )
        ]
        == 1
    )


SCRAPER = Identity("prom", ("monitoring",), "api_key")
ALICE = Identity("alice", ("support",), "api_key")


@pytest.mark.parametrize(
    ("config", "loopback", "scraper", "status"),
    [
        (MetricsConfig(), True, None, None),
        (MetricsConfig(), False, None, 403),
        (MetricsConfig("open"), False, None, None),
        (MetricsConfig("identity"), True, None, 401),
        (MetricsConfig("identity"), False, ALICE, None),
        (MetricsConfig("identity", ("monitoring",)), False, ALICE, 403),
        (MetricsConfig("identity", ("monitoring",)), False, SCRAPER, None),
    ],
)
def test_who_may_scrape(config, loopback, scraper, status):
    refusal = scrape_refusal(config, loopback, scraper)
    assert (refusal[0] if refusal else None) == status


def test_a_non_loopback_refusal_says_how_to_configure_it():
    refusal = scrape_refusal(MetricsConfig(), False, None)
    assert refusal is not None and "metrics: {auth: identity}" in refusal[1]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("metrics: {auth: basic}\n", "auth"),
        ("metrics: {auth: open, groups: [x]}\n", "only applies with `auth: identity`"),
        ("metrics: {auth: identity}\n", "no `identity:` section"),
        ("metrics: {scrape: yes}\n", "scrape"),
    ],
)
def test_metrics_config_errors_name_the_line(section, message):
    text = "version: 1\nupstreams: [{name: crm, url: 'http://127.0.0.1:1'}]\n" + section
    with pytest.raises(ConfigErrors, match=message) as raised:
        parse_config_text(text, "gw.yaml")
    assert "gw.yaml:3" in str(raised.value)


ROOT = Path(__file__).resolve().parent.parent


def families() -> set[str]:
    text = metrics().exposition()[1].decode()
    return {family.name for family in text_string_to_metric_families(text)}


def test_every_metric_is_in_the_operations_table():
    table = (ROOT / "docs" / "operations.md").read_text()
    for name in families():
        sample = name + "_total" if f"`{name}_total`" in table else name
        assert f"| `{sample}` |" in table, f"{name} is not in docs/operations.md's metrics table"


def test_the_grafana_dashboard_names_only_real_metrics():
    dashboard = json.loads((ROOT / "docs" / "grafana-holdgate.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub("(_total|_bucket|_count|_sum)$", "", n)
        for e in exprs
        for n in re.findall(r"holdgate_\w+", e)
    }
    assert used and used <= families(), used - families()
