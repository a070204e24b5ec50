"""Policy through the real gateway: discovery filtering, rate limits, batches."""

from __future__ import annotations

import pytest
from mcp import MCPError

from helpers.clients import connect
from helpers.configs import ALICE, BOB, identity

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, resources/list,
                      prompts/list, server/discover]}}
    action: allow
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
  - name: support reads customers
    match: {{groups: [support], tool: ["get_customer", "search_*"]}}
    action: allow
    limit: 3/min
  - name: engineers echo
    match: {{groups: [engineering], tool: slow_echo}}
    action: allow
  - name: support prompts
    match: {{groups: [support], method: prompts/get}}
    action: allow
"""
)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_list_shows_only_what_the_caller_may_use(gateway, mode):
    async with connect(gateway.url + "/mcp", ALICE, mode=mode) as client:
        alice = {t.name for t in (await client.list_tools()).tools}
        prompts = {p.name for p in (await client.list_prompts()).prompts}
    async with connect(gateway.url + "/mcp", BOB, mode=mode) as client:
        bob = {t.name for t in (await client.list_tools()).tools}
        bob_prompts = {p.name for p in (await client.list_prompts()).prompts}
    assert alice == {"get_customer", "search_customers"}
    assert bob == {"slow_echo"}
    assert prompts == {"summarize_customer"} and bob_prompts == set()


async def test_rate_limit_is_32005_per_identity(gateway):
    async with connect(gateway.url + "/mcp", ALICE) as client:
        for _ in range(3):
            assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
        with pytest.raises(MCPError) as info:
            await client.call_tool("get_customer", {"customer_id": 1})
    assert info.value.code == -32005
    assert "rate limit" in info.value.message
