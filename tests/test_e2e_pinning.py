"""Tool pinning through a real mitmdump: the demo server restarts with a changed tool."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.clients import connect
from helpers.configs import ALICE, identity
from helpers.processes import holdgate_cli, start_demo, stop

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
    on_tool_change: {on_change}
rules:
  - name: support tools
    match: {{tool: [get_customer, search_customers]}}
    action: allow
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
"""
)
cli = holdgate_cli


async def listed_and_called(url: str) -> tuple[set[str], str]:
    """The tool names the caller is shown, and how a get_customer call ends."""
    async with connect(url, ALICE) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        try:
            result = await client.call_tool("get_customer", {"customer_id": 1})
        except MCPError as exc:
            return names, f"refused: {exc}"
        return names, "error result" if result.is_error else "answered"


def pin_rows(db: Path) -> list[tuple[str, str, str]]:
    return [(r["tool"], r["event"], r["actor"]) for r in oneshot.tool_pin_rows(db)]


async def test_changed_tool_is_withheld_and_refused_until_repinned(tmp_path, gateway_factory):
    demo = start_demo(tmp_path)
    gw = gateway_factory(CONFIG.format(url=demo.url, on_change="deny"), demo.url)
    url = gw.url + "/mcp"
    try:
        names, outcome = await listed_and_called(url)
        assert {"get_customer", "search_customers"} <= names
        assert outcome == "answered"
    finally:
        stop(demo.proc)
    demo = start_demo(tmp_path, env={"DEMO_TOOL_VARIANT": "v2"}, port=demo.port)
    try:
        names, outcome = await listed_and_called(url)
        assert "get_customer" not in names  # the changed description never reaches the model
        assert "search_customers" in names
        assert outcome.startswith("refused") and "changed since it was pinned" in outcome
        assert "holdgate tools pin demo get_customer" in outcome

        listed = cli("tools", "list", "--changed", "--db", str(gw.db))
        assert listed.returncode == 0, listed.stderr
        assert "demo/get_customer  CHANGED" in listed.stdout
        assert "changed: description" in listed.stdout
        assert "search_customers" not in listed.stdout
        shown = cli("tools", "show", "demo", "get_customer", "--db", str(gw.db))
        assert '-  "description":' in shown.stdout and '+  "description":' in shown.stdout

        stale = cli(
            "tools",
            "pin",
            "demo",
            "get_customer",
            "--as",
            "sec",
            "--digest",
            "not-hex",
            "--db",
            str(gw.db),
        )
        assert stale.returncode == 1 and "it changed again" in stale.stderr
        repin = cli(
            "tools",
            "pin",
            "demo",
            "get_customer",
            "--as",
            "sec-lead",
            "--reason",
            "reviewed",
            "--db",
            str(gw.db),
        )
        assert repin.returncode == 0, repin.stderr
        with anyio.fail_after(10):
            while (await listed_and_called(url))[1] != "answered":
                await anyio.sleep(0.3)
        names, _ = await listed_and_called(url)
        assert "get_customer" in names
    finally:
        stop(demo.proc)
    rows = pin_rows(gw.db)
    assert ("get_customer", "first-seen", "gateway") in rows
    assert ("get_customer", "changed", "gateway") in rows
    assert rows[-1] == ("get_customer", "pinned", "sec-lead")
    assert [r for r in rows if r[0] == "search_customers"] == [
        ("search_customers", "first-seen", "gateway")
    ]
    refused = [e for e in oneshot.export_rows(gw.db) if e["rule"] == "tool-changed"]
    assert refused and all(e["decision"] == "deny" for e in refused)


async def test_alert_lets_calls_through_and_records_the_change(tmp_path, gateway_factory):
    demo = start_demo(tmp_path)
    gw = gateway_factory(CONFIG.format(url=demo.url, on_change="alert"), demo.url)
    url = gw.url + "/mcp"
    try:
        await listed_and_called(url)
    finally:
        stop(demo.proc)
    demo = start_demo(tmp_path, env={"DEMO_TOOL_VARIANT": "v2"}, port=demo.port)
    try:
        names, outcome = await listed_and_called(url)
    finally:
        stop(demo.proc)
    assert "get_customer" in names and outcome == "answered"
    assert ("get_customer", "changed", "gateway") in pin_rows(gw.db)
    with anyio.fail_after(10):  # the log reaches the file when mitmdump flushes it
        while "changed since pinned" not in gw.log_text():
            await anyio.sleep(0.2)


async def test_pins_survive_a_gateway_restart(tmp_path, gateway_factory):
    """A restarted gateway reads the pins from the store: the change is still caught."""
    demo = start_demo(tmp_path)
    config = CONFIG.format(url=demo.url, on_change="deny")
    first = gateway_factory(config, demo.url)
    try:
        await listed_and_called(first.url + "/mcp")
    finally:
        stop(first.proc)
        stop(demo.proc)
    demo = start_demo(tmp_path, env={"DEMO_TOOL_VARIANT": "v2"}, port=demo.port)
    second = gateway_factory(config, demo.url)  # same tmp_path: same store
    try:
        # Without the stored pin the new definition would be pinned as first seen.
        names, outcome = await listed_and_called(second.url + "/mcp")
        assert "get_customer" not in names
        assert outcome.startswith("refused")
    finally:
        stop(demo.proc)
    assert second.db == first.db
    changed = [r for r in oneshot.tool_pin_rows(second.db) if r["event"] == "changed"]
    assert len(changed) == 1 and json.loads(changed[0]["definition"])["name"] == "get_customer"


async def test_approve_holds_calls_of_a_changed_tool_for_a_human(tmp_path, gateway_factory):
    demo = start_demo(tmp_path)
    on_change = "{action: approve, approvers: [security], timeout: 20s}"
    gw = gateway_factory(CONFIG.format(url=demo.url, on_change=on_change), demo.url)
    url = gw.url + "/mcp"
    try:
        await listed_and_called(url)
    finally:
        stop(demo.proc)
    demo = start_demo(tmp_path, env={"DEMO_TOOL_VARIANT": "v2"}, port=demo.port)
    try:
        async with anyio.create_task_group() as tg:
            outcomes = []

            async def list_and_call() -> None:
                outcomes.append(await listed_and_called(url))

            tg.start_soon(list_and_call)
            with anyio.fail_after(15):
                while not (gw.db.exists() and oneshot.pending_approvals(gw.db)):
                    await anyio.sleep(0.1)
            pending = oneshot.pending_approvals(gw.db)[0]
            assert (pending["rule"], pending["tool"]) == ("tool-changed", "get_customer")
            assert json.loads(pending["approvers"]) == ["security"]
            approved = cli(
                "approvals",
                "approve",
                pending["approval_id"],
                "--as",
                "sec",
                "--break-glass",
                "--reason",
                "in a test",
                "--db",
                str(gw.db),
            )
            assert approved.returncode == 0, approved.stderr
    finally:
        stop(demo.proc)
    names, outcome = outcomes[0]
    assert "get_customer" in names and outcome == "answered"
