"""Two gateways (replicas) on one PostgreSQL store share rate limits, grants and tool pins:
real mitmdump processes, a real PostgreSQL 15 server, the demo server, the SDK client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

from helpers import oneshot
from helpers.approvals import DELETE, sql_calls
from helpers.clients import META, MODERN, connect, raw_post
from helpers.configs import ALICE, identity
from helpers.processes import free_port, holdgate_cli, start_demo, stop
from holdgate import store

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "dana")
    + """upstreams:
  - name: demo
    url: {url}
    on_tool_change: deny
hash_key: shared-state-hash-key-7c2d
rules:
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
  - name: destructive SQL needs a DBA
    match: {{tool: run_sql, args: {{"$.query": {{search: "(?i)\\\\bdelete\\\\b"}}}}}}
    action: approve
    approvers: [dba]
    timeout: 30s
    grant: 10m
  - name: support reads customers
    match: {{groups: [support], tool: get_customer}}
    action: allow
    limit: 10/min
  - name: reads
    match: {{tool: [run_sql, search_customers]}}
    action: allow
"""
)


def replicas(gateway_factory, demo_url: str, pg_url: str) -> tuple:
    """Two gateways on one PostgreSQL store, both done starting before any call: a start
    closes every pending hold in the store (until replicas own their holds), and the
    approvals API answers only once that is done."""
    started = []
    for _ in range(2):
        admin = f"127.0.0.1:{free_port()}"
        options = {"holdgate_store": pg_url, "holdgate_admin": admin}
        started.append(gateway_factory(CONFIG.format(url=demo_url), demo_url, options=options))
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{admin}/approvals", timeout=5).close()
            except urllib.error.HTTPError:
                pass  # it answers (401 without credentials): started
            except OSError:
                time.sleep(0.1)
                continue
            break
        else:
            pytest.fail(f"the approvals API on {admin} never answered")
    return tuple(started)


def get_customer(gw, msg_id: int):
    params = {"name": "get_customer", "arguments": {"customer_id": 1}, "_meta": META}
    message = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}
    headers = {**ALICE, **MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
    return raw_post(gw.url + "/mcp", message, headers)


def list_tools(gw):
    message = {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {"_meta": META}}
    return raw_post(gw.url + "/mcp", message, {**ALICE, **MODERN, "Mcp-Method": "tools/list"})


def request_rows(pg_url: str, tool: str) -> list[dict]:
    with store.open_store(pg_url, create=False) as opened:
        return [e for e in opened.events() if e["target"] == tool and e["direction"] == "request"]


async def test_a_limit_is_exact_across_two_replicas(demo, gateway_factory, pg_url):
    a, b = replicas(gateway_factory, demo.url, pg_url)
    with ThreadPoolExecutor(4) as pool:  # both replicas at once, six calls each
        answers = list(pool.map(lambda i: get_customer((a, b)[i % 2], i).json(), range(12)))
    served = [r for r in answers if "result" in r]
    limited = [r for r in answers if r.get("error", {}).get("code") == -32005]
    assert (len(served), len(limited)) == (10, 2), answers
    assert all(
        "rate limit of 10 per 60s reached for alice" in r["error"]["message"] for r in limited
    )
    with anyio.fail_after(15):  # the refusals' rows are written as their flows end
        while len(rows := request_rows(pg_url, "get_customer")) < 12:
            await anyio.sleep(0.2)
    decisions = sorted(
        (r["decision"], json.loads(r["extra"]).get("rate_limited", False)) for r in rows
    )
    assert decisions == [("allow", False)] * 10 + [("deny", True)] * 2
    assert {r["rule"] for r in rows} == {"support reads customers"}


async def test_a_grant_given_on_one_replica_lets_the_call_through_the_other(
    demo, gateway_factory, pg_url
):
    a, b = replicas(gateway_factory, demo.url, pg_url)
    async with connect(a.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", DELETE)
            with anyio.fail_after(15):
                while not (pending := oneshot.pending_approvals(pg_url)):
                    await anyio.sleep(0.1)
            approval_id = pending[0]["approval_id"]
            done = holdgate_cli(
                "approvals",
                "approve",
                approval_id,
                "--as",
                "dana",
                "--break-glass",
                "--reason",
                "in a test",
                "--store",
                pg_url,
            )
            assert done.returncode == 0, done.stderr
    async with connect(b.url + "/mcp", ALICE) as client:
        again = await client.call_tool("run_sql", DELETE)
    assert not again.is_error
    assert sql_calls(demo) == [DELETE["query"], DELETE["query"]]
    history = oneshot.approval(pg_url, approval_id)["history"]
    assert [h["state"] for h in history] == ["pending", "approved", "grant_used"]
    assert oneshot.pending_approvals(pg_url) == []  # no second approval was asked for


async def test_one_pin_per_new_tool_and_a_repin_reaches_the_other_replica(
    tmp_path, gateway_factory, pg_url
):
    demo = start_demo(tmp_path)
    try:
        a, b = replicas(gateway_factory, demo.url, pg_url)
        with ThreadPoolExecutor(2) as pool:  # both see the new tools at once
            assert [r.status for r in pool.map(list_tools, (a, b))] == [200, 200]
    finally:
        stop(demo.proc)
    with store.open_store(pg_url, create=False) as opened:
        rows = opened.tool_pin_rows()
    first_seen = [r["tool"] for r in rows if r["event"] == "first-seen"]
    assert sorted(first_seen) == sorted(set(first_seen)) and "get_customer" in first_seen

    demo = start_demo(tmp_path, env={"DEMO_TOOL_VARIANT": "v2"}, port=demo.port)
    try:
        assert list_tools(a).status == 200  # a sees the changed tool; b reads a's row
        with anyio.fail_after(10):
            while "changed since it was pinned" not in json.dumps(get_customer(b, 1).json()):
                await anyio.sleep(0.2)
        repin = holdgate_cli(
            "tools",
            "pin",
            "demo",
            "get_customer",
            "--as",
            "sec-lead",
            "--reason",
            "reviewed",
            "--store",
            pg_url,
        )
        assert repin.returncode == 0, repin.stderr
        with anyio.fail_after(5):  # b polls the store every second
            while "result" not in get_customer(b, 2).json():
                await anyio.sleep(0.1)
    finally:
        stop(demo.proc)
