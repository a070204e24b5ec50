"""Tasks through a real gateway (issue 25, item 10): a task is its creator's.

The official SDK 1.x client and server (experimental tasks, MCP 2025-11-25) run from
`.venv-mcp1` (helpers.mcp1). The server is stateless, so it binds tasks to nobody: the
gateway must. The operator's config allows `tasks/*` for everyone, as they had to for
tasks to work at all; it must still never let one caller at another's task. The hostile
upstream (helpers.upstreams.hostile_tasks_answer) covers the 2026-07-28 extension's
shape, a task id handed to two callers, and listings of every caller's tasks.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from helpers.approvals import wait_for_pending
from helpers.clients import raw_post
from helpers.configs import ALICE, BOB, DANA, identity
from helpers.leaks import assert_nothing_leaked
from helpers.mcp1 import TasksServer, client_command, run_client, start_tasks_server
from helpers.processes import Gateway, holdgate_cli, stop
from helpers.upstreams import PII_CARD, PII_EMAIL, TASK_SECRET, FakeUpstream

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob", "dana")
    + """upstreams:
  - name: reports
    url: {url}
rules:
  - name: handshake
    match: {{method: [initialize, "notifications/*", ping, tools/list]}}
    action: allow
  - name: task polling
    match: {{method: "tasks/*"}}
    action: allow
  - name: nobody wipes
    match: {{tool: "wipe_*"}}
    action: deny
  - name: purging needs a DBA
    match: {{tool: purge_orders}}
    action: approve
    approvers: [dba]
    timeout: 60s
  - name: reports
    match: {{groups: [support, engineering, dba]}}
    action: allow
masking:
  - name: report pii
    tools: [customer_report, lookup]
    detectors: [email, credit_card, github_token]
    strategy: redact
"""
)
CARD_DIGITS = PII_CARD.replace(" ", "")
REPORT_EMAIL = "jane.roe@example.com"


@pytest.fixture
def reports(tmp_path: Path) -> Iterator[TasksServer]:
    server = start_tasks_server(tmp_path)
    yield server
    stop(server.proc)


@pytest.fixture
def gw(reports: TasksServer, gateway_factory: Any) -> Gateway:
    gateway: Gateway = gateway_factory(CONFIG.format(url=reports.url), reports.url)
    return gateway


def rows(db: Path, sql: str, *params: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def unknown(task_id: str) -> dict[str, Any]:
    """What the SDK's server answers for a task id it does not know."""
    return {"error": {"code": -32602, "message": f"Task not found: {task_id}"}}


def test_another_callers_task_is_answered_as_unknown_and_the_result_is_masked_and_recorded(
    gw: Gateway, reports: TasksServer
) -> None:
    url = gw.url + "/mcp"
    created = run_client(url, ALICE, "create", "customer_report", '{"customer": "7"}')
    task_id = created["task_id"]
    done = run_client(url, ALICE, "wait", task_id)
    assert done["status"] == "completed"
    text = done["result"]["content"][0]["text"]
    assert text.startswith("customer 7: mail ") and "[REDACTED" in text
    assert REPORT_EMAIL not in text and PII_CARD not in text
    asked = reports.asked_about(task_id)

    for action in ("get", "result", "cancel"):
        assert run_client(url, BOB, action, task_id) == unknown(task_id)
        assert run_client(url, BOB, action, "no-such-task") == unknown("no-such-task")
    assert reports.asked_about(task_id) == asked  # bob's never reached the upstream
    assert run_client(url, ALICE, "get", task_id)["status"] == "completed"  # still alice's

    stop(gw.proc)
    foreign = rows(gw.db, "SELECT * FROM events WHERE user = 'bob' AND method LIKE 'tasks/%'")
    assert len(foreign) == 6
    assert {(r["decision"], r["rule"]) for r in foreign} == {("deny", "foreign-task")}
    call = rows(
        gw.db,
        "SELECT flow_id FROM events WHERE user = 'alice' AND method = 'tools/call' "
        "AND direction = 'request'",
    )
    answers = rows(
        gw.db,
        "SELECT * FROM events WHERE user = 'alice' AND method = 'tasks/result' "
        "AND direction = 'response'",
    )
    assert len(call) == 1 and len(answers) == 1
    link = json.loads(answers[0]["extra"])["task"]
    assert link["tool"] == "customer_report" and link["call_flow_id"] == call[0]["flow_id"]
    assert (
        REPORT_EMAIL not in answers[0]["args_masked"] and "[REDACTED" in answers[0]["args_masked"]
    )
    assert json.loads(answers[0]["masked"])  # what was masked, counted on the row
    owners = rows(gw.db, "SELECT owner, tool, call_flow_id FROM task_owners")
    assert owners == [
        {"owner": "alice", "tool": "customer_report", "call_flow_id": call[0]["flow_id"]}
    ]


def test_tasks_list_shows_only_the_callers_own(gw: Gateway) -> None:
    url = gw.url + "/mcp"
    mine = [
        run_client(url, ALICE, "create", "customer_report", json.dumps({"customer": str(n)}))
        for n in range(3)
    ]
    theirs = [run_client(url, BOB, "create", "slow_report", '{"seconds": 0.1}') for _ in range(2)]
    alice = run_client(url, ALICE, "list")
    bob = run_client(url, BOB, "list")
    assert sorted(alice["task_ids"]) == sorted(t["task_id"] for t in mine)
    assert sorted(bob["task_ids"]) == sorted(t["task_id"] for t in theirs)
    assert alice["pages"] >= 2  # the upstream pages by two: its cursors went through sealed


@pytest.mark.anyio
async def test_a_task_augmented_call_of_an_approve_rule_tool_is_held(
    gw: Gateway, reports: TasksServer
) -> None:
    url = gw.url + "/mcp"
    command = client_command(url, ALICE, "create", "purge_orders", '{"before": "2020"}')
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as client:
        try:
            pending = await wait_for_pending(gw.db, "alice")
            assert pending["tool"] == "purge_orders"
            await anyio.sleep(0.5)
            assert client.poll() is None  # still waiting for a DBA
            assert not [m for m in reports.received() if m.get("method") == "tools/call"]
            decided = holdgate_cli(
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
            assert decided.returncode == 0, decided.stderr
            out, _ = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
    task_id = json.loads(out.decode().strip().splitlines()[-1])["task_id"]
    assert run_client(url, ALICE, "wait", task_id)["result"]["content"][0]["text"] == (
        "purged orders before 2020"
    )
    assert run_client(url, DANA, "result", task_id) == unknown(task_id)  # the approver's not

    wipe = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": "wipe_all", "arguments": {}, "task": {"ttl": 1000}},
    }
    denied = raw_post(url, wipe, ALICE).json()
    assert denied["error"]["code"] == -32003  # params.task bypasses nothing
    assert not [m for m in reports.received() if (m.get("params") or {}).get("name") == "wipe_all"]


# --- the hostile upstream, raw JSON-RPC ---------------------------------------------------

HOSTILE = "http://127.0.0.1:{port}/tasks"


@pytest.fixture
def hostile_gw(hostile: FakeUpstream, gateway_factory: Any) -> Gateway:
    gateway: Gateway = gateway_factory(CONFIG.format(url=hostile.url), hostile.url)
    return gateway


def rpc(method: str, params: dict[str, Any], msg_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


def create(ticket: str | None = None, *, task: bool = True) -> dict[str, Any]:
    arguments = {"ticket": ticket} if ticket else {}
    params: dict[str, Any] = {"name": "lookup", "arguments": arguments}
    if task:
        params["task"] = {"ttl": 60_000}
    return rpc("tools/call", params)


def test_a_task_id_handed_to_a_second_caller_stays_the_firsts(
    hostile_gw: Gateway, hostile: FakeUpstream
) -> None:
    url = hostile_gw.url + "/tasks"
    first = raw_post(url, create(), BOB).json()
    assert first["result"]["task"]["taskId"] == "task-shared"
    second = raw_post(url, create(), ALICE).json()  # the upstream hands alice bob's task
    assert "result" not in second and second["error"]["code"] == -32603
    assert "task-shared" not in json.dumps(second)
    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        answer = raw_post(url, rpc(method, {"taskId": "task-shared"}), ALICE).json()
        assert answer == {"jsonrpc": "2.0", "id": 1, **unknown("task-shared")}
    guessed = raw_post(url, rpc("tasks/result", {"taskId": "task-guessed"}), ALICE).json()
    assert guessed["error"] == unknown("task-guessed")["error"]
    own = raw_post(url, rpc("tasks/result", {"taskId": "task-shared"}), BOB).json()
    text = own["result"]["content"][0]["text"]
    assert PII_EMAIL not in text and TASK_SECRET not in text and CARD_DIGITS not in text
    assert_nothing_leaked(hostile_gw, PII_EMAIL, TASK_SECRET, PII_CARD, ALICE["X-API-Key"])


def test_an_answer_about_another_task_is_withheld(hostile_gw: Gateway) -> None:
    url = hostile_gw.url + "/tasks"
    raw_post(url, create("other-1"), ALICE)
    answer = raw_post(url, rpc("tasks/get", {"taskId": "task-other-1"}), ALICE).json()
    assert answer["error"]["code"] == -32603 and "task-elsewhere" not in json.dumps(answer)


def test_listing_is_filtered_and_its_cursors_are_sealed(
    hostile_gw: Gateway, hostile: FakeUpstream
) -> None:
    url = hostile_gw.url + "/tasks"
    for ticket in ("a1", "a2"):
        raw_post(url, create(ticket), ALICE)
    for ticket in ("b1", "b2"):
        raw_post(url, create(ticket), BOB)
    first = raw_post(url, rpc("tasks/list", {}), ALICE).json()["result"]
    assert [t["taskId"] for t in first["tasks"]] == ["task-a1", "task-a2"]
    cursor = first["nextCursor"]
    assert "task-" not in cursor  # the upstream's cursor names a task; the client's does not
    second = raw_post(url, rpc("tasks/list", {"cursor": cursor}), ALICE).json()["result"]
    assert second["tasks"] == [] and "nextCursor" not in second
    assert hostile.received[-1].json()["params"]["cursor"] == "task-a2"  # unsealed for it
    bobs = raw_post(url, rpc("tasks/list", {"cursor": cursor}), BOB).json()
    assert bobs["error"] == {"code": -32602, "message": "Invalid cursor"}
    forged = raw_post(url, rpc("tasks/list", {"cursor": "task-a2"}), BOB).json()
    assert forged["error"]["code"] == -32602


MODERN = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tasks/get"}


def test_the_2026_extension_form(hostile_gw: Gateway, hostile: FakeUpstream) -> None:
    """MCP 2026-07-28's tasks extension: the server answers a call with a task (flat,
    `resultType: task`), the result comes inlined in tasks/get, input in tasks/update;
    tasks/* carry the task id in Mcp-Name."""
    url = hostile_gw.url + "/tasks"
    call = create("modern", task=False)
    headers = {
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "lookup",
    }
    created = raw_post(url, call, {**ALICE, **headers}).json()
    assert created["result"]["resultType"] == "task"
    task_id = created["result"]["taskId"]
    get = rpc("tasks/get", {"taskId": task_id})
    got = raw_post(url, get, {**ALICE, **MODERN, "Mcp-Name": task_id}).json()
    text = got["result"]["result"]["content"][0]["text"]
    assert got["result"]["status"] == "completed"
    assert PII_EMAIL not in text and TASK_SECRET not in text and "[REDACTED" in text
    update = rpc("tasks/update", {"taskId": task_id, "inputResponses": {}})
    for message, method in ((get, "tasks/get"), (update, "tasks/update")):
        headers = {**BOB, **MODERN, "Mcp-Method": method, "Mcp-Name": task_id}
        refused = raw_post(url, message, headers).json()
        assert refused["error"] == unknown(task_id)["error"]
    mismatched = raw_post(url, get, {**ALICE, **MODERN, "Mcp-Name": "task-else"})
    assert mismatched.status == 400  # Mcp-Name must name the task the body names


def test_a_task_is_its_creators_on_every_replica(
    reports: TasksServer, gateway_factory: Any, pg_url: str
) -> None:
    """Two gateways on one PostgreSQL store: the task alice created through A is hers
    through B, and nobody else's."""
    shared = CONFIG.format(url=reports.url).replace(
        "rules:\n", "hash_key: tasks-replicas-hash-key-7f3a\nrules:\n", 1
    )
    a, b = (
        gateway_factory(shared, reports.url, options={"holdgate_store": pg_url}) for _ in range(2)
    )
    created = run_client(a.url + "/mcp", ALICE, "create", "customer_report", '{"customer": "9"}')
    task_id = created["task_id"]
    assert run_client(b.url + "/mcp", BOB, "result", task_id) == unknown(task_id)
    done = run_client(b.url + "/mcp", ALICE, "wait", task_id)
    assert REPORT_EMAIL not in json.dumps(done) and done["status"] == "completed"
    assert run_client(b.url + "/mcp", ALICE, "list")["task_ids"] == [task_id]
    assert run_client(b.url + "/mcp", BOB, "list")["task_ids"] == []
