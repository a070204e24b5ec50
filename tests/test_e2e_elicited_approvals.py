"""Approvals without a held connection (MCP 2026-07-28 URL-mode elicitation), end to end.

A rule with `approval_via: elicitation` answers a call that needs approval at once with
`input_required`: a URL-mode elicitation pointing at the approval's status page and a
`requestState` token. The official SDK 2.x client follows it (its elicitation callback) and
retries; the gateway forwards the retry once the approval is decided. Clients that cannot
follow a link are held as before.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls, wait_for_pending
from helpers.browser import dump_dom
from helpers.clients import META, MODERN, connect, raw_post
from helpers.configs import ALICE, BOB
from helpers.leaks import assert_nothing_leaked
from helpers.processes import free_port, holdgate_cli, start_gateway, stop
from holdgate.approvals.elicitation import INPUT_KEY, STATE_PREFIX

pytestmark = pytest.mark.anyio

CONFIG = APPROVALS_CONFIG.replace(
    "    approvers: [dba]\n", "    approvers: [dba]\n    approval_via: elicitation\n"
)
URL_CAPABLE = {
    **META,
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
}


def start(gateway_factory, demo, timeout="60s", grant="0s"):
    return gateway_factory(
        CONFIG.format(url=demo.url, timeout=timeout, grant=grant),
        demo.url,
        options={"holdgate_admin": f"127.0.0.1:{free_port()}"},
    )


def decide(gw, approval_id: str, verb: str = "approve", who: str = "dana") -> None:
    done = holdgate_cli("approvals", verb, approval_id, "--as", who, "--db", str(gw.db))
    assert done.returncode == 0, done.stderr


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def delete_call(msg_id: int, **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": "run_sql", "arguments": DELETE, "_meta": URL_CAPABLE, **params},
    }


HEADERS = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "run_sql"}


def raw_call(gw, msg_id: int, who: dict[str, str] = ALICE, **params: Any) -> dict[str, Any]:
    answer = raw_post(gw.url + "/mcp", delete_call(msg_id, **params), {**HEADERS, **who})
    assert answer.status == 200, answer.body
    body: dict[str, Any] = answer.json()
    return body


class Follower:
    """The SDK client's elicitation callback: what a person in front of the client does
    with the link (`plan`: per round, approve first or not, then accept or decline)."""

    def __init__(self, gw, plan: list[tuple[str | None, str]]) -> None:
        self.gw, self.plan = gw, plan
        self.seen: list[types.ElicitRequestURLParams] = []

    async def __call__(self, context, params):
        assert isinstance(params, types.ElicitRequestURLParams), params
        self.seen.append(params)
        verb, action = self.plan[len(self.seen) - 1]
        if verb is not None:
            await anyio.to_thread.run_sync(decide, self.gw, params.elicitation_id, verb)
        return types.ElicitResult(action=action)


async def test_sdk_client_follows_the_link_and_its_retry_runs_once_approved(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    follower = Follower(gw, [(None, "accept"), ("approve", "accept")])
    async with connect(gw.url + "/mcp", ALICE, elicitation_callback=follower) as client:
        result = await client.call_tool("run_sql", DELETE)
    assert not result.is_error
    assert sql_calls(demo) == [DELETE["query"]]  # once, after the approval
    first, second = follower.seen
    assert first.url == second.url and first.elicitation_id == second.elicitation_id
    approval_id = first.elicitation_id
    record = oneshot.approval(gw.db, approval_id)
    assert record is not None and record["via"] == "elicitation"
    assert [h["state"] for h in record["history"]] == ["pending", "approved", "redeemed"]
    assert record["history"][-1]["decider"] == "alice"
    # the audit trail: every round carries the approval id; the last one is the call
    rounds = [
        json.loads(e["extra"] or "{}")
        for e in oneshot.export_rows(gw.db)
        if e["approval_id"] == approval_id and e["direction"] == "request"
    ]
    assert [r.get("approval", {}).get("state") for r in rounds] == [
        "pending",
        "pending",
        "approved",
    ]
    assert all("request_state_digest" in r for r in rounds[1:])
    assert not any(STATE_PREFIX in json.dumps(r) for r in rounds)  # a digest, not the token
    assert_nothing_leaked(gw, ALICE["X-API-Key"])


async def test_the_status_page_needs_its_link_and_shows_no_arguments(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    asked = raw_call(gw, 1)["result"]
    question = asked["inputRequests"][INPUT_KEY]["params"]
    assert asked["resultType"] == "input_required" and question["mode"] == "url"
    url = question["url"]
    status, headers, page = fetch(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "Waiting for an approver" in page and "DELETE" not in page
    rendered = dump_dom(url)  # as a person's browser shows it
    assert re.search(r'<p class="state" id="state">Waiting for an approver\.</p>', rendered)
    assert "<code>run_sql</code> on <code>demo</code>" in rendered
    assert fetch(re.sub(r"t=[0-9a-f]+", "t=" + "0" * 32, url))[0] == 404
    assert fetch(url.split("?")[0])[0] == 404
    listed = holdgate_cli("approvals", "list", "--db", str(gw.db)).stdout
    assert question["elicitationId"] in listed and "(via elicitation)" in listed
    assert sql_calls(demo) == []
    decide(gw, question["elicitationId"], "deny")
    assert "Denied" in fetch(url)[2]


async def test_a_declined_link_cancels_the_approval(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    follower = Follower(gw, [(None, "decline")])
    async with connect(gw.url + "/mcp", ALICE, elicitation_callback=follower) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("run_sql", DELETE)
    assert refused.value.error.code == -32004
    assert "cancelled by alice" in refused.value.error.message
    assert oneshot.approval(gw.db, follower.seen[0].elicitation_id)["state"] == "cancelled"
    assert sql_calls(demo) == []


async def test_a_denial_is_32004_naming_the_approver(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    follower = Follower(gw, [("deny", "accept")])
    async with connect(gw.url + "/mcp", ALICE, elicitation_callback=follower) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("run_sql", DELETE)
    assert refused.value.error.code == -32004
    assert "approval denied by dana" in refused.value.error.message
    assert sql_calls(demo) == []
    lines = [line for line in gw.log_text().splitlines() if "holdgate decision: " in line]
    approval = follower.seen[0].elicitation_id
    held = (
        f"alice tools/call run_sql: hold (rule 'destructive SQL needs a DBA'; approval {approval}"
    )
    assert any(held in line and "; approvers dba; expires " in line for line in lines), lines
    denied = "alice tools/call run_sql: denied by dana"
    assert any(denied in line and f"approval {approval})" in line for line in lines), lines


async def test_hostile_retries_replayed_forged_or_borrowed_tokens_are_refused(
    demo, gateway_factory
):
    gw = start(gateway_factory, demo)
    asked = raw_call(gw, 1)["result"]
    token = asked["requestState"]
    approval_id = asked["inputRequests"][INPUT_KEY]["params"]["elicitationId"]
    # bob borrows alice's token, and a forged MAC: void, nothing forwarded
    borrowed = raw_call(gw, 2, BOB, requestState=token)
    assert borrowed["error"]["code"] == -32004 and "approval void" in borrowed["error"]["message"]
    forged = raw_call(gw, 3, requestState=token[:-4] + "0000")
    assert "approval void" in forged["error"]["message"]
    # the same token for other arguments
    other = delete_call(4, requestState=token)
    other["params"]["arguments"] = {"query": "DELETE FROM orders"}
    edited = raw_post(gw.url + "/mcp", other, {**HEADERS, **ALICE}).json()
    assert "approval void" in edited["error"]["message"]
    decide(gw, approval_id)
    answers = {INPUT_KEY: {"action": "accept"}}
    ran = raw_call(gw, 5, requestState=token, inputResponses=answers)
    assert "result" in ran and not ran["result"].get("isError")
    replayed = raw_call(gw, 6, requestState=token, inputResponses=answers)
    assert "already used" in replayed["error"]["message"]
    assert sql_calls(demo) == [DELETE["query"]]
    # the upstream never saw the gateway's round
    (call,) = [m for m in demo.messages() if m.get("method") == "tools/call"]
    assert "requestState" not in call["params"] and "inputResponses" not in call["params"]
    kinds = [
        json.loads(e["extra"] or "{}").get("refused", {}).get("kind")
        for e in oneshot.export_rows(gw.db)
    ]
    assert kinds.count("tampered") == 3
    # the token is recorded as a digest only, here as in the flow files
    assert_nothing_leaked(gw, token, ALICE["X-API-Key"], BOB["X-API-Key"])


async def test_an_approval_outlives_a_gateway_restart(demo, tmp_path: Path):
    text = CONFIG.format(url=demo.url, timeout="60s", grant="0s")
    options = {"holdgate_admin": f"127.0.0.1:{free_port()}"}
    first = start_gateway(tmp_path, text, demo.url, options=options)
    try:
        asked = raw_call(first, 1)["result"]
    finally:
        stop(first.proc)
    second = start_gateway(tmp_path, text, demo.url, options=options)
    try:
        approval_id = asked["inputRequests"][INPUT_KEY]["params"]["elicitationId"]
        assert oneshot.approval(second.db, approval_id)["state"] == "pending"  # not expired
        decide(second, approval_id)
        answers = {INPUT_KEY: {"action": "accept"}}
        ran = raw_call(second, 2, requestState=asked["requestState"], inputResponses=answers)
        assert "result" in ran
        assert sql_calls(demo) == [DELETE["query"]]
    finally:
        stop(second.proc)


async def test_an_unanswered_approval_expires(demo, gateway_factory):
    gw = start(gateway_factory, demo, timeout="1s")
    asked = raw_call(gw, 1)["result"]
    approval_id = asked["inputRequests"][INPUT_KEY]["params"]["elicitationId"]
    with anyio.fail_after(15):  # the watcher closes it (every 5 s) or the retry does
        while oneshot.approval(gw.db, approval_id)["state"] == "pending":
            await anyio.sleep(0.2)
    late = raw_call(gw, 2, requestState=asked["requestState"])
    assert "approval expired" in late["error"]["message"]
    assert sql_calls(demo) == []


async def test_clients_without_url_elicitation_are_held_as_before(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    for mode in ("auto", "legacy"):  # no elicitation callback: no URL capability declared
        async with connect(gw.url + "/mcp", ALICE, mode=mode) as client:
            async with anyio.create_task_group() as tg:
                results = []

                async def call(client=client, results=results):
                    results.append(await client.call_tool("run_sql", DELETE))

                tg.start_soon(call)
                pending = await wait_for_pending(gw.db)
                assert pending["via"] == "hold"
                decide(gw, pending["approval_id"])
        assert not results[0].is_error
    assert sql_calls(demo) == [DELETE["query"]] * 2


async def test_without_a_page_to_link_to_the_call_is_held_and_the_operator_told(
    demo, gateway_factory
):
    gw = gateway_factory(CONFIG.format(url=demo.url, timeout="60s", grant="0s"), demo.url)
    async with anyio.create_task_group() as tg:
        answers = []

        async def call():
            answers.append(await anyio.to_thread.run_sync(raw_call, gw, 1))

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        assert pending["via"] == "hold"  # no admin API: held, never forwarded unchecked
        assert sql_calls(demo) == []
        decide(gw, pending["approval_id"])
    assert "result" in answers[0] and answers[0]["result"].get("resultType") != "input_required"
    assert "asks for approval_via: elicitation, but the approvals API is disabled" in (
        gw.output.read_text()
    )
