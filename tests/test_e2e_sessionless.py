"""Sessions without a session id through a real gateway: MCP 2026-07-28 clients (the SDK in
`auto` mode) are grouped per identity and client, each group with its own flow files; legacy
clients keep their real Mcp-Session-Id; a traceparent reaches the rows and the export; a
hostile client's clientInfo and traceparent are neither trusted nor able to name a file."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from click.testing import CliRunner
from mcp.types import Implementation

from helpers.clients import META, MODERN, connect, raw_post
from helpers.configs import ALICE, BOB, identity
from helpers.processes import stop
from helpers.recordings import flows_of, read_every_file
from holdgate.cli.main import main

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: protocol
    match: {{method: [initialize, server/discover, "notifications/*", ping, tools/list]}}
    action: allow
  - name: lookups
    match: {{tool: get_customer}}
    action: allow
"""
)
CALL_HEADERS = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def rows(db: Any, sql: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]


def raw_call(client_info: Any, **meta: Any) -> dict[str, Any]:
    params = {
        "name": "get_customer",
        "arguments": {"customer_id": 1},
        "_meta": {**META, "io.modelcontextprotocol/clientInfo": client_info, **meta},
    }
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}


async def test_modern_clients_are_grouped_per_identity_and_client(demo, gateway_factory, tmp_path):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    url = gw.url + "/mcp"
    for headers in (ALICE, BOB):
        async with connect(
            url, headers, client_info=Implementation(name="agent", version="1")
        ) as c:
            await c.call_tool("get_customer", {"customer_id": 1})
    async with connect(url, ALICE, client_info=Implementation(name="ide", version="2")) as c:
        await c.call_tool("get_customer", {"customer_id": 2})
    alice = {**ALICE, **CALL_HEADERS}
    traced = raw_post(
        url, raw_call({"name": "agent", "version": "1"}, traceparent=TRACEPARENT), alice
    )
    forged = raw_post(
        url, raw_call({"name": "agent", "version": "1"}, traceparent="00-x-y-01"), alice
    )
    hostile = {"name": "../../../etc/" + "x" * 100_000 + "\r\nkind: mcp", "version": "+/+"}
    attacked = raw_post(url, raw_call(hostile), {**BOB, **CALL_HEADERS})
    assert [r.status for r in (traced, forged, attacked)] == [200] * 3, traced.body
    stop(gw.proc)  # flushes the store and the recordings

    sessions = rows(gw.db, "select * from v_sessions order by first_seen")
    assert [(s["user"], s["kind"], s["client"]) for s in sessions][:3] == [
        ("alice", "grouped", "agent/1"),
        ("bob", "grouped", "agent/1"),
        ("alice", "grouped", "ide/2"),
    ]
    (bad,) = sessions[3:]
    assert bad["user"] == "bob" and len(bad["client"]) <= 120 and "\n" not in bad["client"]
    listed = cli("sessions", "list", "--db", str(gw.db)).splitlines()
    assert len(listed) == 4 and all(" grouped " in line for line in listed)
    assert '"agent/1"' in listed[0] and '"ide/2"' in listed[2]

    for session in sessions:
        shown = cli("sessions", "show", session["session_id"], "--db", str(gw.db))
        assert {line.split()[2] for line in shown.splitlines()} == {session["user"]}
        flows = flows_of(gw.recordings, session["session_id"])
        assert flows, session
        assert {f.metadata["holdgate"]["identity"]["user"] for f in flows} == {session["user"]}
        assert {f.metadata["holdgate"]["session"] for f in flows} == {session["session_id"]}
    # every file is named for a grouped id: the hostile clientInfo named none
    files = read_every_file(gw.recordings)
    assert all(path.name.startswith("hg-") and path.parent == gw.recordings for path in files)
    assert sum(len(f) for f in files.values()) == sum(
        len(flows_of(gw.recordings, s["session_id"])) for s in sessions
    )

    calls = rows(gw.db, "select * from events where jsonrpc_id = '7' order by seq")
    traced_rows = [r for r in calls if r["traceparent"] == TRACEPARENT]
    assert [r["direction"] for r in traced_rows] == ["request", "response", "outcome"]
    flagged = [r for r in calls if json.loads(r["extra"] or "{}").get("traceparent_invalid")]
    assert len(flagged) == 1 and flagged[0]["traceparent"] is None
    assert "00-x-y-01" not in json.dumps(rows(gw.db, "select * from events"))
    exported = [json.loads(line) for line in cli("export", "--db", str(gw.db)).splitlines()]
    assert {e["traceparent"] for e in exported} == {None, TRACEPARENT}
    assert list(exported[0])[-1] == "traceparent"  # the feed only grows at its end


async def test_legacy_clients_keep_their_protocol_session(demo, gateway_factory):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    async with connect(gw.url + "/mcp", ALICE, mode="legacy") as client:
        await client.call_tool("get_customer", {"customer_id": 1})
    stop(gw.proc)
    (session,) = rows(gw.db, "select * from v_sessions")
    assert session["kind"] == "mcp" and not session["session_id"].startswith("hg-")
    assert session["client"]  # the SDK's initialize clientInfo
    events = rows(gw.db, "select * from events order by seq")
    initialize = [e for e in events if e["method"] == "initialize"]
    assert [(e["direction"], e["session_id"]) for e in initialize] == [
        ("request", None),
        ("response", session["session_id"]),
        ("outcome", session["session_id"]),
    ]
    others = [e for e in events if e["method"] != "initialize"]
    assert {e["session_id"] for e in others} == {session["session_id"]}
    assert flows_of(gw.recordings, session["session_id"])
