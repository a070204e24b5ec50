"""The rule loop without a gateway: `policy check` names every mistake at once, `explain`
shows the values and patterns, `diff` compares two files rule by rule and on recorded
traffic, and `apply`'s atomic replacement keeps the watched file's mode and link."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from holdgate import store
from holdgate.cli.common import CheckFailed
from holdgate.cli.main import main
from holdgate.cli.policy_apply import (
    Rejected,
    replace_atomically,
    wait_in_force,
    write_in_place,
)

MULTI_MISTAKES = """\
version: 1
upstreams:
  - name: crm
    url: http://127.0.0.1:9
rules:
  - name: support reads
    match: {groups: [support], tol: get_customer, upstream: billing}
    action: allow
    limit: 30/fortnight
  - name: dba writes
    match:
      tool: run_sql
      args:
        "$.query": {regex: "(unclosed"}
        "$.db": {equals: x, in: [a]}
    action: approve
    timeout: soon
  - name: fine
    match: {tool: ping}
    action: allow
masking:
  - name: pii
    detectors: [email]
    exempt_group: [compliance]
    strategy: partal
"""


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_check_reports_every_mistake_of_every_item_with_line_and_rule_name(tmp_path):
    """`tol:` hid the bad `limit:` of its rule, `exempt_group:` the bad `strategy:` of its
    profile, and rules were named `rules[0]`."""
    path = tmp_path / "multi.yaml"
    path.write_text(MULTI_MISTAKES)
    result = run("policy", "check", str(path))
    assert result.exit_code == 1
    f = str(path)
    assert result.stderr.splitlines() == [
        "Error: 9 errors:",
        f"{f}:7:32: rules['support reads'].match.tol: unknown key 'tol'; did you mean 'tool'?",
        f"{f}:7:51: rules['support reads'].match.upstream: no upstream named 'billing'; known: crm",
        f"{f}:9:5: rules['support reads'].limit: expected a rate like 30/min or 5/s; "
        "got '30/fortnight'",
        f"{f}:14:21: rules['dba writes'].match.args.$.query.regex: invalid regular "
        "expression: missing ), unterminated subpattern at position 0",
        f"{f}:15:9: rules['dba writes'].match.args.$.db: give exactly one of equals, exists, "
        "in, path_under, regex, search",
        f"{f}:16:5: rules['dba writes'].action: an approve rule needs `approvers: [group, ...]`",
        f"{f}:17:5: rules['dba writes'].timeout: expected a duration like 30s, 10m, 2h or 7d; "
        "got 'soon'",
        f"{f}:24:5: masking['pii'].exempt_group: unknown key 'exempt_group'; did you mean "
        "'exempt_groups'?",
        f"{f}:25:5: masking['pii'].strategy: expected one of redact, partial, hash; got 'partal'",
    ]


def test_a_rule_without_a_readable_name_is_named_by_position(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nupstreams: [{name: a}]\nrules:\n  - match: {}\n    action: alow\n")
    result = run("policy", "check", str(path))
    assert f"{path}:4:5: rules[0]: missing required key 'name'" in result.stderr
    assert f"{path}:5:5: rules[0].action: expected one of allow, deny, approve" in result.stderr


EXPLAINED = """\
version: 1
upstreams: [{name: db}]
rules:
  - name: reads
    match:
      tool: run_sql
      args:
        "$.query": {regex: "(?i)select\\\\b[^;]*"}
        "$.limit": {in: [10, 100]}
    action: allow
  - name: tagged
    match: {tool: run_sql, args: {"$.tag": {exists: true}}}
    action: deny
masking:
  - name: pii
    detectors: [email]
    exempt_groups: [dba]
"""


def test_explain_shows_each_value_masked_and_the_condition_it_failed(tmp_path):
    """It printed `FAIL args: args $.query`: neither the value nor the pattern."""
    path = tmp_path / "p.yaml"
    path.write_text(EXPLAINED)
    query = "DELETE FROM t WHERE email = 'ann@example.com'"
    result = run(
        "policy", "explain", str(path), "--user", "dana", "--groups", "dba",
        "--tool", "run_sql", "--args", json.dumps({"query": query, "limit": 10}),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[3] == (
        "        FAIL args: args $.query: \"DELETE FROM t WHERE email = '[REDACTED:email]'\" "
        "does not match regex '(?i)select\\\\b[^;]*'"
    )
    assert lines[4] == "        ok   args: args $.limit: 10 is in [10, 100]"
    assert lines[7] == "        FAIL args: args $.tag: absent (exists true)"
    assert "ann@example.com" not in result.output  # masked as the record keeps it, exempt or not


def test_explain_says_when_a_value_cannot_be_decided_or_is_missing(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(EXPLAINED)
    result = run(
        "policy", "explain", str(path), "--tool", "run_sql",
        "--args", json.dumps({"query": ["select 1"], "limit": "10"}),
    )  # fmt: skip
    lines = result.output.splitlines()
    assert lines[3] == (
        '        FAIL args: args $.query: ["select 1"] cannot be decided against '
        "regex '(?i)select\\\\b[^;]*' (a value of another type)"
    )
    assert lines[4] == (
        '        FAIL args: args $.limit: "10" cannot be decided against in [10, 100] '
        "(a value of another type)"
    )
    tagged = run("policy", "explain", str(path), "--tool", "run_sql", "--args", '{"tag": null}')
    assert "ok   args: args $.tag: null cannot be decided (null) (exists true)" in tagged.output
    result = run("policy", "explain", str(path), "--tool", "run_sql", "--args", "{}")
    assert "FAIL args: args $.query: no value there (regex '(?i)select\\\\b[^;]*')" in (
        result.output
    )


OLD = """\
version: 1
upstreams: [{name: crm, host: crm.example}, {name: db, host: db.example}]
rules:
  - name: list
    match: {method: [initialize, tools/list]}
    action: allow
  - name: support reads
    match: {groups: [support], tool: ["get_*"]}
    action: allow
    limit: 60/min
  - name: sql
    match: {groups: [dba], tool: run_sql}
    action: allow
  - name: shell
    match: {tool: exec_shell}
    action: deny
"""

NEW = """\
version: 1
upstreams: [{name: crm, host: crm.example}, {name: db, host: db.example}]
rules:
  - name: shell
    match: {tool: exec_shell}
    action: deny
  - name: list
    match: {method: [initialize, tools/list]}
    action: allow
  - name: support reads
    match: {groups: [support], tool: [get_customer]}
    action: allow
    limit: 120/min
  - name: sql
    match: {groups: [dba], tool: run_sql, args: {"$.query": {regex: "(?i)select\\\\b.*"}}}
    action: approve
    approvers: [dba]
  - name: refunds
    match: {groups: [support], tool: refund_order}
    action: approve
    approvers: [finance]
    timeout: 10m
"""


@pytest.fixture
def versions(tmp_path: Path) -> tuple[str, str]:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(NEW)
    return str(old), str(new)


def test_diff_names_each_added_removed_and_changed_rule_with_what_changed(versions):
    old, new = versions
    result = run("policy", "diff", old, new)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        "added   rule 'refunds' (line 18)",
        "    action: approve",
        '    match.groups: ["support"]',
        '    match.tool: ["refund_order"]',
        '    approvers: ["finance"]',
        "    timeout: 600s",
        "    grant: 0s",
        "    approval_via: hold",
        "    reason: needs approval by rule 'refunds'",
        "changed rule 'shell' (line 14 -> 4)",
        "    position: after 'sql' -> first",
        "changed rule 'support reads' (line 7 -> 10)",
        '    match.tool: ["get_*"] -> ["get_customer"]',
        "    limit: 60/min -> 120/min",
        "changed rule 'sql' (line 11 -> 14)",
        "    action: allow -> approve",
        "    match.args.$.query: - -> regex '(?i)select\\\\b.*'",
        '    approvers: - -> ["dba"]',
        "    timeout: - -> 600s",
        "    grant: - -> 0s",
        "    approval_via: - -> hold",
        "    reason: allowed by rule 'sql' -> needs approval by rule 'sql'",
        "1 added, 0 removed, 3 changed, 1 unchanged",
    ]
    removed = run("policy", "diff", new, old)
    assert "removed rule 'refunds' (was line 18)" in removed.output


def test_diff_with_a_store_lists_the_recorded_decisions_that_would_change(versions, tmp_path):
    old, new = versions
    db = tmp_path / "audit.sqlite3"
    calls = [
        ("alice", ["support"], "crm", "get_customer", {"id": 1}, "support reads"),
        ("alice", ["support"], "crm", "get_invoice", {"id": 2}, "support reads"),
        ("dana", ["dba"], "db", "run_sql", {"query": "DROP TABLE t"}, "sql"),
    ]
    with store.SqliteStore(db) as opened:
        for user, groups, upstream, tool, args, rule in calls:
            opened.append(
                "events",
                {
                    "direction": "request",
                    "user": user,
                    "groups": groups,
                    "upstream": upstream,
                    "method": "tools/call",
                    "target": tool,
                    "decision": "allow",
                    "rule": rule,
                    "args_masked": json.dumps(args),
                },
            )
    result = run("policy", "diff", old, new, "--store", str(db))
    assert result.exit_code == 0, result.output
    text = result.output
    assert "3 recorded decisions replayed: 1 unchanged, 2 would change" in text
    assert "allow by 'support reads' -> deny by 'default-deny': 1" in text
    assert "allow by 'sql' -> deny by 'default-deny': 1" in text  # DROP is no select
    assert '      args {"query": "DROP TABLE t"}' in text
    as_json = json.loads(
        run("policy", "diff", old, new, "--db", str(db), "--format", "json").output
    )
    assert as_json["decisions"]["unchanged"] == 1
    assert [c["name"] for c in as_json["rules"]["changed"]] == ["shell", "support reads", "sql"]


def test_diff_of_a_file_with_itself_changes_nothing(versions):
    old, _ = versions
    result = run("policy", "diff", old, old)
    assert result.output.splitlines()[-1] == "0 added, 0 removed, 0 changed, 4 unchanged"


def test_diff_of_a_broken_file_names_its_mistake(versions, tmp_path):
    old, _ = versions
    broken = tmp_path / "broken.yaml"
    broken.write_text(OLD.replace("action: deny", "action: dny"))
    result = run("policy", "diff", old, str(broken))
    assert result.exit_code == 1
    assert f"{broken}:16:5: rules['shell'].action: expected one of" in result.stderr


def test_atomic_replacement_keeps_the_mode_and_replaces_a_link_s_target(tmp_path):
    real = tmp_path / "conf" / "holdgate.yaml"
    real.parent.mkdir()
    real.write_text("old\n")
    os.chmod(real, 0o600)
    link = tmp_path / "holdgate.yaml"
    link.symlink_to(real)
    replace_atomically(link, b"new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["holdgate.yaml"]  # no temp left


class FakeGateway:
    """Answers GET /config/hash from a list of states, one per call (the last repeats)."""

    def __init__(self, *states: dict[str, object]) -> None:
        self.states = list(states)

    def call(self, method: str, path: str, body: object = None) -> dict[str, object]:
        assert (method, path) == ("GET", "/config/hash")
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


class FakeReplicas:
    """A store whose live replicas catch up with NEW one heartbeat at a time."""

    def __init__(self, *rows: list[tuple[str, str, bool]]) -> None:
        self.rows = list(rows)

    def replicas(self) -> list[dict[str, object]]:
        now = self.rows.pop(0) if len(self.rows) > 1 else self.rows[0]
        return [{"replica": r, "config_hash": h, "alive": alive} for r, h, alive in now]


OLD_HASH, NEW_HASH = "a" * 64, "b" * 64


def state(digest: str, rejected: str | None = None) -> dict[str, object]:
    refused = {"config_hash": rejected, "detail": "f.yaml:3:1: bad"} if rejected else None
    return {"config_hash": digest, "file": "/etc/holdgate.yaml", "rejected": refused}


def waited(client, store=None, timeout=10.0):
    ticks = iter(range(1000))
    return wait_in_force(
        client, NEW_HASH, timeout, store, clock=lambda: float(next(ticks)), sleep=lambda s: None
    )


def test_apply_waits_for_every_live_replica_in_the_store():
    replicas = FakeReplicas(
        [("gw-a", NEW_HASH, True), ("gw-b", OLD_HASH, True), ("gw-c", OLD_HASH, False)],
        [("gw-a", NEW_HASH, True), ("gw-b", NEW_HASH, True), ("gw-c", OLD_HASH, False)],
    )
    client = FakeGateway(state(OLD_HASH), state(NEW_HASH))
    assert waited(client, replicas) is None  # gw-c is not alive: not waited for
    stuck = FakeReplicas([("gw-a", NEW_HASH, True), ("gw-b", OLD_HASH, True)])
    assert waited(FakeGateway(state(NEW_HASH)), stuck, timeout=3) == (
        f"live replicas still on another config: gw-b (sha256 {OLD_HASH[:12]})"
    )


def test_apply_stops_waiting_at_a_rejection_of_the_new_hash_only():
    older = FakeGateway(state(OLD_HASH, rejected="c" * 64), state(NEW_HASH))
    assert waited(older) is None  # an earlier rejection of another file is not this one
    with pytest.raises(Rejected, match="f.yaml:3:1: bad"):
        waited(FakeGateway(state(OLD_HASH, rejected=NEW_HASH)))
    assert waited(FakeGateway(state(OLD_HASH)), timeout=2) == (
        f"the gateway still runs sha256 {OLD_HASH[:12]} (its file: /etc/holdgate.yaml)"
    )


def test_a_file_that_cannot_be_replaced_is_a_message_and_stays_whole(tmp_path, monkeypatch):
    watched = tmp_path / "holdgate.yaml"
    watched.write_text("old\n")

    def refused(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("holdgate.cli.policy_apply.os.replace", refused)
    with pytest.raises(CheckFailed) as failed:
        write_in_place(watched, b"new\n")
    assert failed.value.message == (
        f"cannot write {watched} (Permission denied); nothing was replaced: check that its "
        "folder is writable by you"
    )
    assert watched.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holdgate.yaml"]  # no temp left
