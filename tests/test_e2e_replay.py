"""Shadow replay on traffic a real gateway recorded: `holdgate policy replay CANDIDATE`."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.clients import connect
from helpers.configs import ALICE, identity
from helpers.processes import holdgate_cli

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
{rules}
"""
)
LIVE = """
  - name: support reads customers
    match: {groups: [support], tool: [get_customer, search_customers]}
    action: allow
"""
CANDIDATE = """
  - name: no customer search
    match: {tool: search_customers, args: {"$.query": {search: "^a"}}}
    action: deny
  - name: support reads customers
    match: {groups: [support], tool: [get_customer, search_customers]}
    action: allow
  - name: support reads via SQL
    match: {groups: [support], tool: run_sql, args: {"$.query": {search: "(?i)^select"}}}
    action: allow
"""


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return holdgate_cli("policy", "replay", *args)


async def test_replay_reports_every_decision_the_candidate_would_change(
    demo, gateway_factory, tmp_path
):
    gw = gateway_factory(CONFIG.format(url=demo.url, rules=LIVE), demo.url)
    async with connect(gw.url + "/mcp", ALICE) as client:
        await client.call_tool("get_customer", {"customer_id": 1})
        await client.call_tool("search_customers", {"query": "ada"})
        await client.call_tool("search_customers", {"query": "bob"})
        for _ in range(2):
            with pytest.raises(MCPError):
                await client.call_tool("run_sql", {"query": "SELECT 1"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the writer thread commits within a moment
        calls = [r for r in oneshot.export_rows(gw.db) if r["method"] == "tools/call"]
        if len(calls) == 5:
            break
        time.sleep(0.1)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CONFIG.format(url=demo.url, rules=CANDIDATE))

    text = replay(str(candidate), "--db", str(gw.db))
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "would change" in out
    assert "deny by 'default-deny' -> allow by 'support reads via SQL': 2" in out
    assert "allow by 'support reads customers' -> deny by 'no customer search': 1" in out
    assert "alice -> demo tools/call search_customers" in out
    assert "get_customer" not in out  # unchanged decisions are not listed

    data = json.loads(replay(str(candidate), "--db", str(gw.db), "--format", "json").stdout)
    changed = {(g["candidate"]["rule"], g["count"]) for g in data["changed"]}
    assert changed == {("support reads via SQL", 2), ("no customer search", 1)}
    assert data["unchanged"] == data["considered"] - 3

    gate = replay(str(candidate), "--db", str(gw.db), "--fail-on-change")
    assert gate.returncode == 1
    same = replay(str(gw.config), "--db", str(gw.db), "--fail-on-change")
    assert same.returncode == 0 and "0 would change" in same.stdout
    later = replay(str(candidate), "--db", str(gw.db), "--since", "2999-01-01T00:00:00Z")
    assert "0 recorded decisions replayed" in later.stdout
    bad = replay(str(candidate), "--db", str(gw.db), "--since", "last tuesday")
    assert bad.returncode == 2 and "neither an ISO time" in bad.stderr
