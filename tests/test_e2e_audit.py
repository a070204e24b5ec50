"""The audit trail of a real session: rows in order, flow files, the chain, the CLI on top."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest
from click.testing import CliRunner
from mcp import MCPError
from mitmproxy import io

from helpers.clients import connect, raw_post
from helpers.configs import ALICE, identity
from helpers.leaks import assert_nothing_leaked
from helpers.processes import BIN, start_demo, stop
from helpers.recordings import joined_recording
from holdgate.cli.main import main

pytestmark = pytest.mark.anyio

UPSTREAM_TOKEN = "upstream-token-5b0d9e2f"
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
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
  - name: support
    match: {{groups: [support], tool: ["get_customer", "search_customers", "slow_echo"]}}
    action: allow
masking:
  - name: pii
    detectors: [email, credit_card]
    strategy: redact
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


async def test_a_session_is_recorded_in_order_and_replayable(session):
    gw, demo = session
    async with connect(gw.url + "/mcp", ALICE, mode="legacy") as client:
        await client.call_tool("get_customer", {"customer_id": 1})
        with pytest.raises(MCPError):
            await client.call_tool("exec_shell", {"command": "id"})
        failing = await client.call_tool("get_customer", {"customer_id": "not-a-number"})
        assert failing.is_error
    malformed = raw_post(gw.url + "/mcp", b"{bad", ALICE)
    assert malformed.status == 400
    stop(gw.proc)  # flushes the writer and the recordings

    db = sqlite3.connect(gw.db)
    db.row_factory = sqlite3.Row
    calls = [
        (r["direction"], r["target"], r["decision"], r["rule"], r["user"])
        for r in db.execute("select * from events where method = 'tools/call' order by seq")
    ]
    requests = [c for c in calls if c[0] == "request"]
    assert requests == [
        ("request", "get_customer", "allow", "support", "alice"),
        ("request", "exec_shell", "deny", "no shell", "alice"),
        ("request", "get_customer", "allow", "support", "alice"),
    ]
    answers = [c for c in calls if c[0] == "response"]
    assert [a[1] for a in answers] == ["get_customer", "get_customer"]
    bad = db.execute("select * from events where decision = 'malformed'").fetchone()
    assert bad is not None and bad["user"] == "alice" and bad["status"] == 400

    session_id = db.execute("select session_id from events where target = 'exec_shell'").fetchone()[
        0
    ]
    flow_file = joined_recording(gw.recordings, session_id, gw.cwd / "session.mitm")
    with flow_file.open("rb") as fh:
        flows = list(io.FlowReader(fh).stream())
    assert any("no shell" in (f.comment or "") for f in flows)
    replay = subprocess.run(
        [str(BIN / "mitmdump"), "-nr", str(flow_file)], capture_output=True, timeout=60
    )
    assert replay.returncode == 0

    assert_nothing_leaked(gw, UPSTREAM_TOKEN, ALICE["X-API-Key"])
    seen = json.dumps(demo.requests())
    assert "demo-alice-support" not in seen and f"Bearer {UPSTREAM_TOKEN}" in seen

    runner = CliRunner()
    ok = runner.invoke(main, ["verify", "--db", str(gw.db)], catch_exceptions=False)
    assert ok.exit_code == 0 and "hash chain intact" in ok.output
    shown = runner.invoke(main, ["sessions", "show", session_id, "--db", str(gw.db)])
    assert "exec_shell  deny by 'no shell'" in shown.output
    denial = next(line for line in shown.output.splitlines() if "exec_shell  deny" in line)
    seq = denial.split()[0].lstrip("#")
    explained = runner.invoke(
        main,
        ["policy", "explain", str(gw.config), "--event", seq, "--db", str(gw.db)],
        env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN},
    )
    assert explained.exit_code == 0, explained.output
    assert "recorded: deny by 'no shell'" in explained.output
    assert "MATCH rule 'no shell'" in explained.output
    assert "decision: deny by 'no shell'" in explained.output
    assert "note: recorded under" not in explained.output  # the same config decided it
    missing = runner.invoke(
        main,
        ["policy", "explain", str(gw.config), "--event", "999999", "--db", str(gw.db)],
        env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN},
    )
    assert missing.exit_code == 1 and "no event with seq 999999" in missing.output
    exported = runner.invoke(main, ["export", "--db", str(gw.db), "--user", "alice"])
    lines = [json.loads(line) for line in exported.output.splitlines()]
    assert {line["user"] for line in lines} == {"alice"}
    assert len(lines) == db.execute("select count(*) from events where user='alice'").fetchone()[0]
    review = runner.invoke(
        main,
        ["review", "--db", str(gw.db), "--config", str(gw.config)],
        env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN},
    )
    unused = next(line for line in review.output.splitlines() if "Unused grants" in line)
    assert "demo tool search_customers" in unused and "get_customer" not in unused
    assert "tool: [get_customer]" in review.output  # the least-privilege suggestion
    db.execute("update events set decision = 'allow' where target = 'exec_shell'")
    db.commit()
    broken = runner.invoke(main, ["verify", "--db", str(gw.db)])
    assert broken.exit_code == 1 and "events seq" in broken.output


async def test_unwritable_store_refuses_new_calls(session, tmp_path):
    gw, _ = session
    async with connect(gw.url + "/mcp", ALICE) as client:
        assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
    holder = sqlite3.connect(gw.db, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")  # the store cannot be written while this holds
    try:
        refused = None
        for _ in range(40):
            response = raw_post(
                gw.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, ALICE
            )
            if response.status == 503:
                refused = response
                break
            import time

            time.sleep(0.5)
        assert refused is not None, "the gateway kept serving with an unwritable store"
        assert "audit store" in refused.json()["error"]["message"]
    finally:
        holder.rollback()
        holder.close()


async def test_empty_recordings_option_writes_no_flow_files_but_keeps_the_record(
    tmp_path, gateway_factory
):
    demo = start_demo(tmp_path, "--expect-token", UPSTREAM_TOKEN)
    try:
        gw = gateway_factory(
            CONFIG.format(url=demo.url),
            demo.url,
            env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN},
            options={"holdgate_recordings": ""},
        )
        async with connect(gw.url + "/mcp", ALICE) as client:
            assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
        stop(gw.proc)
    finally:
        stop(demo.proc)
    assert not list(tmp_path.rglob("*.mitm"))  # not in the gateway's working folder either
    with sqlite3.connect(gw.db) as conn:
        rows = conn.execute("SELECT direction FROM events WHERE target = 'get_customer'")
        directions = [d for (d,) in rows]
    assert directions == ["request", "response", "outcome"]
