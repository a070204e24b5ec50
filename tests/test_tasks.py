"""Tasks, the pure parts: the wire shapes (holdgate.protocol.tasks) and how tasks/*
requests are decided (holdgate.policy.tasks)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from holdgate.config.gateway_config import parse_config_text
from holdgate.identity import Identity
from holdgate.policy.tasks import (
    FOREIGN_TASK,
    OWN_TASK,
    OWN_TASKS,
    TASK_TOOL_NOT_ALLOWED,
    decide_task_request,
)
from holdgate.protocol.jsonrpc import BodyError, check_routing_headers, parse_body
from holdgate.protocol.tasks import (
    CreatedTask,
    CursorSeal,
    answered_task_ids,
    created_task,
    notified_task_id,
    own_listing,
    task_key,
    unknown_task,
)
from holdgate.store import TaskRecord

# --- wire shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"task": {"taskId": "t1", "status": "working", "ttl": 60000}}, CreatedTask("t1", 60000)),
        ({"task": {"taskId": "t1", "ttl": None}}, CreatedTask("t1", None)),
        ({"resultType": "task", "taskId": "t2", "ttlMs": 5}, CreatedTask("t2", 5)),
        ({"resultType": "task", "taskId": "t2", "ttlMs": True}, CreatedTask("t2", None)),
        ({"content": [], "taskId": "t3"}, None),  # an ordinary result naming a task
        ({"task": {"taskId": 7}}, None),
        ({"resultType": "complete", "taskId": "t4"}, None),
        ("text", None),
    ],
)
def test_the_task_a_result_creates(result: Any, expected: CreatedTask | None) -> None:
    assert created_task(result) == expected


def test_every_task_an_answer_names_about_itself() -> None:
    result = {
        "taskId": "a",
        "task": {"taskId": "b"},
        "_meta": {"io.modelcontextprotocol/related-task": {"taskId": "c"}},
    }
    assert answered_task_ids(result) == {"a", "b", "c"}
    assert answered_task_ids({"content": []}) == set()


def test_a_status_notification_names_its_task_or_nothing() -> None:
    assert notified_task_id({"method": "notifications/tasks/status", "params": {"taskId": "t"}})
    assert notified_task_id({"method": "notifications/tasks", "params": {}}) == ""
    assert notified_task_id({"method": "notifications/progress", "params": {"taskId": "t"}}) is None


def test_a_listing_keeps_what_the_caller_owns() -> None:
    result = {"tasks": [{"taskId": "a"}, {"taskId": "b"}, {"taskId": 3}, "x"], "nextCursor": "b"}
    kept, hidden = own_listing(result, lambda task_id: task_id == "a")
    assert kept == {"tasks": [{"taskId": "a"}], "nextCursor": "b"} and hidden == 3
    assert own_listing({"tasks": "all"}, lambda _: True) == ({"tasks": []}, 0)


def test_the_unknown_task_answer_is_the_sdks() -> None:
    assert unknown_task(4, "t") == {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": -32602, "message": "Task not found: t"},
    }


def test_a_task_key_is_per_upstream_and_not_the_id() -> None:
    assert task_key("a", "t") != task_key("b", "t")
    assert task_key("a\0b", "t") != task_key("a", "b\0t")
    assert len(task_key("a", "t")) == 64


def test_a_sealed_cursor_opens_only_for_its_caller_and_upstream() -> None:
    seal = CursorSeal(b"k" * 32)
    token = seal.seal("alice", "reports", "task-a2")
    assert "task-a2" not in token
    assert seal.open("alice", "reports", token) == "task-a2"
    assert seal.open("bob", "reports", token) is None
    assert seal.open("alice", "other", token) is None
    assert CursorSeal(b"j" * 32).open("alice", "reports", token) is None  # another key
    # a character from the middle (every one of its 6 bits is the token's; the last one
    # before padding may carry bits the decoder drops, so changing it may change nothing)
    middle = len(token) // 2
    flipped = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    for forged in (flipped, "task-a2", "", "!!", 7, None, "A" * 20_000, "é"):
        assert seal.open("alice", "reports", forged) is None


# --- routing headers (MCP 2026-07-28) ------------------------------------------------

MODERN = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tasks/get"}


def body(method: str, params: dict[str, Any]) -> Any:
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return parse_body(json.dumps(message).encode(), max_bytes=10_000)


def test_mcp_name_names_the_task_of_a_tasks_request() -> None:
    check_routing_headers(body("tasks/get", {"taskId": "t1"}), {**MODERN, "mcp-name": "t1"})
    with pytest.raises(BodyError, match="Mcp-Name header does not match"):
        check_routing_headers(body("tasks/get", {"taskId": "t1"}), {**MODERN, "mcp-name": "t2"})
    with pytest.raises(BodyError, match="Mcp-Name header is required"):
        check_routing_headers(body("tasks/get", {"taskId": "t1"}), MODERN)
    listing = {**MODERN, "mcp-method": "tasks/list"}
    check_routing_headers(body("tasks/list", {}), listing)


# --- decisions -------------------------------------------------------------------------

CONFIG = """
version: 1
upstreams:
  - name: reports
    url: http://127.0.0.1:9
rules:
  - name: no cancelling
    match: {method: tasks/cancel}
    action: deny
  - name: reports
    match: {tool: customer_report}
    action: allow
"""
ALICE = Identity("alice", ("support",), "api_key")
BOB = Identity("bob", ("support",), "api_key")


def alices_task(tool: str = "customer_report", upstream: str = "reports") -> TaskRecord:
    return TaskRecord(
        task_key("reports", "t1"), "alice", upstream, None, tool, "flow", "1", 0.0, None
    )


def decide(method: str, caller: Identity, task: TaskRecord | None) -> tuple[str, str]:
    policy = parse_config_text(CONFIG, "holdgate.yaml").policy
    params = {"taskId": "t1"} if method != "tasks/list" else {}
    message = body(method, params).messages[0]
    decision = decide_task_request(policy, caller, "reports", message, task)
    return decision.action, decision.rule


@pytest.mark.parametrize(
    ("method", "caller", "task", "expected"),
    [
        ("tasks/get", ALICE, alices_task(), ("allow", OWN_TASK)),
        ("tasks/result", ALICE, alices_task(), ("allow", OWN_TASK)),
        ("tasks/update", ALICE, alices_task(), ("allow", OWN_TASK)),
        ("tasks/cancel", ALICE, alices_task(), ("deny", "no cancelling")),  # a rule decides
        ("tasks/get", BOB, alices_task(), ("deny", FOREIGN_TASK)),
        ("tasks/cancel", BOB, alices_task(), ("deny", FOREIGN_TASK)),
        ("tasks/get", ALICE, None, ("deny", FOREIGN_TASK)),  # unknown, guessed, expired
        ("tasks/get", ALICE, alices_task(upstream="other"), ("deny", FOREIGN_TASK)),
        ("tasks/result", ALICE, alices_task(tool="purge"), ("deny", TASK_TOOL_NOT_ALLOWED)),
        ("tasks/list", BOB, None, ("allow", OWN_TASKS)),
    ],
)
def test_tasks_requests_are_decided_by_owner_then_rules(
    method: str, caller: Identity, task: TaskRecord | None, expected: tuple[str, str]
) -> None:
    assert decide(method, caller, task) == expected
