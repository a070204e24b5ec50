"""Flow files through a real gateway: a recordings folder that breaks mid-run is an error
the operator sees while traffic and the audit go on; a replay of a recorded call is
decided by the gateway, never sent to the upstream."""

from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest
from mitmproxy.io import FlowWriter

from helpers.clients import connect
from helpers.configs import ALICE, identity
from helpers.processes import MITMDUMP, start_demo, stop
from helpers.recordings import read_every_file

pytestmark = pytest.mark.anyio

UPSTREAM_TOKEN = "upstream-token-7c1e0a93"
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
    inject:
      headers:
        Authorization: "Bearer ${{env:UPSTREAM_TOKEN}}"
rules:
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list]}}
    action: allow
  - name: support
    match: {{groups: [support], tool: get_customer}}
    action: allow
"""
)


@pytest.fixture
def session(tmp_path, gateway_factory):
    demo = start_demo(tmp_path, "--expect-token", UPSTREAM_TOKEN)
    gw = gateway_factory(
        CONFIG.format(url=demo.url), demo.url, env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN}
    )
    yield gw, demo
    stop(demo.proc)


def recorded_calls(gw) -> list:
    files = read_every_file(gw.recordings) if gw.recordings.is_dir() else {}
    return [
        flow
        for flows in files.values()
        for flow in flows
        if b'"tools/call"' in (flow.request.content or b"")
    ]


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


async def test_a_recordings_folder_broken_mid_run_is_seen_while_traffic_goes_on(session):
    gw, demo = session
    async with connect(gw.url + "/mcp", ALICE) as client:
        for n in range(3):
            assert not (await client.call_tool("get_customer", {"customer_id": n + 1})).is_error
        assert wait_for(lambda: len(recorded_calls(gw)) == 3)  # segments closed when idle
        moved = gw.cwd / "recordings-before"
        gw.recordings.rename(moved)
        gw.recordings.write_text("a file where the recordings folder was")
        for n in range(5):
            assert not (await client.call_tool("get_customer", {"customer_id": n + 1})).is_error
    stop(gw.proc)

    assert len(demo.calls_to("get_customer")) == 8  # traffic went on
    with sqlite3.connect(gw.db) as db:
        flows = db.execute(
            "SELECT count(DISTINCT flow_id) FROM events "
            "WHERE target = 'get_customer' AND direction = 'request'"
        ).fetchone()[0]
    assert flows == 8  # and the audit store recorded every call
    log = gw.log_text()
    lost = [line for line in log.splitlines() if "a flow recording was lost" in line]
    assert len(lost) == 1, log  # once for the kind, not once per flow
    assert "cannot write" in lost[0] and "NotADirectoryError: Not a directory" in lost[0]
    assert "flows not recorded (" in log and "could not be written: NotADirectoryError" in log
    summary = next(line for line in log.splitlines() if "flows not recorded" in line)
    assert int(summary.split("flows not recorded (")[1].split()[0]) >= 5  # counted
    assert [len(f) for f in read_every_file(moved).values()]  # what was written reads whole


async def test_a_replayed_recording_is_decided_by_the_gateway_not_sent_upstream(session):
    gw, demo = session
    async with connect(gw.url + "/mcp", ALICE) as client:
        assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
    assert wait_for(lambda: len(recorded_calls(gw)) == 1)
    (call,) = recorded_calls(gw)
    assert (call.request.host, call.request.port) == ("127.0.0.1", gw.port)
    assert call.request.headers["host"] == f"127.0.0.1:{gw.port}"
    replay = gw.cwd / "replay.mitm"
    with replay.open("wb") as fh:
        FlowWriter(fh).add(call)
    seen_before = len(demo.requests())
    with sqlite3.connect(gw.db) as db:
        before = db.execute("SELECT max(seq) FROM events").fetchone()[0]

    done = subprocess.run(
        [MITMDUMP, "-n", "-C", str(replay), "--set", "flow_detail=1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=gw.cwd,
    )
    assert done.returncode == 0, done.stderr
    assert "401" in done.stdout, done.stdout  # mitmdump saw the gateway's answer

    assert len(demo.requests()) == seen_before  # the upstream received nothing
    assert wait_for(lambda: refused_since(gw, before))
    (row,) = refused_since(gw, before)
    assert row["status"] == 401 and row["user"] is None
    stop(gw.proc)


def refused_since(gw, seq: int) -> list[sqlite3.Row]:
    with sqlite3.connect(gw.db) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM events WHERE seq > ? AND status = 401", (seq,)).fetchall()
