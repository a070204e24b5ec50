"""Approvals across replicas: real mitmdump gateways on one real PostgreSQL store. A hold
on one replica is decided through another's API; a replica's start leaves the others'
holds alone; a replica killed while it holds has its approval closed as "holder lost"."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest

from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls
from helpers.clients import connect, raw_post
from helpers.configs import ALICE, DANA
from helpers.processes import free_port, gateway_command, holdgate_cli, stop
from holdgate import store

pytestmark = pytest.mark.anyio

HASH_KEY = "hash_key: replica-approvals-key-7c2e\n"


def config(demo, timeout: str = "60s") -> str:
    return APPROVALS_CONFIG.format(url=demo.url, timeout=timeout, grant="0s") + HASH_KEY


def start(gateway_factory, demo, pg_url: str, replica: str):
    options = {
        "holdgate_store": pg_url,
        "holdgate_admin": f"127.0.0.1:{free_port()}",
        "holdgate_replica": replica,
    }
    gw = gateway_factory(config(demo), demo.url, options=options)
    host, _, port = gw.admin.partition(":")
    deadline = time.monotonic() + 15  # the approvals API opens just after the proxy port
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return gw
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read(pg_url: str, approval_id: str) -> store.ApprovalRecord | None:
    with store.open_store(pg_url, create=False) as opened:
        return opened.approval(approval_id)


async def wait_for_pending(pg_url: str) -> store.ApprovalRecord:
    with anyio.fail_after(20):
        while True:
            with store.open_store(pg_url) as opened:
                pending = opened.approvals(pending_only=True)
            if pending:
                return pending[0]
            await anyio.sleep(0.1)


def api(admin: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://{admin}{path}", data=data, headers=headers, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def replicas_listed(pg_url: str) -> str:
    done = holdgate_cli("replicas", "--store", pg_url)
    assert done.returncode == 0, done.stderr
    return done.stdout


def line_of(listing: str, replica: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(f'"{replica}"'))


async def held_call_released_by_other_replica(demo, gateway_factory, pg_url, *, late_b: bool):
    a = start(gateway_factory, demo, pg_url, "a")
    b = None if late_b else start(gateway_factory, demo, pg_url, "b")
    results: list[Any] = []
    async with connect(a.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                results.append(await client.call_tool("run_sql", DELETE))

            tg.start_soon(call)
            pending = await wait_for_pending(pg_url)
            assert pending["replica"] == "a"
            if b is None:  # B starts while A holds: A's hold must survive B's start
                b = start(gateway_factory, demo, pg_url, "b")
                await anyio.sleep(1)
                assert read(pg_url, pending["approval_id"])["state"] == "pending"  # type: ignore[index]
            path = f"/approvals/{pending['approval_id']}/approve"
            status, body = await anyio.to_thread.run_sync(api, b.admin, path, DANA, {})
            assert (status, body["state"]) == (200, "approved")
            with anyio.fail_after(10):
                while not results:
                    await anyio.sleep(0.05)
    assert not results[0].is_error
    assert sql_calls(demo) == [DELETE["query"]]  # forwarded once, by the holder
    return a, b, pending["approval_id"]


async def test_a_hold_on_a_is_released_by_a_decision_through_b(demo, gateway_factory, pg_url):
    a, _, _ = await held_call_released_by_other_replica(demo, gateway_factory, pg_url, late_b=False)
    listing = replicas_listed(pg_url)
    assert "alive" in line_of(listing, "a") and "alive" in line_of(listing, "b")
    assert "config drift" not in listing
    stop(a.proc)
    listing = replicas_listed(pg_url)
    assert "gone" in line_of(listing, "a") and "alive" in line_of(listing, "b")


async def test_a_replica_starting_while_a_holds_leaves_the_hold(demo, gateway_factory, pg_url):
    _, _, approval_id = await held_call_released_by_other_replica(
        demo, gateway_factory, pg_url, late_b=True
    )
    record = read(pg_url, approval_id)
    assert record is not None
    assert [(h["state"], h["decider"]) for h in record["history"]] == [
        ("pending", None),
        ("approved", "dana"),
    ]


async def test_a_killed_holder_is_closed_as_holder_lost(demo, gateway_factory, pg_url):
    a = start(gateway_factory, demo, pg_url, "a")
    b = start(gateway_factory, demo, pg_url, "b")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    body["params"] = {"name": "run_sql", "arguments": DELETE}  # type: ignore[assignment]
    async with anyio.create_task_group() as tg:
        answers: list[Any] = []

        async def call() -> None:
            try:
                answers.append(
                    await anyio.to_thread.run_sync(raw_post, a.url + "/mcp", body, ALICE)
                )
            except OSError as exc:  # the holder died under the call
                answers.append(exc)

        tg.start_soon(call)
        pending = await wait_for_pending(pg_url)
        a.proc.kill()
        a.proc.wait(timeout=10)
        with anyio.fail_after(25):  # the 10 s lease, then a sweep every 2 s
            while True:
                current = read(pg_url, pending["approval_id"])
                assert current is not None
                if current["state"] != "pending":
                    break
                await anyio.sleep(0.25)
    assert current["state"] == "expired"
    assert current["reason"] == 'holder lost: replica "a" stopped heartbeating'
    path = f"/approvals/{pending['approval_id']}/approve"
    status, answer = await anyio.to_thread.run_sync(api, b.admin, path, DANA, {})
    assert status == 409 and "expired" in answer["error"]
    assert sql_calls(demo) == []  # never forwarded
    assert "lapsed" in line_of(replicas_listed(pg_url), "a")


def refused_start(tmp_path, text: str, *options: str) -> str:
    """Run mitmdump with the bundle; it must stop at once (exit 1). Its output."""
    path = tmp_path / "refused.yaml"
    path.write_text(text)
    cmd = gateway_command("--listen-host", "127.0.0.1", "--listen-port", str(free_port()))
    cmd += ["--set", f"holdgate_config={path}", "--set", "holdgate_admin="]
    for option in options:
        cmd += ["--set", option]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    return output


async def test_two_live_gateways_with_one_replica_name(tmp_path, demo, gateway_factory, pg_url):
    a = start(gateway_factory, demo, pg_url, "a")
    output = refused_start(tmp_path, config(demo), f"holdgate_store={pg_url}", "holdgate_replica=a")
    assert 'holdgate_replica: replica "a" is already in use by a live gateway' in output
    assert a.proc.poll() is None  # the first one runs on
    assert "alive" in line_of(replicas_listed(pg_url), "a")


async def test_an_odd_replica_name_is_shown_quoted(demo, gateway_factory, pg_url):
    odd = 'east "1" \u00fc; DROP TABLE replicas;--'
    start(gateway_factory, demo, pg_url, odd)
    listing = replicas_listed(pg_url)
    assert listing.startswith('"east \\"1\\" \\u00fc; DROP TABLE replicas;--"  alive'), listing
