"""Issue 25 item 5 through a real mitmdump: an approval is spent only soon after its decision
and only under the rule that asked for it.

Approved within its 3 s timeout, a URL-elicitation approval was spent 8 s later and the
DELETE ran; a reload that changed the rule did not void it either, nor a held one decided
after such a reload.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls, wait_for_pending
from helpers.clients import connect, raw_post
from helpers.configs import ALICE
from helpers.processes import free_port, holdgate_cli, start_gateway, stop
from holdgate import store
from holdgate.approvals.elicitation import INPUT_KEY
from test_e2e_elicited_approvals import CONFIG as ELICITED
from test_e2e_elicited_approvals import decide, raw_call
from test_e2e_reload import wait_for

pytestmark = pytest.mark.anyio

ACCEPT = {INPUT_KEY: {"action": "accept"}}


def _start(gateway_factory, demo, template: str, timeout: str, grant: str = "0s"):
    return gateway_factory(
        template.format(url=demo.url, timeout=timeout, grant=grant),
        demo.url,
        options={"holdgate_admin": f"127.0.0.1:{free_port()}"},
    )


def _reloaded(gw, text: str) -> None:
    """Replace the gateway's config and wait until it is in force."""
    before = gw.log_text().count("holdgate: reloaded ")
    time.sleep(1.1)  # a new mtime for the watcher
    gw.config.write_text(text)
    assert wait_for(lambda: gw.log_text().count("holdgate: reloaded ") > before), gw.log_text()


def _refused_kinds(db: Path, approval_id: str) -> list[str]:
    return [
        json.loads(e["extra"] or "{}").get("refused", {}).get("kind")
        for e in oneshot.export_rows(db)
        if e["approval_id"] == approval_id and e["direction"] == "request"
    ]


def _recorded_refusal(db: Path, approval_id: str, kind: str) -> bool:
    """Whether a request row of the approval says it was refused as `kind` (the writer
    stores rows off the request path: waited for, bounded)."""
    return wait_for(lambda: kind in _refused_kinds(db, approval_id))


def _approve_now(gw, approval_id: str) -> None:
    """Dana approves at once, in-process: a CLI's start-up under load could outlast a
    short `timeout` and this test is about what happens after the decision."""
    oneshot.decide_approval(gw.db, approval_id, "approved", "dana", ["dba"])


def _ask(gw) -> tuple[str, str]:
    asked = raw_call(gw, 1)["result"]
    return asked["inputRequests"][INPUT_KEY]["params"]["elicitationId"], asked["requestState"]


async def test_an_elicited_approval_spent_after_its_window_is_refused(demo, gateway_factory):
    gw = _start(gateway_factory, demo, ELICITED, timeout="5s")
    approval_id, token = _ask(gw)
    _approve_now(gw, approval_id)
    await anyio.sleep(6.5)  # as in the issue: spent well after the rule's window
    late = raw_call(gw, 2, requestState=token, inputResponses=ACCEPT)
    assert late["error"]["code"] == -32004, late
    assert "expired after its decision" in late["error"]["message"]
    assert sql_calls(demo) == []
    record = oneshot.approval(gw.db, approval_id)
    assert [h["state"] for h in record["history"]] == ["pending", "approved", "refused_attempt"]
    assert "expired after its decision" in record["history"][-1]["reason"]
    assert _recorded_refusal(gw.db, approval_id, "approval-expired")
    # asking again works: a new approval, and nothing ran meanwhile
    again = raw_call(gw, 3)["result"]
    assert again["resultType"] == "input_required"
    assert again["inputRequests"][INPUT_KEY]["params"]["elicitationId"] != approval_id


async def test_valid_for_keeps_an_elicited_approval_spendable_longer(demo, gateway_factory):
    template = ELICITED.replace(
        "    approval_via: elicitation\n", "    approval_via: elicitation\n    valid_for: 2m\n"
    )
    gw = _start(gateway_factory, demo, template, timeout="4s")
    approval_id, token = _ask(gw)
    _approve_now(gw, approval_id)
    await anyio.sleep(5)  # past the timeout, within valid_for
    ran = raw_call(gw, 2, requestState=token, inputResponses=ACCEPT)
    assert "result" in ran and not ran["result"].get("isError"), ran
    assert sql_calls(demo) == [DELETE["query"]]


async def test_a_reload_that_changes_the_rule_voids_an_unspent_approval(demo, gateway_factory):
    gw = _start(gateway_factory, demo, ELICITED, timeout="60s")
    approval_id, token = _ask(gw)
    decide(gw, approval_id)
    # the rule keeps its name; its approvers change
    edited = ELICITED.replace("approvers: [dba]", "approvers: [dba, sre]")
    _reloaded(gw, edited.format(url=demo.url, timeout="60s", grant="0s"))
    void = raw_call(gw, 2, requestState=token, inputResponses=ACCEPT)
    assert void["error"]["code"] == -32004, void
    assert "was changed by a config reload" in void["error"]["message"]
    assert sql_calls(demo) == []
    history = oneshot.approval(gw.db, approval_id)["history"]
    assert [h["state"] for h in history] == ["pending", "approved", "refused_attempt"]
    assert _recorded_refusal(gw.db, approval_id, "rule-changed")


async def test_an_unchanged_rule_keeps_the_approval_across_a_restart(demo, tmp_path: Path):
    """The decision's time and the rule's lineage are in the store: a restarted gateway
    (or another replica) judges the retry as the first would have."""
    text = ELICITED.format(url=demo.url, timeout="60s", grant="0s")
    options = {"holdgate_admin": f"127.0.0.1:{free_port()}"}
    first = start_gateway(tmp_path, text, demo.url, options=options)
    try:
        approval_id, token = _ask(first)
        decide(first, approval_id)
    finally:
        stop(first.proc)
    # moved below a new rule, unchanged: the same lineage
    moved = text.replace(
        "rules:\n", "rules:\n  - name: pings\n    match: {method: ping}\n    action: allow\n", 1
    )
    second = start_gateway(tmp_path, moved, demo.url, options=options)
    try:
        ran = raw_call(second, 2, requestState=token, inputResponses=ACCEPT)
        assert "result" in ran, ran
        assert sql_calls(demo) == [DELETE["query"]]
    finally:
        stop(second.proc)


async def test_a_restart_with_the_rule_changed_voids_the_approval(demo, tmp_path: Path):
    text = ELICITED.format(url=demo.url, timeout="60s", grant="0s")
    options = {"holdgate_admin": f"127.0.0.1:{free_port()}"}
    first = start_gateway(tmp_path, text, demo.url, options=options)
    try:
        approval_id, token = _ask(first)
        decide(first, approval_id)
    finally:
        stop(first.proc)
    edited = text.replace("timeout: 60s", "timeout: 90s")
    second = start_gateway(tmp_path, edited, demo.url, options=options)
    try:
        void = raw_call(second, 2, requestState=token, inputResponses=ACCEPT)
        assert void["error"]["code"] == -32004 and "was changed" in void["error"]["message"]
        assert sql_calls(demo) == []
    finally:
        stop(second.proc)


async def test_a_held_call_decided_after_its_rule_changed_is_refused(demo, gateway_factory):
    """Held approvals had the same gap: approved after a reload edited the rule, the held
    call ran under a rule that no longer asked what the approver answered."""
    gw = _start(gateway_factory, demo, APPROVALS_CONFIG, timeout="60s")
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        errors: list[MCPError] = []

        async def call():
            try:
                await client.call_tool("run_sql", DELETE)
            except MCPError as exc:
                errors.append(exc)

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        edited = APPROVALS_CONFIG.replace("approvers: [dba]", "approvers: [dba, sre]")
        _reloaded(gw, edited.format(url=demo.url, timeout="60s", grant="0s"))
        done = holdgate_cli(
            "approvals",
            "approve",
            pending["approval_id"],
            "--as",
            "dana",
            "--break-glass",
            "--reason",
            "in a test",
            "--db",
            str(gw.db),
        )
        assert done.returncode == 0, done.stderr
    assert errors and errors[0].error.code == -32004
    assert "was changed by a config reload" in errors[0].error.message
    assert sql_calls(demo) == []
    history = oneshot.approval(gw.db, pending["approval_id"])["history"]
    assert [h["state"] for h in history] == ["pending", "approved", "refused_attempt"]


async def test_a_grant_ends_when_its_rule_changes(demo, gateway_factory):
    gw = _start(gateway_factory, demo, APPROVALS_CONFIG, timeout="60s", grant="10m")
    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", DELETE)
            first = await wait_for_pending(gw.db)
            decide(gw, first["approval_id"])
        assert sql_calls(demo) == [DELETE["query"]]
        edited = APPROVALS_CONFIG.replace("approvers: [dba]", "approvers: [dba, sre]")
        _reloaded(gw, edited.format(url=demo.url, timeout="60s", grant="10m"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", DELETE)
            with anyio.fail_after(15):
                while True:  # the identical call is asked for again, not let through
                    pending = [
                        p
                        for p in oneshot.pending_approvals(gw.db)
                        if p["approval_id"] != first["approval_id"]
                    ]
                    if pending:
                        break
                    await anyio.sleep(0.1)
            assert sql_calls(demo) == [DELETE["query"]]
            decide(gw, pending[0]["approval_id"])
    assert sql_calls(demo) == [DELETE["query"], DELETE["query"]]
    history = oneshot.approval(gw.db, first["approval_id"])["history"]
    assert [h["state"] for h in history] == ["pending", "approved"]  # no grant_used


async def test_replicas_on_one_store_judge_an_approval_alike(demo, gateway_factory, pg_url):
    """Asked and approved through replica a, spent through b; after a reload that edits the
    rule (the replicas share the config file here), voided on either."""
    template = ELICITED + "hash_key: spending-replicas-key-41d9\n"
    text = template.format(url=demo.url, timeout="60s", grant="0s")

    def replica(name: str):
        options = {
            "holdgate_store": pg_url,
            "holdgate_admin": f"127.0.0.1:{free_port()}",
            "holdgate_replica": name,
        }
        return gateway_factory(text, demo.url, options=options)

    def approve(approval_id: str) -> None:
        with store.open_store(pg_url) as opened:
            opened.decide_approval(approval_id, "approved", "dana", ["dba"])

    a, b = replica("a"), replica("b")
    approval_id, token = _ask(a)
    approve(approval_id)
    ran = raw_call(b, 2, requestState=token, inputResponses=ACCEPT)
    assert "result" in ran, ran
    assert sql_calls(demo) == [DELETE["query"]]

    second_id, second_token = _ask(a)
    approve(second_id)
    edited = text.replace("approvers: [dba]", "approvers: [dba, sre]")
    _reloaded(a, edited)  # one file for both replicas here: b reloads it too
    assert wait_for(lambda: b.log_text().count("holdgate: reloaded ") >= 1), b.log_text()
    void = raw_call(b, 3, requestState=second_token, inputResponses=ACCEPT)
    assert void["error"]["code"] == -32004 and "was changed" in void["error"]["message"]
    assert sql_calls(demo) == [DELETE["query"]]
    with store.open_store(pg_url) as opened:
        record = opened.approval(second_id)
    assert record is not None
    assert [h["state"] for h in record["history"]] == ["pending", "approved", "refused_attempt"]


async def test_an_approval_in_a_batch_is_judged_when_the_batch_leaves(demo, gateway_factory):
    """A batch of two held calls: the first approved, then its rule edited while the second
    waited. The first approval is judged when the batch leaves, not when it was decided, so
    the reload voids it as it would a call of its own."""
    gw = _start(gateway_factory, demo, APPROVALS_CONFIG, timeout="60s")
    batch = [
        {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {
                "name": "run_sql",
                "arguments": {"query": f"DELETE FROM orders WHERE id = {n}"},
            },
        }
        for n in (1, 2)
    ]
    answers: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def send() -> None:
            answers.append(await anyio.to_thread.run_sync(raw_post, gw.url + "/mcp", batch, ALICE))

        tg.start_soon(send)
        first = await wait_for_pending(gw.db)
        _approve_now(gw, first["approval_id"])
        with anyio.fail_after(15):
            while (second := await wait_for_pending(gw.db))["approval_id"] == first["approval_id"]:
                await anyio.sleep(0.1)
        edited = APPROVALS_CONFIG.replace("approvers: [dba]", "approvers: [dba, sre]")
        _reloaded(gw, edited.format(url=demo.url, timeout="60s", grant="0s"))
        _approve_now(gw, second["approval_id"])
    (answer,) = answers
    by_id = {a["id"]: a for a in answer.json()}
    assert all(by_id[n]["error"]["code"] == -32004 for n in (1, 2)), by_id
    assert all("was changed by a config reload" in by_id[n]["error"]["message"] for n in (1, 2))
    assert sql_calls(demo) == []
