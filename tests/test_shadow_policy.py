"""The shadow policy's pure parts: how a candidate's decision differs, its own rate-limit
windows, its tally, and the report built from stored rows."""

import json

import pytest

from holdgate.policy.rules import Decision
from holdgate.policy.shadow import (
    ShadowAllowance,
    ShadowRateWindows,
    ShadowTally,
    difference_kind,
    shadow_record,
)
from holdgate.reports.shadow_report import build_report, render_text

ALLOW = Decision("allow", "reads", "")
ALLOW_OTHER = Decision("allow", "reads too", "")
APPROVE = Decision("approve", "needs a dba", "")
DENY = Decision("deny", "no shell", "")
LIMITED = Decision("deny", "reads", "rate limit", rate_limited=True)


@pytest.mark.parametrize(
    ("active", "candidate", "kind"),
    [
        pytest.param(ALLOW, ALLOW, None, id="same_rule_same_action_is_no_difference"),
        pytest.param(ALLOW, ALLOW_OTHER, "rule-only", id="another_rule_same_action"),
        pytest.param(ALLOW, DENY, "tighten", id="allowed_call_denied"),
        pytest.param(ALLOW, APPROVE, "tighten", id="allowed_call_held"),
        pytest.param(APPROVE, DENY, "tighten", id="held_call_denied"),
        pytest.param(DENY, ALLOW, "loosen", id="denied_call_allowed"),
        pytest.param(DENY, APPROVE, "loosen", id="denied_call_held"),
        pytest.param(APPROVE, ALLOW, "loosen", id="held_call_allowed"),
        pytest.param(ALLOW, LIMITED, "tighten", id="candidate_rate_limit_tightens"),
        pytest.param(LIMITED, ALLOW, "loosen", id="candidate_without_the_limit_loosens"),
    ],
)
def test_difference_kind(active, candidate, kind):
    assert difference_kind(active, candidate) == kind


def test_a_record_names_the_candidates_rate_limit():
    assert shadow_record(LIMITED, "abc", "tighten") == {
        "action": "deny",
        "rule": "reads",
        "config": "abc",
        "kind": "tighten",
        "rate_limited": True,
    }


def test_rate_windows_count_per_bucket_from_their_first_call_and_stay_bounded():
    windows = ShadowRateWindows(limit=2)
    assert [windows.take("a", 60, t) for t in (0, 1, 59)] == [1, 2, 3]
    assert windows.take("a", 60, 60) == 1  # a new window at the period's end
    assert windows.take("b", 60, 61) == 1
    windows.take("c", 60, 62)  # over the limit: the least recently used ("a") goes
    assert list(windows.windows) == ["b", "c"]


def test_tally_summary_lists_every_candidate_rule_with_its_calls():
    tally = ShadowTally()
    tally.decided(ALLOW, None)
    tally.decided(DENY, "tighten")
    tally.failed(KeyError("x"))
    tally.skipped += 1
    assert tally.summary(("reads", "no shell", "unused"), 60.0) == {
        "seconds": 60.0,
        "evaluated": 2,
        "same": 1,
        "changed": 1,
        "kinds": {"tighten": 1},
        "errors": 1,
        "error_types": {"KeyError": 1},
        "skipped": 1,
        "rules": {"reads": 1, "no shell": 1, "unused": 0},
    }
    assert ShadowTally().empty and not tally.empty


def event(seq, decision, rule, shadow, args=None, target="run_sql"):
    extra = {"shadow": shadow} if shadow is not None else {}
    return {
        "seq": seq,
        "ts": f"2026-12-07T00:00:0{seq}Z",
        "user": "alice",
        "method": "tools/call",
        "target": target,
        "decision": decision,
        "rule": rule,
        "args_masked": json.dumps(args) if args is not None else None,
        "extra": json.dumps(extra),
    }


def summary(config, detail, role="candidate"):
    return {
        "config_hash": config,
        "role": role,
        "outcome": "summary",
        "detail": json.dumps(detail),
    }


def test_report_groups_by_rule_pair_with_loosening_first_and_sums_coverage():
    tighten = {"action": "deny", "rule": "no sql", "config": "c1", "kind": "tighten"}
    loosen = {"action": "allow", "rule": "shell ok", "config": "c1", "kind": "loosen"}
    events = [
        event(1, "allow", "sql", tighten, {"query": "DROP TABLE [masked]"}),
        event(2, "allow", "sql", tighten, {"query": "select"}),
        event(3, "deny", "no shell", loosen, {"command": "id"}, target="exec_shell"),
        event(4, "allow", "sql", None),
        {**event(5, "allow", "sql", None), "extra": "not json"},
        event(6, "allow", "sql", {"kind": "unknown"}),
    ]
    versions = [
        summary("c1", {"evaluated": 3, "changed": 2, "rules": {"no sql": 2, "never": 0}}),
        summary("c1", {"evaluated": 1, "same": 1, "rules": {"shell ok": 1, "never": 0}}),
        summary("c1", {"evaluated": 99}, role=None),  # not a candidate's row
        {**summary("c1", {}), "detail": "{broken"},
    ]
    report = build_report(events, versions)
    assert [(p.kind, p.active_rule, p.candidate_rule, len(p.calls)) for p in report.pairs] == [
        ("loosen", "no shell", "shell ok", 1),
        ("tighten", "sql", "no sql", 2),
    ]
    assert report.pairs[1].calls[0].arguments == {"query": "DROP TABLE [masked]"}
    assert report.to_json()["differences"][1]["configs"] == ["c1"]
    assert report.loosened == 1
    (coverage,) = report.coverage
    assert coverage.counts["evaluated"] == 4 and coverage.counts["same"] == 1
    assert coverage.rules == {"no sql": 2, "never": 0, "shell ok": 1}
    assert coverage.unused == ["never"]
    text = render_text(report)
    assert text.index("LOOSEN") < text.index("TIGHTEN")
    assert '#3 2026-12-07T00:00:03Z alice exec_shell {"command": "id"}' in text
    assert "rules that saw no call: 'never'" in text


def test_report_of_no_rows_says_so():
    text = render_text(build_report([], []))
    assert "no differences" in text and "no summary rows" in text


def test_allowance_refills_at_its_share_of_the_clock_up_to_its_burst():
    allowance = ShadowAllowance(share=0.1, burst=0.05, left=0.05)
    assert allowance.available(0.0)
    allowance.spend(0.08)  # one slow evaluation overdraws it
    assert not allowance.available(0.2)  # -0.03 + 0.02
    assert allowance.available(0.4)  # -0.03 + 0.04
    assert allowance.available(100.0) and allowance.left == 0.05  # never beyond the burst
