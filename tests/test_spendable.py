"""Issue 25 item 5, the pure part: when an approved approval may still let its call through."""

from __future__ import annotations

import pytest

from holdgate.approvals.spendable import rule_in_force, spend_refusal
from holdgate.config.gateway_config import parse_config_text
from holdgate.configfile import ConfigErrors
from holdgate.policy.rules import Decision
from holdgate.store.rows import iso, parse_iso

CONFIG = """version: 1
upstreams:
  - name: demo
    url: http://127.0.0.1:9
    on_tool_change: {{action: approve, approvers: [sec], timeout: 1m}}
rules:
  - name: listing
    match: {{method: [initialize, tools/list]}}
    action: allow
  - name: deletes
    match:
      tool: run_sql
      args:
        "$.query": {{search: "(?i)delete"}}
    action: approve
    approvers: [dba]
    timeout: {timeout}
{extra}"""
DECIDED = "2026-12-07T01:00:00.000Z"
AT = parse_iso(DECIDED)


def config(timeout: str = "3s", extra: str = "", listing_first: bool = True):
    text = CONFIG.format(timeout=timeout, extra=extra)
    if not listing_first:  # the same rules, the approve rule first: only lines move
        head, rules = text.split("rules:\n")
        listing, deletes = rules.split("  - name: deletes\n")
        text = head + "rules:\n  - name: deletes\n" + deletes + listing
    return parse_config_text(text)


def approved(decision: Decision, **changes):
    record = {
        "approval_id": "a1",
        "state": "approved",
        "rule": decision.rule,
        "rule_lineage": decision.lineage,
        "decided": DECIDED,
    }
    return {**record, **changes}


def test_spendable_within_the_timeout_after_the_decision():
    deletes = rule_in_force(config(), "deletes", "demo")
    assert deletes is not None and deletes.timeout == 3.0 and deletes.lineage
    record = approved(deletes)
    assert spend_refusal(record, deletes, AT) is None
    assert spend_refusal(record, deletes, AT + 3.0) is None
    late = spend_refusal(record, deletes, AT + 8.0)  # the reproduction: 8 s later
    assert late is not None and late.kind == "approval-expired"
    assert "expired after its decision" in late.reason and DECIDED in late.reason


def test_valid_for_sets_the_window_instead_of_the_timeout():
    deletes = rule_in_force(config(extra="    valid_for: 1m\n"), "deletes", "demo")
    assert deletes is not None and deletes.valid_for == 60.0
    record = approved(deletes)
    assert spend_refusal(record, deletes, AT + 59.0) is None
    assert spend_refusal(record, deletes, AT + 61.0) is not None


def test_a_changed_or_removed_rule_voids_the_approval():
    before = rule_in_force(config(), "deletes", "demo")
    assert before is not None
    record = approved(before)
    changed = rule_in_force(config(timeout="4s"), "deletes", "demo")
    assert changed is not None and changed.lineage != before.lineage
    void = spend_refusal(record, changed, AT)
    assert void is not None and void.kind == "rule-changed" and "was changed" in void.reason
    removed = spend_refusal(record, None, AT)
    assert removed is not None and removed.kind == "rule-changed" and "removed" in removed.reason
    renamed = Decision("approve", "other", "", ("dba",), 3.0, lineage=before.lineage)
    assert spend_refusal(record, renamed, AT) is not None
    now_allowed = Decision("allow", "deletes", "", lineage=before.lineage)
    assert spend_refusal(record, now_allowed, AT) is not None


def test_moving_a_rule_keeps_its_lineage():
    before = rule_in_force(config(), "deletes", "demo")
    moved = rule_in_force(config(listing_first=False), "deletes", "demo")
    assert before is not None and moved is not None
    assert moved.lineage == before.lineage


def test_approvals_without_lineage_or_decision_time_are_never_spent():
    deletes = rule_in_force(config(), "deletes", "demo")
    assert deletes is not None
    assert spend_refusal(approved(deletes, rule_lineage=None), deletes, AT) is not None
    assert spend_refusal(approved(deletes, decided=None), deletes, AT) is not None
    assert spend_refusal(approved(deletes, decided="not a time"), deletes, AT) is not None


def test_tool_change_approvals_have_the_upstreams_lineage():
    held = rule_in_force(config(), "tool-changed", "demo")
    assert held is not None and held.timeout == 60.0 and held.approvers == ("sec",)
    edited = parse_config_text(
        CONFIG.format(timeout="3s", extra="").replace("approvers: [sec]", "approvers: [ops]")
    )
    after = rule_in_force(edited, "tool-changed", "demo")
    assert after is not None and after.lineage != held.lineage
    assert spend_refusal(approved(held), after, AT) is not None
    assert rule_in_force(config(), "tool-changed", "elsewhere") is None
    assert rule_in_force(config(), "listing", "demo") is None  # not an approve rule
    assert rule_in_force(None, "deletes", "demo") is None


def test_the_record_time_format_round_trips():
    assert (
        spend_refusal(
            approved(Decision("approve", "r", "", (), 5.0, lineage="x")),
            Decision("approve", "r", "", (), 5.0, lineage="x"),
            parse_iso(iso(AT + 1)),
        )
        is None
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0s", "above zero"), ("-5s", "duration"), ("soon", "duration"), ("[1]", "duration")],
)
def test_bad_valid_for_is_refused_with_where_and_how(value, expected):
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(CONFIG.format(timeout="3s", extra=f"    valid_for: {value}\n"), "gw.yaml")
    message = str(info.value)
    assert "gw.yaml:" in message and "valid_for" in message and expected in message


def test_valid_for_only_on_approve_rules():
    text = CONFIG.format(timeout="3s", extra="").replace(
        "    action: allow\n", "    action: allow\n    valid_for: 1m\n", 1
    )
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text, "gw.yaml")
    assert "'valid_for' only applies to rules with action: approve" in str(info.value)
