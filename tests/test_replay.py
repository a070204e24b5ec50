"""Shadow replay without a proxy: which recorded rows are replayed, and how they group."""

from __future__ import annotations

import json

from holdgate.config.gateway_config import parse_config_text
from holdgate.policy.replay import format_report, replay

CANDIDATE_CONFIG = parse_config_text(
    """version: 1
upstreams:
  - name: db
    url: http://127.0.0.1:9000
rules:
  - name: no writes
    match: {tool: run_sql, args: {"$.query": {search: "(?i)^(delete|drop)"}}}
    action: deny
  - name: sql for dbas
    match: {groups: [dba], tool: run_sql}
    action: allow
"""
)
CANDIDATE = CANDIDATE_CONFIG.policy


def row(seq: int, **fields: object) -> dict[str, object]:
    base = {
        "seq": seq,
        "ts": f"2026-11-24T00:00:{seq:02d}.000Z",
        "direction": "request",
        "user": "dana",
        "groups": json.dumps(["dba"]),
        "upstream": "db",
        "method": "tools/call",
        "target": "run_sql",
        "decision": "allow",
        "rule": "sql for dbas",
        "args_masked": json.dumps({"query": "SELECT 1"}),
        "extra": "{}",
    }
    return {**base, **fields}


def test_changes_are_grouped_by_recorded_and_candidate_rule():
    rows = [
        row(1),
        row(2, args_masked=json.dumps({"query": "DELETE FROM t"})),
        row(3, args_masked=json.dumps({"query": "drop table t"})),
        row(4, user="bob", groups=json.dumps(["eng"]), decision="allow", rule="old rule"),
        row(5, decision="allow", rule="an older name"),
    ]
    report = replay(CANDIDATE, rows)
    assert report.considered == 5
    groups = report.grouped(report.changed)
    assert [m.seq for m in groups["allow", "sql for dbas", "deny", "no writes"]] == [2, 3]
    assert [m.seq for m in groups["allow", "old rule", "deny", "default-deny"]] == [4]
    assert [m.seq for m in report.rerouted] == [5]
    assert report.unchanged == 1


def test_rows_the_policy_did_not_decide_are_skipped_and_counted():
    rows = [
        row(1, decision="malformed", rule=None),
        row(2, direction="response", decision="allow"),
        row(3, rule="tool-changed", decision="deny"),
        row(4, decision="deny", extra=json.dumps({"rate_limited": True})),
        row(5, args_masked='{"query": "SELECT … [truncated]'),
    ]
    report = replay(CANDIDATE, rows)
    assert report.considered == 0
    assert sorted(report.skipped.values()) == [1, 1, 1]
    assert any("rate limit" in reason for reason in report.skipped)


def test_rows_whose_arguments_were_masked_are_flagged():
    flagged = row(1, user="eve", groups="[]", extra=json.dumps({"args_findings": {"email": 1}}))
    report = replay(CANDIDATE, [flagged])
    assert report.changed[0].args_were_masked
    text = "\n".join(format_report(report))
    assert "eve -> db tools/call run_sql *" in text
    assert "arguments held masked values" in text


def test_text_report_limits_examples_unless_asked():
    rows = [row(i, user="eve", groups="[]") for i in range(1, 9)]
    report = replay(CANDIDATE, rows)
    short = format_report(report, 5)
    assert "… and 3 more" in "\n".join(short)
    assert sum("eve -> db" in line for line in format_report(report, None)) == 8


def test_tasks_requests_are_replayed_by_their_owner_then_the_rules():
    link = json.dumps({"task": {"key": "k", "tool": "run_sql"}})
    other = json.dumps({"task": {"key": "k", "tool": "purge"}})
    tasks = dict(method="tasks/get", target=None, args_masked=None)
    rows = [
        row(1, **tasks, rule="own-task", extra=link),  # still dana's, run_sql still allowed
        row(2, **tasks, decision="deny", rule="foreign-task"),  # another caller's: still no
        row(3, **tasks, rule="own-task", extra=other),  # the candidate no longer allows purge
        row(4, method="tasks/list", target=None, args_masked=None, rule="own-tasks"),
        row(5, **tasks, decision="deny", rule="invalid-task-cursor"),
    ]
    report = replay(CANDIDATE, rows)
    assert report.considered == 4  # an invalid cursor is not the policy's decision
    assert [(m.seq, m.candidate.rule) for m in report.changed] == [(3, "task-tool-not-allowed")]
    assert report.unchanged == 3


def test_each_flipped_decision_shows_its_recorded_masked_arguments():
    """Which SQL flips: the report named the call but not its arguments."""
    masked = {"query": "DELETE FROM t WHERE email = 'a***@example.com'"}
    report = replay(CANDIDATE, [row(1), row(2, args_masked=json.dumps(masked))])
    (flipped,) = report.changed
    assert flipped.to_json()["args_masked"] == masked
    lines = format_report(report)
    at = next(i for i, line in enumerate(lines) if "seq 2" in line)
    assert lines[at + 1] == (
        '      args {"query": "DELETE FROM t WHERE email = \'a***@example.com\'"}'
    )
    assert not any("SELECT 1" in line for line in lines)  # only flipped ones are listed
