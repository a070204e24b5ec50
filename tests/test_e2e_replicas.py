"""Gateways on one PostgreSQL store: real mitmdump processes, a real PostgreSQL 15 server
(started by the suite), the 2.x demo server and the official SDK client."""

from __future__ import annotations

import json
import socket
import subprocess

import anyio
import psycopg
import pytest

from helpers.clients import connect, raw_post
from helpers.configs import ALICE, BOB, identity
from helpers.postgres import pause, start_again, start_postgres, stop_postgres
from helpers.processes import free_port, gateway_command, holdgate_cli, stop
from holdgate import store

pytestmark = pytest.mark.anyio

HASH_KEY = "replica-shared-hash-key-5b1e"
CONFIG = (
    "version: 1\n"
    + identity("alice", "bob", "dana")
    + """upstreams:
  - name: demo
    url: {url}
hash_key: {hash_key}
rules:
  - name: handshake
    match: {{method: [initialize, server/discover, ping, "notifications/*", tools/list]}}
    action: allow
  - name: support reads
    match: {{groups: [support], tool: [get_customer, search_customers]}}
    action: allow
"""
)


def config(demo, hash_key: str | None = HASH_KEY) -> str:
    text = CONFIG.format(url=demo.url, hash_key=hash_key or "")
    return text if hash_key else text.replace("hash_key: \n", "")


async def test_a_gateway_records_into_postgresql(demo, gateway_factory, pg_url):
    gw = gateway_factory(config(demo), demo.url, options={"holdgate_store": pg_url})
    async with connect(gw.url + "/mcp", ALICE) as client:
        result = await client.call_tool("get_customer", {"customer_id": 1})
    assert not result.is_error
    with store.open_store(pg_url, create=False) as opened:
        calls = [e for e in opened.events() if e["target"] == "get_customer"]
        assert [c["direction"] for c in calls] == ["request", "response", "outcome"]
        assert opened.verify().ok
    listed = holdgate_cli("sessions", "list", "--store", pg_url)
    assert listed.returncode == 0 and "alice" in listed.stdout
    exported = holdgate_cli("export", env_store=pg_url)
    assert exported.returncode == 0, exported.stderr
    assert any(
        json.loads(line)["target"] == "get_customer" for line in exported.stdout.splitlines()
    )


def refused_start(tmp_path, text: str, *options: str) -> str:
    """Run mitmdump with the bundle; it must stop at once (exit 1). Its output."""
    path = tmp_path / "holdgate.yaml"
    path.write_text(text)
    cmd = gateway_command("--listen-host", "127.0.0.1", "--listen-port", str(free_port()))
    cmd += ["--set", f"holdgate_config={path}", "--set", "holdgate_admin="]
    for option in options:
        cmd += ["--set", option]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    return output


def test_a_shared_store_without_hash_key_stops_the_gateway(tmp_path, demo, pg_url):
    output = refused_start(tmp_path, config(demo, hash_key=None), f"holdgate_store={pg_url}")
    assert "a PostgreSQL store (holdgate_store) is shared by replicas" in output
    assert "set `hash_key`" in output


def test_an_unreachable_postgresql_stops_the_gateway_without_its_password(tmp_path, demo):
    url = f"postgresql://holdgate:pw-never-shown@127.0.0.1:{free_port()}/holdgate"
    output = refused_start(tmp_path, config(demo), f"holdgate_store={url}")
    assert "cannot open the audit store" in output
    assert "pw-never-shown" not in output


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_concurrent_calls_through_two_replicas_make_one_chain(
    demo, gateway_factory, tmp_path, backend, request
):
    where = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else str(tmp_path / "shared.sqlite3")
    )
    replicas = [
        gateway_factory(config(demo), demo.url, options={"holdgate_store": where}) for _ in range(2)
    ]
    calls = 40

    async def call(i: int) -> bool:
        gw = replicas[i % 2]
        async with connect(gw.url + "/mcp", ALICE) as client:
            result = await client.call_tool("get_customer", {"customer_id": i % 20 + 1})
        return not result.is_error

    async with anyio.create_task_group() as tg:
        results: list[bool] = []

        async def run(i: int) -> None:
            results.append(await call(i))

        for i in range(calls):
            tg.start_soon(run, i)
    assert results == [True] * calls
    for gw in replicas:
        stop(gw.proc)  # every queued row written
    with store.open_store(where, create=False) as opened:
        report = opened.verify()
        rows = opened.events()
    assert report.ok, report.problem
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for direction in ("request", "response", "outcome"):
        assert sum(r["target"] == "get_customer" and r["direction"] == direction for r in rows) == (
            calls
        )


async def test_a_gateway_refuses_while_postgresql_is_down_and_recovers_by_itself(
    demo, gateway_factory
):
    server = start_postgres()  # the test's own: it is stopped and started again
    try:
        gw = gateway_factory(
            config(demo), demo.url, options={"holdgate_store": server.fresh_database()}
        )
        opening = {  # a call that needs no session: each one opens a new one
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        assert raw_post(gw.url + "/mcp", opening, ALICE).status == 200
        pause(server)
        with anyio.fail_after(30):
            while (refused := raw_post(gw.url + "/mcp", opening, ALICE)).status != 503:
                await anyio.sleep(0.2)  # the first may be refused only once its write fails
        assert "audit store" in refused.json()["error"]["message"]
        assert "password" not in gw.log_text().lower()
        start_again(server)
        with anyio.fail_after(30):
            while (answered := raw_post(gw.url + "/mcp", opening, ALICE)).status != 200:
                assert answered.status == 503
                await anyio.sleep(0.5)
        assert gw.proc.poll() is None  # the same gateway, never restarted
        assert "writable again" in gw.log_text()
    finally:
        stop_postgres(server)


async def test_a_session_opened_on_one_replica_is_its_owners_on_every_replica(
    demo, gateway_factory, pg_url
):
    a, b = (
        gateway_factory(config(demo), demo.url, options={"holdgate_store": pg_url})
        for _ in range(2)
    )
    opening = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    opened = raw_post(a.url + "/mcp", opening, ALICE)
    session = next(v for k, v in opened.headers.items() if k.lower() == "mcp-session-id")
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    stolen = raw_post(b.url + "/mcp", listing, {**BOB, "Mcp-Session-Id": session})
    assert stolen.status == 404  # B never saw the session open, and still knows it is alice's
    assert stolen.json()["error"]["message"] == "session not found; initialize a new one"
    own = raw_post(b.url + "/mcp", listing, {**ALICE, "Mcp-Session-Id": session})
    assert own.status == 200, own.body
    with psycopg.connect(pg_url) as conn:  # the owners table keeps a digest, not the id
        owners = conn.execute("SELECT session_key, owner FROM session_owners").fetchall()
    assert [owner for _, owner in owners] == ["alice"]
    assert all(session not in key for key, _ in owners)


def test_two_gateways_on_one_host_listening_by_their_mode_spec_both_start(
    demo, gateway_factory, pg_url
):
    """Each names itself by the address its mode listens on, not by `listen_port` (#28)."""
    gateways = [
        gateway_factory(
            config(demo), demo.url, options={"holdgate_store": pg_url}, listen_in_mode=True
        )
        for _ in range(2)
    ]
    for gw in gateways:
        assert raw_post(gw.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}).status in (
            200,
            401,
        )
        assert gw.proc.poll() is None
    listed = holdgate_cli("replicas", "--store", pg_url)
    assert listed.returncode == 0, listed.stderr
    host = socket.gethostname()
    for gw in gateways:
        name = f"{host}:127.0.0.1:{gw.port}"
        line = next(line for line in listed.stdout.splitlines() if f'"{name}"' in line)
        assert "alive" in line and f'listen "127.0.0.1:{gw.port}"' in line
