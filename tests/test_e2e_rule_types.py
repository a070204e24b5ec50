"""Argument rules against values of another type, through a real mitmdump and the demo
server (pydantic, lax: it coerces "1" to 1): what an upstream could read as the value a
deny or approve rule names is refused or held, never forwarded. And a grant is for the
method it was given on: an approved `tools/call` does not pass a `prompts/get` of the same
name and arguments."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.approvals import wait_for_pending
from helpers.clients import connect, raw_post
from helpers.configs import ALICE, identity
from helpers.processes import holdgate_cli

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "dana", groups={"alice": ["support"], "dana": ["dba"]})
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: customer 1 is off limits
    match: {{tool: get_customer, args: {{"$.customer_id": {{in: [1]}}}}}}
    action: deny
  - name: deletes need a DBA
    match: {{tool: run_sql, args: {{"$.query": {{search: DELETE}}}}}}
    action: approve
    approvers: [dba]
    timeout: 20s
  - name: summary tool needs a DBA
    match: {{tool: summarize_customer}}
    action: approve
    approvers: [dba]
    timeout: 20s
    grant: 10m
  - name: summary prompt needs a DBA
    match: {{prompt: summarize_customer}}
    action: approve
    approvers: [dba]
    timeout: 20s
  - name: reads
    match: {{tool: [get_customer, run_sql]}}
    action: allow
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, prompts/list,
                      server/discover]}}
    action: allow
"""
)


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


@pytest.mark.parametrize("customer_id", ["1", " 1", "1.0", "1e0", True, [1]])
def test_a_customer_id_the_upstream_reads_as_1_is_denied(gateway, demo, customer_id):
    answer = raw_post(
        gateway.url + "/mcp", tool_call("get_customer", {"customer_id": customer_id}), ALICE
    )
    body = answer.json()
    assert body["error"]["code"] == -32003, body
    assert "customer 1 is off limits" in body["error"]["message"]
    assert demo.calls_to("get_customer") == []


async def test_another_customer_as_a_string_is_still_denied_but_2_is_served(gateway, demo):
    """A string is another type than the rule's number: undecidable, so the deny fires."""
    async with connect(gateway.url + "/mcp", ALICE) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("get_customer", {"customer_id": "2"})
        served = await client.call_tool("get_customer", {"customer_id": 2})
    assert refused.value.code == -32003
    assert not served.is_error and demo.calls_to("get_customer") == [{"customer_id": 2}]


@pytest.mark.parametrize(
    "query",
    [["DELETE FROM orders WHERE id = 1"], {"sql": "DELETE FROM orders WHERE id = 1"}],
    ids=["list", "object"],
)
async def test_a_delete_wrapped_in_a_list_or_object_waits_for_a_dba(gateway, demo, query):
    async with connect(gateway.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            errors: list[MCPError] = []

            async def call() -> None:
                try:
                    await client.call_tool("run_sql", {"query": query})
                except MCPError as exc:
                    errors.append(exc)

            tg.start_soon(call)
            pending = await wait_for_pending(gateway.db)
            assert pending["rule"] == "deletes need a DBA"
            denied = holdgate_cli(
                "approvals",
                "deny",
                pending["approval_id"],
                "--as",
                "dana",
                "--break-glass",
                "--reason",
                "in a test",
                "--db",
                str(gateway.db),
            )
            assert denied.returncode == 0, denied.stderr
    assert errors and errors[0].code == -32004
    assert demo.calls_to("run_sql") == []


async def test_a_grant_on_a_tool_call_does_not_pass_a_prompt_of_the_same_name(gateway, demo):
    args = {"customer_id": "2"}
    db = str(gateway.db)
    async with connect(gateway.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "summarize_customer", args)
            first = await wait_for_pending(gateway.db)
            holdgate_cli(
                "approvals",
                "approve",
                first["approval_id"],
                "--as",
                "dana",
                "--break-glass",
                "--reason",
                "in a test",
                "--db",
                db,
            )
        errors: list[MCPError] = []
        async with anyio.create_task_group() as tg:

            async def prompt() -> None:
                try:
                    await client.get_prompt("summarize_customer", args)
                except MCPError as exc:
                    errors.append(exc)

            tg.start_soon(prompt)
            with anyio.fail_after(15):
                while True:
                    waiting = [p for p in oneshot.pending_approvals(gateway.db) if p is not first]
                    second = [p for p in waiting if p["approval_id"] != first["approval_id"]]
                    if second:
                        break
                    await anyio.sleep(0.1)
            holdgate_cli(
                "approvals",
                "deny",
                second[0]["approval_id"],
                "--as",
                "dana",
                "--break-glass",
                "--reason",
                "in a test",
                "--db",
                db,
            )
    assert errors and errors[0].code == -32004
    got = [m for m in demo.messages() if m.get("method") == "prompts/get"]
    assert got == []
