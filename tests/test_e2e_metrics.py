"""/metrics on a real gateway: a known mix of calls, then a scrape parsed with
prometheus_client's own parser must show exactly those counts; who may scrape; and a
hostile client cannot make series at will."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.approvals import wait_for_pending
from helpers.clients import raw_post
from helpers.configs import ALICE, CAROL, DANA, identity
from helpers.flows import call
from helpers.processes import Gateway, free_port, wait_for_port
from helpers.upstreams import FakeUpstream, Reply, Request, result_for

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "carol", "dana", groups={"carol": ["monitoring"]})
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
  - name: sql needs a DBA
    match: {{tool: run_sql}}
    action: approve
    approvers: [dba]
    timeout: 1m
masking:
  - name: pii
    detectors: [email]
    strategy: redact
"""
)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def answer(request: Request) -> Reply:
    return result_for(
        request, {"content": [{"type": "text", "text": "reach me at ann.lee@example.com"}]}
    )


def start(
    gateway_factory: Callable[..., Gateway], upstream: FakeUpstream, extra: str = ""
) -> tuple[Gateway, str]:
    port = free_port()
    gw = gateway_factory(
        CONFIG.format(url=upstream.url) + extra,
        upstream.url,
        options={"holdgate_admin": f"127.0.0.1:{port}"},
    )
    wait_for_port(port, gw.proc, gw.output)  # the admin listener starts once the store is read
    return gw, f"http://127.0.0.1:{port}"


def scrape(admin: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(admin + "/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


async def until(admin: str, expected: Samples) -> Samples:
    """Scrape until the expected samples are there (rows are counted as they commit)."""
    deadline = anyio.current_time() + 20
    while True:
        got = parse(scrape(admin)[2])
        seen = {k: got.get(k) for k in expected}
        if seen == expected or anyio.current_time() > deadline:
            assert seen == expected
            return got
        await anyio.sleep(0.2)


async def post(url: str, body: Any, headers: dict[str, str]) -> Any:
    return await anyio.to_thread.run_sync(lambda: raw_post(url, body, headers))


async def test_a_known_mix_of_calls_gives_exact_counts(gateway_factory, fake_upstream):
    upstream = fake_upstream(answer)
    gw, admin = start(gateway_factory, upstream)
    mcp = gw.url + "/mcp"
    for n in range(3):
        assert (await post(mcp, call("get_customer", {"id": n}), ALICE)).status == 200
    for _ in range(2):
        denied = await post(mcp, call("exec_shell", {"command": "id"}), ALICE)
        assert "error" in denied.json()
    for _ in range(4):
        assert (await post(mcp, call("get_customer"), {"X-API-Key": "wrong"})).status == 401
    async with anyio.create_task_group() as tg:
        held: list[Any] = []

        async def ask() -> None:
            held.append(await post(mcp, call("run_sql", {"query": "select 1"}), ALICE))

        tg.start_soon(ask)
        pending = await wait_for_pending(gw.db)
        await until(admin, {key("holdgate_approvals_pending"): 1})
        decide = urllib.request.Request(
            f"{admin}/approvals/{pending['approval_id']}/approve",
            data=b"{}",
            headers={**DANA, "Content-Type": "application/json"},
        )
        await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(decide, timeout=10).read())
    assert "result" in held[0].json()
    got = await until(
        admin,
        {
            key("holdgate_decisions_total", upstream="crm", action="allow", rule="reads"): 3,
            key("holdgate_decisions_total", upstream="crm", action="deny", rule="no shell"): 2,
            key(
                "holdgate_decisions_total", upstream="crm", action="approve", rule="sql needs a DBA"
            ): 1,
            key("holdgate_refusals_total", kind="unauthenticated"): 4,
            key("holdgate_refusals_total", kind="denied"): 2,  # the gateway answered them
            key("holdgate_approvals_decided_total", outcome="approved"): 1,
            key("holdgate_approvals_pending"): 0,
            key("holdgate_masked_findings_total", detector="email"): 4,
            key("holdgate_request_duration_seconds_count", upstream="crm", method="tools/call"): 6,
            # refused before the body was read: known only by its HTTP method
            key("holdgate_request_duration_seconds_count", upstream="crm", method="HTTP POST"): 4,
            key("holdgate_upstream_duration_seconds_count", upstream="crm", method="tools/call"): 4,
            key("holdgate_store_healthy"): 1,
        },
    )
    decisions = {k: v for k, v in got.items() if k[0] == "holdgate_decisions_total"}
    assert sum(decisions.values()) == 6  # nothing counted twice, nothing else counted
    refusals = {k: v for k, v in got.items() if k[0] == "holdgate_refusals_total"}
    assert sum(refusals.values()) == 6
    assert got[key("holdgate_audit_rows_lost_total")] == 0
    assert got[key("holdgate_audit_rows_written_total")] > 10
    assert got[key("holdgate_audit_queue_depth")] >= 0
    digests = [k for k in got if k[0] == "holdgate_config_info"]
    assert len(digests) == 1 and len(dict(digests[0][1])["digest"]) == 64
    assert any(k[0] == "holdgate_build_info" for k in got)
    # no per-identity label: no user, group or key anywhere in the exposition
    text = scrape(admin)[2]
    for secret in ("alice", "dana", "support", "wrong", ALICE["X-API-Key"], "ann.lee"):
        assert secret not in text


async def test_metrics_are_open_on_loopback_with_the_exposition_content_type(
    gateway_factory, fake_upstream
):
    _, admin = start(gateway_factory, fake_upstream(answer))
    status, content_type, text = scrape(admin)
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert "holdgate_store_healthy 1.0" in text


async def test_with_auth_configured_only_the_right_credentials_scrape(
    gateway_factory, fake_upstream
):
    _, admin = start(
        gateway_factory, fake_upstream(answer), "metrics: {auth: identity, groups: [monitoring]}\n"
    )
    assert scrape(admin)[0] == 401
    assert scrape(admin, {"X-API-Key": "not-a-key"})[0] == 401
    status, _, body = scrape(admin, ALICE)  # authenticated, but not in monitoring
    assert status == 403 and "metrics.groups" in json.loads(body)["error"]
    status, _, text = scrape(admin, CAROL)
    assert status == 200 and "holdgate_decisions" in text
    post_request = urllib.request.Request(admin + "/metrics", data=b"", headers=CAROL)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(post_request, timeout=10)
    assert raised.value.code == 405


async def test_a_hostile_client_cannot_create_series(gateway_factory, fake_upstream):
    upstream = fake_upstream(answer)
    gw, admin = start(gateway_factory, upstream)
    mcp = gw.url + "/mcp"
    for n in range(150):
        await post(mcp, call(f"tool_{n}_evil"), ALICE)
        await post(mcp, {"jsonrpc": "2.0", "id": n, "method": f"x/made-up-{n}"}, ALICE)
    got = await until(
        admin,
        {key("holdgate_decisions_total", upstream="crm", action="deny", rule="default-deny"): 300},
    )
    text = scrape(admin)[2]
    assert "tool_1_evil" not in text and "made-up" not in text
    assert len(got) < 150  # every series the gateway has, not one per name
