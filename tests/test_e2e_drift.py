"""Places where the code used to disagree with itself (issue 14), through a real mitmdump:
approvals masked less than events, the recording's marker not the live one, and the
decision naming whichever config was loaded when the flow ended."""

from __future__ import annotations

import json
import sqlite3

import anyio
import pytest
from mcp import MCPError
from mitmproxy.io import FlowReader

from helpers.approvals import APPROVALS_CONFIG, wait_for_pending
from helpers.clients import connect, raw_post
from helpers.configs import ALICE, identity
from helpers.processes import holdgate_cli, stop

DEMO_PER_TEST = True  # approved calls change the demo's data: a fresh demo each test

pytestmark = pytest.mark.anyio

MASKED_SQL = (
    APPROVALS_CONFIG
    + """masking:
  - name: sql pii
    detectors: [email]
    strategy: redact
    tools: [run_sql]
"""
)
DELETE_MAIL = {"query": "DELETE FROM customers WHERE email = 'victim.one@example.com'"}


async def test_an_approval_masks_arguments_as_the_events_do(demo, gateway_factory):
    gw = gateway_factory(MASKED_SQL.format(url=demo.url, timeout="20s", grant="0s"), demo.url)
    async with connect(gw.url + "/mcp", ALICE) as client:

        async def call() -> None:
            with pytest.raises(MCPError, match="approval denied"):
                await client.call_tool("run_sql", DELETE_MAIL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            pending = await wait_for_pending(gw.db)
            assert "victim.one@example.com" not in pending["args_masked"]
            assert "[REDACTED:email]" in pending["args_masked"]
            done = holdgate_cli(
                "approvals", "deny", pending["approval_id"], "--as", "dana", "--db", str(gw.db)
            )
            assert done.returncode == 0, done.stderr
    stop(gw.proc)
    with sqlite3.connect(gw.db) as db:
        stored = [
            r[0] for r in db.execute("select args_masked from events where target = 'run_sql'")
        ]
    assert stored and all("victim.one@example.com" not in (s or "") for s in stored)


OPEN = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: support reads
    match: {{tool: "get_*"}}
    action: allow
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
"""
)


def test_a_partly_denied_batch_is_marked_denied_in_its_recording(demo, gateway_factory):
    gw = gateway_factory(OPEN.format(url=demo.url), demo.url)
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_customer", "arguments": {"customer_id": 1}},
        },
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "exec_shell", "arguments": {"command": "id"}},
        },
    ]
    response = raw_post(gw.url + "/mcp", batch, ALICE)
    assert b"denied by rule 'default-deny'" in response.body  # the live answer
    stop(gw.proc)
    (path,) = gw.recordings.glob("*.mitm")
    with path.open("rb") as fh:
        (flow,) = list(FlowReader(fh).stream())
    assert flow.marked == ":no_entry:"
    assert "tools/call exec_shell: deny (rule 'default-deny')" in flow.comment
    assert "tools/call get_customer: allow (rule 'support reads')" in flow.comment


async def test_the_record_names_the_config_that_decided_not_the_one_loaded_later(
    demo, gateway_factory
):
    gw = gateway_factory(APPROVALS_CONFIG.format(url=demo.url, timeout="20s", grant="0s"), demo.url)
    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", {"query": "DELETE FROM orders"})
            pending = await wait_for_pending(gw.db)
            deciding = sqlite_one(gw.db, "select config_hash from config_versions order by seq")
            gw.config.write_text(gw.config.read_text() + "\n# reloaded while the call was held\n")
            with anyio.fail_after(15):  # the reload lands while the call is held
                while sqlite_one(gw.db, "select count(*) from config_versions") < 2:
                    await anyio.sleep(0.1)
            done = holdgate_cli(
                "approvals", "approve", pending["approval_id"], "--as", "dana", "--db", str(gw.db)
            )
            assert done.returncode == 0, done.stderr
    stop(gw.proc)
    later = sqlite_one(gw.db, "select config_hash from config_versions order by seq desc")
    assert later != deciding
    row = sqlite_one(
        gw.db,
        "select config_hash from events where direction='request' and approval_id is not null",
    )
    assert row == deciding


def sqlite_one(path, sql):
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchone()[0]


def read_flows(path):
    with path.open("rb") as fh:
        return list(FlowReader(fh).stream())


async def test_flow_state_is_saved_as_plain_json(demo, gateway_factory):
    """mitmproxy saves flow.metadata: the published state must be JSON all the way down."""
    gw = gateway_factory(OPEN.format(url=demo.url), demo.url)
    async with connect(gw.url + "/mcp", ALICE, mode="legacy") as client:
        await client.call_tool("get_customer", {"customer_id": 1})
    stop(gw.proc)
    flows = [f for path in gw.recordings.glob("*.mitm") for f in read_flows(path)]
    (flow,) = [f for f in flows if b"get_customer" in (f.request.content or b"")]
    published = flow.metadata["holdgate"]
    assert json.loads(json.dumps(published)) == published
    assert published["messages"][0]["decision"]["rule"] == "support reads"
    assert published["upstream"] == "demo"
