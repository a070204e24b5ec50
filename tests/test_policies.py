"""Every shipped policy checks clean and passes its own policy tests (a new one needs tests)."""

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from holdgate.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.stem)
def test_policy_checks_and_passes_its_tests(policy, monkeypatch):
    monkeypatch.delenv("DEMO_UPSTREAM_TOKEN", raising=False)  # rules need no secret
    runner = CliRunner()
    checked = runner.invoke(main, ["policy", "check", str(policy)], catch_exceptions=False)
    assert checked.exit_code == 0, checked.output
    assert "warning:" not in checked.output
    tests = ROOT / "policies" / "tests" / f"{policy.stem}.tests.yaml"
    assert tests.exists(), f"{policy.name} has no policy tests at {tests}"
    result = runner.invoke(
        main, ["policy", "test", str(policy), str(tests)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.output


def test_check_names_file_line_and_key_and_suggests(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nupstreams: [{name: a}]\nrules:\n  - name: r\n"
        "    match: {tols: x}\n    action: allow\n"
    )
    result = CliRunner().invoke(main, ["policy", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:5:13: rules['r'].match.tols: unknown key 'tols'; did you mean 'tool'?" in (
        result.output
    )


def test_check_warns_about_unanchored_patterns_and_still_passes(tmp_path):
    risky = tmp_path / "risky.yaml"
    risky.write_text(
        "version: 1\nupstreams: [{name: a}]\nrules:\n"
        "  - name: front ends\n    match:\n      args:\n"
        "        '$.service': {search: '^(web|api)$'}\n    action: allow\n"
        "  - name: writes\n    match:\n      args:\n"
        "        '$.query': {regex: '(?i)\\b(delete|drop)\\b'}\n"
        "    action: approve\n    approvers: [dba]\n"
    )
    result = CliRunner().invoke(main, ["policy", "check", str(risky)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith(
        f"{risky}:7:23: rules['front ends'].match.args.$.service.search: warning: search: "
        "finds the pattern anywhere, so this allow rule passes any value that contains a match"
    )
    assert lines[1].startswith(
        f"{risky}:12:21: rules['writes'].match.args.$.query.regex: warning: regex: must match the "
        "whole value; to find the pattern anywhere in it (what a deny or approve rule"
    )
    assert lines[2].startswith(f"{risky}: ok (2 rules")


def test_explain_shows_every_rule_and_why(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nupstreams: [{name: crm}]\nrules:\n"
        "  - name: support reads\n    match: {groups: [support], tool: 'get_*'}\n"
        "    action: allow\n"
        "  - name: no shell\n    match: {tool: 'exec_*'}\n    action: deny\n"
    )
    result = CliRunner().invoke(
        main,
        [
            "policy",
            "explain",
            str(policy),
            "--user",
            "bob",
            "--groups",
            "eng",
            "--tool",
            "get_customer",
        ],
    )
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "request: bob ['eng'] -> crm tools/call get_customer",
        "skip  rule 'support reads' (line 4, action allow)",
        "        FAIL groups: groups ['eng']",
        "        ok   tool: tool 'get_customer'",
        "skip  rule 'no shell' (line 7, action deny)",
        "        FAIL tool: tool 'get_customer'",
        "no rule matched -> default-deny",
        "decision: deny by 'default-deny' (no rule allows this)",
    ]


def test_policy_test_failure_is_exit_1_with_a_readable_diff(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nupstreams: [{name: crm}]\nrules:\n"
        "  - name: all\n    match: {}\n    action: allow\n"
    )
    tests = tmp_path / "t.yaml"
    tests.write_text(
        "tests:\n  - name: shell_denied\n    request: {method: tools/call, "
        "tool: exec_shell}\n    expect: {action: deny, rule: no shell}\n"
    )
    result = CliRunner().invoke(main, ["policy", "test", str(policy), str(tests)])
    assert result.exit_code == 1
    assert "FAIL shell_denied" in result.output
    assert "expected action 'deny', rule 'no shell'" in result.output
    assert "got action 'allow', rule 'all'" in result.output


def test_bad_args_json_is_a_usage_error(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nupstreams: [{name: crm}]\n")
    result = CliRunner().invoke(
        main, ["policy", "explain", str(policy), "--tool", "x", "--args", "[1]"]
    )
    assert result.exit_code == 2


def _commands(group: click.Group, prefix: str = ""):
    for name in group.list_commands(click.Context(group)):
        command = group.get_command(click.Context(group), name)
        assert command is not None
        yield f"{prefix}{name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")


def test_every_command_has_help_and_is_documented():
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    for name, command in _commands(main):
        assert command.help, f"`holdgate {name}` has no help text"
        assert f"holdgate {name}" in docs, f"`holdgate {name}` is not in the docs"
