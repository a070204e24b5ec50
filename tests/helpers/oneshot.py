"""One call, one connection: the store named by a path, opened for a single call and closed.

For tests that inspect a running gateway's store from outside, without holding a `Store`
(the package itself always holds one). Readers never create a store; writers create it,
as the gateway does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from holdgate.store.approval_records import Decision
from holdgate.store.rows import ApprovalRecord, EventRow, Row, ToolPinRow
from holdgate.store.sqlite_store import open_store

StorePath = str | os.PathLike[str]


def create_approval(path: StorePath, row: Row) -> int:
    with open_store(path) as opened:
        return opened.create_approval(row)


def decide_approval(
    path: StorePath,
    approval_id: str,
    decision: Decision,
    decider: str,
    decider_groups: Iterable[str] | None,
    reason: str | None = None,
) -> ApprovalRecord:
    with open_store(path, create=False) as opened:
        return opened.decide_approval(approval_id, decision, decider, decider_groups, reason)


def append_approval_state(
    path: StorePath,
    approval_id: str,
    state: str,
    decider: str | None = None,
    reason: str | None = None,
) -> bool:
    with open_store(path) as opened:
        return opened.append_approval_state(approval_id, state, decider, reason)


def expire_pending(path: StorePath, reason: str) -> int:
    with open_store(path) as opened:
        return opened.expire_pending(reason)


def approval(path: StorePath, approval_id: str) -> ApprovalRecord | None:
    with open_store(path, create=False) as opened:
        return opened.approval(approval_id)


def pending_approvals(path: StorePath) -> list[ApprovalRecord]:
    with open_store(path, create=False) as opened:
        return opened.approvals(pending_only=True)


def approval_states(path: StorePath, approval_ids: Iterable[str]) -> dict[str, ApprovalRecord]:
    with open_store(path, create=False) as opened:
        return opened.approval_states(approval_ids)


def tool_pin_rows(path: StorePath, after: int = 0) -> list[ToolPinRow]:
    with open_store(path, create=False) as opened:
        return opened.tool_pin_rows(after)


def export_rows(
    path: StorePath,
    since: str | None = None,
    until: str | None = None,
    user: str | None = None,
    upstream: str | None = None,
) -> list[EventRow]:
    with open_store(path, create=False) as opened:
        return opened.events(since, until, user, upstream)
