"""Each decision is one console line and the flow's comment, through a real mitmdump and
the demo server (#28): a denied, a held then approved, and a held then expired call; the
lines and the recorded comments name caller, tool, outcome, rule and approval, and hold no
argument value, caller key or injected credential."""

from __future__ import annotations

import re

import anyio
import pytest
from mcp import MCPError

from helpers.approvals import wait_for_pending
from helpers.clients import connect
from helpers.configs import ALICE, identity
from helpers.leaks import assert_nothing_leaked
from helpers.processes import holdgate_cli
from helpers.recordings import read_every_file
from helpers.upstreams import PII_CARD, PII_EMAIL

pytestmark = pytest.mark.anyio

DEMO_PER_TEST = True  # an approved DELETE changes the demo's data
TOKEN = "hg-decision-lines-upstream-4c1d8e"
CONFIG = (
    "version: 1\n"
    + identity("alice", "dana", groups={"alice": ["support"], "dana": ["dba"]})
    + """upstreams:
  - name: demo
    url: {url}
    inject:
      headers:
        Authorization: "Bearer ${{env:DECISION_LINES_TOKEN}}"
rules:
  - name: no shell
    match: {{tool: exec_shell}}
    action: deny
  - name: truncation waits briefly
    match:
      tool: run_sql
      args:
        "$.query": {{search: "(?i)truncate"}}
    action: approve
    approvers: [dba]
    timeout: 1s
  - name: destructive SQL needs a DBA
    match:
      tool: run_sql
      args:
        "$.query": {{search: "(?i)delete"}}
    action: approve
    approvers: [dba]
    timeout: 30s
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
masking:
  - name: pii
    detectors: [email, credit_card]
    strategy: redact
"""
)
DELETE = {"query": f"DELETE FROM customers WHERE email = '{PII_EMAIL}' OR email = '{PII_CARD}'"}
TRUNCATE = {"query": f"TRUNCATE customers -- {PII_EMAIL}"}
SHELL = {"command": f"mail {PII_EMAIL} < /etc/passwd"}
LINE = "holdgate decision: "


async def test_denied_held_approved_and_expired_calls_each_have_their_line_and_comment(
    demo, gateway_factory
):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url, env={"DECISION_LINES_TOKEN": TOKEN})
    async with connect(gw.url + "/mcp", ALICE) as client:
        with pytest.raises(MCPError):
            await client.call_tool("exec_shell", SHELL)
        with pytest.raises(MCPError) as expired:
            await client.call_tool("run_sql", TRUNCATE)
        assert "expired" in expired.value.message
        results = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                results.append(await client.call_tool("run_sql", DELETE))

            tg.start_soon(call)
            pending = await wait_for_pending(gw.db)
            approved = holdgate_cli(
                "approvals", "approve", pending["approval_id"], "--as", "dana", "--db", str(gw.db)
            )
            assert approved.returncode == 0, approved.stderr
    assert not results[0].is_error
    assert_nothing_leaked(gw, TOKEN, ALICE["X-API-Key"], PII_EMAIL, PII_CARD)

    lines = [line.split(LINE, 1)[1] for line in gw.log_text().splitlines() if LINE in line]
    approval = pending["approval_id"]
    assert "alice tools/call exec_shell: deny (rule 'no shell')" in lines
    held = next(line for line in lines if f"approval {approval}" in line and ": hold" in line)
    assert re.fullmatch(
        rf"alice tools/call run_sql: hold \(rule 'destructive SQL needs a DBA'; approval "
        rf"{approval}; approvers dba; expires \d\d:\d\d:\d\dZ\)",
        held,
    ), held
    assert any(
        re.fullmatch(
            rf"alice tools/call run_sql: approved by dana( via \w+)? \(rule 'destructive SQL "
            rf"needs a DBA'; approval {approval}\)",
            line,
        )
        for line in lines
    ), lines
    assert any(
        re.fullmatch(
            r"alice tools/call run_sql: expired \(rule 'truncation waits briefly'; approval "
            r"[0-9a-f-]+\)",
            line,
        )
        for line in lines
    ), lines
    holds = [line for line in lines if ": hold (rule 'truncation waits briefly'" in line]
    assert len(holds) == 1
    log = gw.log_text()
    for value in ("DELETE FROM", "TRUNCATE", "/etc/passwd"):  # no argument value is logged
        assert value not in log

    comments = [
        flow.comment
        for flows in read_every_file(gw.recordings).values()
        for flow in flows
        if b"tools/call" in (flow.request.content or b"")
    ]
    assert len(comments) == 3, comments
    expected = [
        "holdgate: alice tools/call exec_shell: deny (rule 'no shell')",
        "holdgate: alice tools/call run_sql: approved by dana",
        "holdgate: alice tools/call run_sql: expired (rule 'truncation waits briefly'",
    ]
    for start in expected:
        assert sum(comment.startswith(start) for comment in comments) == 1, (start, comments)
    for comment in comments:
        for value in ("DELETE FROM", "TRUNCATE", "/etc/passwd"):
            assert value not in comment
