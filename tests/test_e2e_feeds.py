"""Audit feeds from a real gateway (mitmdump) in front of the 2.x demo server, to real
receivers on 127.0.0.1: a webhook that checks every body's HMAC, syslog over TCP and UDP.
The webhook sees every committed row across a receiver outage and a gateway restart."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from helpers.clients import connect
from helpers.configs import ALICE, BOB, identity
from helpers.processes import BIN, ROOT, Gateway, free_port, holdgate_cli, stop, wait_for_port
from helpers.receivers import SyslogReceiver, WebhookReceiver
from holdgate import store

pytestmark = pytest.mark.anyio

DATASETTE = str(BIN / "datasette")
METADATA = ROOT / "datasette" / "metadata.yaml"
SECRET = "e2e-feed-secret-7c1d9a0b55e2"
ENV = {"HOLDGATE_FEED_SECRET": SECRET}
CONFIG = (
    "version: 1\n"
    + identity("alice", "bob", "dana")
    + """upstreams:
  - name: demo
    url: {url}
hash_key: feeds-e2e-hash-key-91ab
rules:
  - name: handshake
    match: {{method: [initialize, server/discover, ping, "notifications/*", tools/list]}}
    action: allow
  - name: support reads
    match: {{groups: [support], tool: [get_customer, search_customers]}}
    action: allow
feeds:
{feeds}"""
)


def webhook(url: str) -> str:
    return (
        f"  - name: siem\n    webhook: {url}\n"
        '    secret: "${env:HOLDGATE_FEED_SECRET}"\n    batch: 4\n    timeout: 1s\n'
    )


def syslog(name: str, target: str) -> str:
    return f"  - name: {name}\n    syslog: {target}\n"


async def calls(gw: Gateway, count: int) -> None:
    """`count` tool calls through the gateway, each of which must pass."""
    with anyio.fail_after(60):
        async with connect(gw.url + "/mcp", ALICE) as client:
            for n in range(count):
                result = await client.call_tool("get_customer", {"customer_id": 1 + n % 3})
                assert not result.is_error


def event_seqs(location: str) -> list[int]:
    with store.open_store(location, create=False) as opened:
        return [int(r["seq"]) for r in opened.events()]


def settle(location: str, seen: Callable[[], list[int]], timeout: float = 60.0) -> list[int]:
    """Until the receiver has every event row in the store, twice in a row (the writer may
    still add a call's last rows after it returned); the store's event seqs."""
    deadline = time.monotonic() + timeout
    agreed = 0
    while agreed < 2:
        assert time.monotonic() < deadline, "the feed never caught up with the store"
        rows = event_seqs(location)
        agreed = agreed + 1 if set(rows) <= set(seen()) else 0
        time.sleep(0.3)
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_the_webhook_sees_every_row_once_across_an_outage_and_a_restart(
    demo, gateway_factory, location
):
    receiver = WebhookReceiver(SECRET).start()
    config = CONFIG.format(url=demo.url, feeds=webhook(receiver.url))
    options = {"holdgate_store": location}
    try:
        gw = gateway_factory(config, demo.url, options=options, env=ENV)
        await calls(gw, 3)
        settle(location, lambda: receiver.seqs)

        receiver.stop()  # outage: traffic goes on, the rows wait in the store
        await calls(gw, 3)
        stop(gw.proc)  # and the gateway restarts while the receiver is still down
        receiver.start()
        gw = gateway_factory(config, demo.url, options=options, env=ENV)
        await calls(gw, 3)
        everything = settle(location, lambda: receiver.seqs)
    finally:
        receiver.stop()

    assert receiver.bad_signatures == 0
    seqs = receiver.seqs
    assert sorted(set(seqs)) == everything  # every committed row, none invented
    assert list(dict.fromkeys(seqs)) == everything  # in seq order once deduplicated
    # a repeat is only ever a batch sent again after the restart, never a reorder
    steps_back = [
        (a, b)
        for a, b in zip(receiver.deliveries, receiver.deliveries[1:], strict=False)
        if b.records[0]["seq"] <= a.records[-1]["seq"]
    ]
    assert len(steps_back) <= 1
    for delivery in receiver.deliveries:
        records = delivery.records
        assert delivery.headers["X-Holdgate-Seq-First"] == str(records[0]["seq"])
        assert delivery.headers["X-Holdgate-Seq-Last"] == str(records[-1]["seq"])
        assert all(r["table"] == "events" and r["row_hash"] for r in records)
        assert SECRET not in str(records)
    with store.open_store(location, create=False) as opened:
        (cursor,) = opened.feed_cursors()
        assert cursor["feed"] == "siem" and cursor["seq"] >= everything[-1]
        assert opened.verify().ok
        assert SECRET not in str(opened.config_versions())
    assert SECRET not in gw.log_text()


async def test_syslog_gets_the_rows_while_a_hanging_webhook_slows_nothing(demo, gateway_factory):
    tcp = SyslogReceiver("tcp").start()
    udp = SyslogReceiver("udp").start()
    hanging = WebhookReceiver(SECRET, mode="hang").start()
    feeds = webhook(hanging.url) + syslog("log-tcp", tcp.target) + syslog("log-udp", udp.target)
    try:
        gw = gateway_factory(CONFIG.format(url=demo.url, feeds=feeds), demo.url, env=ENV)
        await calls(gw, 4)  # pass, though the webhook never answers
        everything = settle(str(gw.db), lambda: tcp.seqs)
        udp.wait_for(set(everything))
        with anyio.fail_after(60):  # the webhook's trouble is logged (its timeout is 1s)
            while "timed out" not in gw.log_text():
                await anyio.sleep(0.1)
    finally:
        hanging.stop()
        tcp.stop()
        udp.stop()
    assert tcp.seqs == everything  # TCP: each row once, in order
    for message in tcp.messages + udp.messages:
        assert (message["pri"], message["version"], message["app"], message["msgid"]) == (
            "110",
            "1",
            "holdgate",
            "audit",
        )
        assert message["timestamp"] == message["record"]["ts"]
    calls_seen = [m["record"] for m in tcp.messages if m["record"]["target"] == "get_customer"]
    assert calls_seen and all(r["groups"] == ["support"] for r in calls_seen)
    assert SECRET not in gw.log_text()


async def test_a_reload_that_changes_a_feed_sends_to_the_new_place(demo, gateway_factory):
    first = WebhookReceiver(SECRET).start()
    second = WebhookReceiver(SECRET).start()
    try:
        gw = gateway_factory(
            CONFIG.format(url=demo.url, feeds=webhook(first.url)), demo.url, env=ENV
        )
        await calls(gw, 2)
        before = settle(str(gw.db), lambda: first.seqs)
        gw.config.write_text(CONFIG.format(url=demo.url, feeds=webhook(second.url)))
        with anyio.fail_after(30):
            while "feed 'siem' changed" not in gw.log_text():
                await anyio.sleep(0.1)
        await calls(gw, 2)
        after = settle(str(gw.db), lambda: first.seqs + second.seqs)
    finally:
        first.stop()
        second.stop()
    assert set(first.seqs) >= set(before)
    assert sorted(set(first.seqs + second.seqs)) == after  # the cursor carried over
    assert second.seqs and min(second.seqs) > before[-1] - 4  # at most a batch again


async def test_datasette_serves_the_store_with_its_descriptions_and_queries(
    demo, gateway_factory, tmp_path
):
    db = tmp_path / "holdgate.sqlite3"  # the default name, which the metadata describes
    no_feeds = CONFIG.format(url=demo.url, feeds="").replace("feeds:\n", "")
    gw = gateway_factory(no_feeds, demo.url, options={"holdgate_store": str(db)})
    await calls(gw, 2)
    with anyio.fail_after(60):
        async with connect(gw.url + "/mcp", BOB) as client:  # bob is not in support
            with pytest.raises(MCPError, match="denied"):
                await client.call_tool("get_customer", {"customer_id": 1})
    settle(str(db), lambda: event_seqs(str(db)))  # the writer is done with the call's rows
    port = free_port()
    log = tmp_path / "datasette.out"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [DATASETTE, "serve", str(db), "-m", str(METADATA), "-h", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc, log)
        base = f"http://127.0.0.1:{port}"
        with anyio.fail_after(60):
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                tables = (await http.get("/holdgate.json")).json()
                metadata = (await http.get("/-/metadata.json")).json()
                events_page = (await http.get("/holdgate/events")).text
                calls_rows = (await http.get("/holdgate/calls.json?_shape=array")).json()
                denials = (await http.get("/holdgate/denials.json?_shape=array")).json()
                approvals = await http.get("/holdgate/approvals_decided.json?_shape=array")
                sessions = (await http.get("/holdgate/v_sessions.json?_shape=array")).json()
    finally:
        stop(proc)
    names = {t["name"] for t in tables["tables"]}
    assert {"events", "sessions", "approvals", "feed_cursors", "recordings"} <= names
    assert {v["name"] for v in tables["views"]} == {
        "v_sessions",
        "v_approvals",
        "v_calls_by_identity",
    }
    described = metadata["databases"]["holdgate"]["tables"]
    assert set(described) >= {t["name"] for t in tables["tables"]}  # every table described
    assert "Every MCP message the gateway decided on" in events_page
    allowed = [c for c in calls_rows if c["target"] == "get_customer" and c["user"] == "alice"]
    assert len(allowed) == 2 and all(c["status"] == 200 for c in allowed)
    assert [(d["user"], d["target"]) for d in denials] == [("bob", "get_customer")]
    assert approvals.status_code == 200 and approvals.json() == []
    assert {s["user"] for s in sessions} == {"alice", "bob"}
    verified = holdgate_cli("verify", "--db", str(db))  # datasette read, never wrote
    assert verified.returncode == 0, verified.stderr
