"""The approvals scenario shared by the approvals and mitmweb e2e tests.

A DELETE through `run_sql` waits for a DBA (dana); alice (support and dba here, so the
separation of duties is what stops her) asks, bob (engineering) may not decide.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio

from helpers import oneshot
from helpers.configs import identity
from helpers.processes import DemoServer, holdgate_cli
from holdgate import store

APPROVALS_CONFIG = (
    "version: 1\n"
    + identity("alice", "dana", "bob", groups={"alice": ["support", "dba"]})
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: destructive SQL needs a DBA
    match:
      tool: run_sql
      args:
        "$.query": {{search: "(?i)\\\\b(drop|delete|update|insert)\\\\b"}}
    action: approve
    approvers: [dba]
    timeout: {timeout}
    grant: {grant}
  - name: reads
    match: {{tool: ["run_sql", "get_*"]}}
    action: allow
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
"""
)
DELETE = {"query": "DELETE FROM orders WHERE id = 1"}


async def wait_for_pending(db: Path, requester: str | None = None) -> dict[str, Any]:
    """The first pending approval (of `requester`, if given), within 15 s."""
    with anyio.fail_after(15):
        while True:
            if db.exists():
                found = [
                    p
                    for p in oneshot.pending_approvals(db)
                    if requester is None or p["requester"] == requester
                ]
                if found:
                    return found[0]
            await anyio.sleep(0.1)


def sql_calls(demo: DemoServer) -> list[str]:
    """The queries of every `run_sql` call that reached the demo server."""
    return [arguments["query"] for arguments in demo.calls_to("run_sql")]


def approval_request(approval_id: str, now: float, **columns: Any) -> dict[str, Any]:
    """A `pending` approval row as the gateway creates it (alice's run_sql, dba decides,
    five minutes to decide from `now`); `columns` change or add to it."""
    return {
        "approval_id": approval_id,
        "requester": "alice",
        "upstream": "db",
        "method": "tools/call",
        "tool": "run_sql",
        "rule": "r",
        "approvers": '["dba"]',
        "created": store.iso(now),
        "expires": store.iso(now + 300),
        **columns,
    }


def break_glass(
    verb: str, approval_id: str, db: Path | str, who: str = "dana", reason: str = "in a test"
) -> subprocess.CompletedProcess[str]:
    """`holdgate approvals approve|deny` writing the store directly, for tests about what a
    decision does rather than who may make it."""
    return holdgate_cli(
        "approvals",
        verb,
        approval_id,
        "--break-glass",
        "--as",
        who,
        "--reason",
        reason,
        "--db",
        str(db),
    )
