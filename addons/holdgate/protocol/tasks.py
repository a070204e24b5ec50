"""MCP tasks on the wire, the pure parts: which task a message names, creates or lists.

Two shapes are read:
- MCP 2025-11-25 (the official Python SDK 1.x's `experimental` tasks): a `tools/call` with
  `params.task` is answered `{"task": {"taskId": ...}}`; then `tasks/get`, `tasks/result`,
  `tasks/list` (paginated), `tasks/cancel`, and `notifications/tasks/status`.
- MCP 2026-07-28's `io.modelcontextprotocol/tasks` extension: any `tools/call` may be
  answered `{"resultType": "task", "taskId": ...}` (flat); then `tasks/get` (the result or
  error inlined once terminal), `tasks/update` (`inputResponses`), `tasks/cancel`, and
  `notifications/tasks`.

A task id is the upstream's; the gateway keys what it keeps by a digest of (upstream, id),
as it does session ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Requests that name one task in `params.taskId`.
TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/cancel", "tasks/update"})
LIST_METHOD = "tasks/list"
STATUS_NOTIFICATIONS = frozenset({"notifications/tasks/status", "notifications/tasks"})
RELATED_TASK = "io.modelcontextprotocol/related-task"
INVALID_PARAMS = -32602
# How long the gateway remembers a task's owner past the ttl the upstream gave it (the
# upstream may keep a task longer than it said; a forgotten task is refused as unknown).
OWNER_GRACE_SECONDS = 86_400.0


@dataclass(frozen=True)
class CreatedTask:
    """A task an upstream created in answer to a call."""

    task_id: str
    ttl_ms: int | None  # None: the upstream keeps it without limit


def task_key(upstream: str, task_id: str) -> str:
    """What the store keys a task by: a digest (the raw id is a handle to the result) of
    the pair, written so no two pairs are the same text."""
    pair = json.dumps([upstream, task_id], ensure_ascii=True)
    return hashlib.sha256(pair.encode("ascii")).hexdigest()


def requested_task_id(raw: dict[str, Any]) -> str | None:
    """The `params.taskId` of a tasks/get|result|cancel|update request (None if not a string)."""
    params = raw.get("params")
    value = params.get("taskId") if isinstance(params, dict) else None
    return value if isinstance(value, str) else None


def created_task(result: Any) -> CreatedTask | None:
    """The task a call's result announces, in either protocol's shape; None otherwise."""
    if not isinstance(result, dict):
        return None
    task = result.get("task")
    if isinstance(task, dict) and isinstance(task.get("taskId"), str):  # 2025-11-25
        return CreatedTask(task["taskId"], _ttl(task.get("ttl")))
    if result.get("resultType") == "task" and isinstance(result.get("taskId"), str):
        return CreatedTask(result["taskId"], _ttl(result.get("ttlMs")))  # 2026-07-28
    return None


def _ttl(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def expires_at(created: float, task: CreatedTask) -> float | None:
    """When the gateway may forget the task's owner (None: never)."""
    if task.ttl_ms is None:
        return None
    return created + task.ttl_ms / 1000 + OWNER_GRACE_SECONDS


def answered_task_ids(result: Any) -> set[str]:
    """Every task id a tasks/get|result|cancel answer names about itself: the task object's
    `taskId` and the result's related-task `_meta` (an answer about another task than the
    one asked for is never passed on)."""
    if not isinstance(result, dict):
        return set()
    found = set()
    if isinstance(result.get("taskId"), str):
        found.add(result["taskId"])
    task = result.get("task")
    if isinstance(task, dict) and isinstance(task.get("taskId"), str):
        found.add(task["taskId"])
    meta = result.get("_meta")
    related = meta.get(RELATED_TASK) if isinstance(meta, dict) else None
    if isinstance(related, dict) and isinstance(related.get("taskId"), str):
        found.add(related["taskId"])
    return found


def notified_task_id(message: dict[str, Any]) -> str | None:
    """The task a status notification is about; "" for one that names none (it can be
    tied to nobody), None for other messages."""
    if message.get("method") not in STATUS_NOTIFICATIONS:
        return None
    params = message.get("params")
    value = params.get("taskId") if isinstance(params, dict) else None
    return value if isinstance(value, str) else ""


def own_listing(result: dict[str, Any], owns: Callable[[str], bool]) -> tuple[dict[str, Any], int]:
    """A tasks/list result keeping only the tasks `owns` accepts; (result, how many hidden)."""
    tasks = result.get("tasks")
    if not isinstance(tasks, list):
        return {**result, "tasks": []}, 0
    kept = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("taskId"), str)]
    kept = [t for t in kept if owns(t["taskId"])]
    return {**result, "tasks": kept}, len(tasks) - len(kept)


def unknown_task(msg_id: Any, task_id: str) -> dict[str, Any]:
    """What an upstream on the official SDK answers for a task id it does not know."""
    error = {"code": INVALID_PARAMS, "message": f"Task not found: {task_id}"}
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


def invalid_cursor(msg_id: Any) -> dict[str, Any]:
    error = {"code": INVALID_PARAMS, "message": "Invalid cursor"}
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


class CursorSeal:
    """tasks/list cursors as the client sees them: the upstream's cursor, encrypted and
    bound to (caller, upstream). An upstream's cursor may name a task of another caller
    (the SDK's in-memory store pages by task id); a sealed one names nothing, and one
    sealed for another caller does not open."""

    AAD = b"holdgate tasks/list cursor"

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hmac.new(key, self.AAD, hashlib.sha256).digest())

    def seal(self, user: str, upstream: str, cursor: str) -> str:
        nonce = os.urandom(12)
        plain = json.dumps([user, upstream, cursor]).encode()
        sealed = nonce + self._aead.encrypt(nonce, plain, self.AAD)
        return base64.urlsafe_b64encode(sealed).decode("ascii")

    def open(self, user: str, upstream: str, token: Any) -> str | None:
        """The upstream's cursor; None for a token this caller was not given."""
        if not isinstance(token, str) or len(token) > 16_384:
            return None
        try:
            sealed = base64.urlsafe_b64decode(token.encode("ascii"))
            value = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], self.AAD))
        except (ValueError, binascii.Error, InvalidTag, UnicodeEncodeError):
            return None
        if not (isinstance(value, list) and len(value) == 3 and value[:2] == [user, upstream]):
            return None
        return value[2] if isinstance(value[2], str) else None
