"""How `tasks/*` requests are decided: a task is its creator's, whatever the rules say.

- tasks/get|result|cancel|update naming a task this caller did not create on this
  upstream (another caller's, an unknown or expired one, a guessed id) is denied under
  `foreign-task`, and answered as the upstream answers an unknown task;
- on the caller's own task, the rules decide as for any method (a rule may deny, approve
  or limit `tasks/cancel`, say); where no rule matches, the request is allowed under
  `own-task`: it continues a call that was already decided. If the policy no longer lets
  the caller use the tool that created the task, it is denied (`task-tool-not-allowed`);
- tasks/list is decided by the rules the same way (`own-tasks` where none matches), and
  its answer keeps only the caller's tasks.
"""

from __future__ import annotations

from typing import Any

from holdgate.policy.rules import DEFAULT_DENY, Caller, Decision, Policy
from holdgate.protocol.jsonrpc import Message
from holdgate.protocol.tasks import LIST_METHOD, TASK_METHODS
from holdgate.store.task_records import TaskRecord

FOREIGN_TASK = "foreign-task"
OWN_TASK = "own-task"
OWN_TASKS = "own-tasks"
TASK_TOOL_NOT_ALLOWED = "task-tool-not-allowed"
# a tasks/list cursor the gateway did not give this caller (decided outside the rules)
INVALID_TASK_CURSOR = "invalid-task-cursor"


def is_task_request(message: Message) -> bool:
    return message.kind == "request" and (
        message.method in TASK_METHODS or message.method == LIST_METHOD
    )


def decide_task_request(
    policy: Policy, caller: Caller, upstream: str, message: Message, task: TaskRecord | None
) -> Decision:
    """The decision on a tasks/* request; `task` is the record of the task it names (None
    when the gateway knows no such task on this upstream)."""
    if message.method == LIST_METHOD:
        return _unless_no_rule(
            policy.evaluate(caller, upstream, message), OWN_TASKS, "lists the caller's own tasks"
        )
    if task is None or task.owner != caller.user or task.upstream != upstream:
        return Decision(
            "deny", FOREIGN_TASK, "no task of this caller has this id; answered as unknown"
        )
    if not policy.may_use(caller, upstream, "tools/call", task.tool):
        return Decision(
            "deny",
            TASK_TOOL_NOT_ALLOWED,
            f"the task was created by a call of {task.tool!r}, which the policy no longer "
            "allows this caller",
        )
    return _unless_no_rule(
        policy.evaluate(caller, upstream, message),
        OWN_TASK,
        f"the caller's own task, created by a call of {task.tool!r}",
    )


def recorded_task(row_rule: str, user: str, upstream: str, link: Any) -> TaskRecord | None:
    """The task a recorded tasks/* decision row was about, as far as the row says (its
    `extra.task`): for deciding it again (`holdgate replay`). None for a foreign task."""
    if row_rule == FOREIGN_TASK or not isinstance(link, dict):
        return None
    tool, key = link.get("tool"), link.get("key")
    if not isinstance(tool, str) or not isinstance(key, str):
        return None
    return TaskRecord(key, user, upstream, None, tool, "", "", 0.0, None)


def _unless_no_rule(decision: Decision, rule: str, reason: str) -> Decision:
    if decision.rule == DEFAULT_DENY:
        return Decision("allow", rule, reason)
    return decision
