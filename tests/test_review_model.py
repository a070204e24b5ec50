"""The review model, its renderers, campaign rules in the store, and policy narrowing."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from holdgate import store
from holdgate.config.gateway_config import parse_config_text
from holdgate.policy.policytest import build_message, caller_for
from holdgate.reports.campaigns import export_rows, narrowed_policy
from holdgate.reports.review_html import render_html
from holdgate.reports.review_model import (
    Evidence,
    Header,
    Inputs,
    build_review,
    campaign_items,
    versions_in_force,
)
from holdgate.reports.review_render import render_csv, render_markdown
from holdgate.store.campaign_records import ItemSpec

CONFIG = """version: 1
upstreams:
  - name: demo
    url: http://127.0.0.1:9
rules:
  - name: destructive SQL
    match: {tool: run_sql, args: {"$.query": {search: "(?i)delete"}}}
    action: approve
    approvers: [dba]
  - name: support
    match: {groups: [support], tool: [get_customer, search_customers, run_sql]}
    action: allow
review:
  reviewers: [compliance]
"""
HEADER = Header(
    "2026-01-01T00:00:00Z",
    "2026-02-01T00:00:00Z",
    "2026-02-01T00:00:00Z",
    "carol",
    "audit.sqlite3",
    "holdgate.yaml",
    Evidence(True, "hash chain intact (9 rows)", "signed checkpoints: not configured"),
)


def call(user, tool, decision, rule, ts="2026-01-05T10:00:00Z", **extra):
    return {
        "ts": ts,
        "direction": "request",
        "user": user,
        "groups": json.dumps(["support"]) if user else None,
        "upstream": "demo",
        "method": "tools/call",
        "target": tool,
        "decision": decision,
        "rule": rule,
        "session_id": "s1",
        **extra,
    }


def model(events, approvals=(), pins=(), versions=()):
    inputs = Inputs(events, approvals, (), pins, versions)
    return build_review(inputs, parse_config_text(CONFIG).policy, HEADER)


def test_denials_are_counted_apart_from_uses_with_their_rule_and_reason() -> None:
    review = model(
        [
            call("alice", "get_customer", "allow", "support"),
            call("alice", "exec_shell", "deny", "default-deny", reason="no rule allows this"),
        ]
    )
    (alice,) = review.identities
    assert list(alice.used) == [("demo", "tool", "get_customer")]
    (denial,) = alice.denials.values()
    assert (denial.rule, denial.reason, denial.count) == ("default-deny", "no rule allows this", 1)
    text = render_markdown(review)
    assert "| ` demo tool exec_shell ` | ` default-deny ` | 1 |" in text
    assert "### Denials (1 refused calls)" in text


def test_exceptions_name_anonymous_calls_missing_approvals_tool_changes_and_configs() -> None:
    review = model(
        [
            call(None, "get_customer", "deny", "default-deny"),
            call("alice", "run_sql", "approve", "destructive SQL", approval_id="gone"),
            call("alice", "run_sql", "approve", "destructive SQL", approval_id="a1"),
        ],
        approvals=[
            {
                "approval_id": "a1",
                "decided": "2026-01-05T10:01:00Z",
                "created": "2026-01-05T10:00:00Z",
                "requester": "alice",
                "tool": "run_sql",
                "state": "approved",
                "decider": "dana",
                "reason": "ticket 7",
                "approvers": '["dba"]',
                "channel": "api",  # an authenticated approver's decision: no exception
                "decided_as": json.dumps(
                    {
                        "via": "api_key",
                        "key": "dana",
                        "user": "dana",
                        "groups": ["dba"],
                        "qualified_by": "dba",
                    }
                ),
            }
        ],
        pins=[
            {
                "ts": "2026-01-02T00:00:00Z",
                "upstream": "demo",
                "tool": "get_customer",
                "event": "first-seen",
            },
            {
                "ts": "2026-01-03T00:00:00Z",
                "upstream": "demo",
                "tool": "get_customer",
                "event": "changed",
                "detail": "description changed",
            },
        ],
        versions=[
            {"ts": "2025-12-01T00:00:00Z", "config_hash": "a" * 64, "outcome": "loaded"},
            {"ts": "2026-01-04T00:00:00Z", "config_hash": "b" * 64, "outcome": "reloaded"},
        ],
    )
    kinds = [f.kind for f in review.exceptions]
    assert kinds == ["tool-changed", "config-changed", "no-approval-record", "no-identity"]
    (alice,) = review.identities
    assert alice.used[("demo", "tool", "run_sql")].calls == 2  # both reached the upstream
    (line,) = alice.approvals
    assert (line.state, line.decider, line.reason) == ("approved", "dana", "ticket 7")
    assert line.decided_by == "dana via api"
    assert "| ` dana via api ` |" in render_markdown(review)


def test_a_shadow_candidates_rows_are_no_config_change_and_never_in_force() -> None:
    candidate = {"config_hash": "c" * 64, "role": "candidate"}
    versions = [
        {"ts": "2025-12-01T00:00:00Z", "config_hash": "a" * 64, "outcome": "loaded"},
        {**candidate, "ts": "2026-01-02T00:00:00Z", "outcome": "loaded"},
        {**candidate, "ts": "2026-01-03T00:00:00Z", "outcome": "summary", "detail": "{}"},
        {**candidate, "ts": "2026-01-04T00:00:00Z", "outcome": "rejected"},
    ]
    review = model([], versions=versions)
    assert [f.kind for f in review.exceptions] == []
    in_force = versions_in_force(versions, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    assert [v["config_hash"] for v in in_force] == ["a" * 64]


def test_masked_exposures_are_a_table_per_target_and_detector() -> None:
    review = model(
        [
            call("alice", "search_customers", "allow", "support"),
            {
                **call("alice", "search_customers", "pass", None),
                "direction": "response",
                "masked": json.dumps({"email": 2, "iban": 1}),
            },
        ]
    )
    text = render_markdown(review)
    assert (
        "| ` search_customers ` | ` email ` | 2 |" in text
        and "masked exposures: email 2, iban 1" in text
    )
    assert '<td>search_customers</td><td>iban</td><td class="n">1</td>' in render_html(review)


def test_hostile_names_are_escaped_in_every_format() -> None:
    evil = "<img src=x onerror=alert(1)>|=cmd"
    review = model([call(evil, evil, "deny", "default-deny", reason=evil)])
    page = render_html(review)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    text = render_markdown(review)
    assert "` <img src=x onerror=alert(1)>\\|=cmd `" in text  # a code span: shown, not run
    assert "<img" not in rendered_markdown(review)
    assert "'<img" not in render_csv(review)  # only a leading = + - @ is neutralised
    row = render_csv(model([call("=HYPERLINK(1)", "get_customer", "allow", "x")])).splitlines()[1]
    assert row.startswith("'=HYPERLINK(1)")


def test_a_bidi_override_in_a_name_is_shown_not_obeyed_in_the_html_report() -> None:
    reordered = "alice\u202enimda"  # reads "alice" + "admin" reversed on screen
    page = render_html(model([call(reordered, "get_customer", "allow", "support")]))
    assert "\u202e" not in page and "alice\\u202enimda" in page


def _campaign_db(tmp_path: Path) -> tuple[store.Store, str]:
    opened = store.SqliteStore(tmp_path / "audit.sqlite3")
    specs = [
        ItemSpec("alice", "demo", "tool", "get_customer", "support", {"calls": 3}),
        ItemSpec("alice", "demo", "tool", "run_sql", "support", {"calls": 0}),
    ]
    started = opened.start_campaign(
        "rc-1", ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"), "h", "carol", {}, specs
    )
    return opened, started.campaign_id


def test_certification_rules_refuse_self_non_reviewers_twice_and_after_close(tmp_path) -> None:
    opened, cid = _campaign_db(tmp_path)
    with opened:
        with pytest.raises(store.SelfCertification):
            opened.certify(f"{cid}.1", "keep", "alice", "mine", None)
        with pytest.raises(store.NotAReviewer):
            opened.certify(f"{cid}.1", "keep", "bob", "ok", ("engineering",), ("compliance",))
        opened.certify(f"{cid}.1", "keep", "carol", "needed", ("compliance",), ("compliance",))
        with pytest.raises(store.AlreadyCertified, match="decided already: keep by carol"):
            opened.certify(f"{cid}.1", "revoke", "dana", "no", None)
        with pytest.raises(store.UnknownCampaign):
            opened.certify(f"{cid}.9", "keep", "carol", "x", None)
        opened.campaign_event(cid, "closed", "carol", {})
        with pytest.raises(store.CampaignClosed):
            opened.certify(f"{cid}.2", "revoke", "carol", "late", None)
        found = opened.campaign(cid)
        assert found is not None and opened.verify().ok
        first, second = found.items
        assert (first.state, first.reviewer, first.reason) == ("keep", "carol", "needed")
        assert [a["reviewer"] for a in first.refused] == ["alice", "bob", "dana"]
        assert second.state == "open" and [a["reviewer"] for a in second.refused] == ["carol"]
        assert export_rows(found)[0]["refused_attempts"] == 3


def test_campaign_items_are_each_identity_grant_with_its_use() -> None:
    review = model([call("alice", "get_customer", "allow", "support")])
    specs = campaign_items(review)
    assert [(s.user, s.target, s.rule, s.usage["calls"]) for s in specs] == [
        ("alice", "get_customer", "support", 1)
    ]


NAMES = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, unique=True)


@settings(max_examples=60, deadline=None)
@given(tools=NAMES, revoked=st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True))
def test_narrowing_denies_exactly_the_revoked_grants(tools, revoked) -> None:
    text = (
        "version: 1\nupstreams:\n  - {name: demo, url: 'http://127.0.0.1:9'}\n"
        "rules:\n  - name: team\n    match: {groups: [team], "
        f"tool: {json.dumps(tools)}}}\n    action: allow\n"
    )
    revoked = [t for t in revoked if t in tools]
    items = tuple(
        store.Item("rc-x", f"rc-x.{n}", "u1", "", "tool", t, "team", {}, "revoke")
        for n, t in enumerate(revoked)
    )
    campaign = store.Campaign("rc-x", "closed", "", "", "", "", "", (), items)
    candidate = parse_config_text(narrowed_policy(text, campaign)[0])
    original = parse_config_text(text)
    for user in ("u1", "u2"):
        caller = caller_for(user, ("team",))
        for tool in ["a", "b", "c", "d", "e", "z"]:
            before = original.policy.evaluate(caller, "demo", build_message("tools/call", tool, {}))
            after = candidate.policy.evaluate(caller, "demo", build_message("tools/call", tool, {}))
            gone = user == "u1" and tool in revoked
            assert after.action == ("deny" if gone else before.action)


HOSTILE = (
    "![pixel](http://127.0.0.1:9/track.png?who=reviewer)",
    "[x](javascript:alert(1))",
    "<img src=x>",
    "a `code` b `` c ``` d",
    "`",
    "line\n# heading\n\n- item\n| a | b |\n|---|---|",
    "x | y \\| z |",
    "http://127.0.0.1:9/autolink www.example.com",
    "*em* __strong__ ~~del~~ <b>bold</b> &lt;entity&gt; &#60;img&#62;",
)


def rendered_markdown(review) -> str:
    """The Markdown report as GitHub renders it (cmark-gfm, raw HTML let through so any
    that is not neutralised shows)."""
    import cmarkgfm
    from cmarkgfm.cmark import Options

    return cmarkgfm.github_flavored_markdown_to_html(
        render_markdown(review), options=Options.CMARK_OPT_UNSAFE
    )


def _review_with(text: str):
    events = [
        {**call(text, text, "deny", text, reason=text), "session_id": "s-evil"},
        call(text, "run_sql", "approve", "destructive SQL", approval_id="a1"),
    ]
    approvals = [
        {
            "approval_id": "a1",
            "decided": "2026-01-05T10:01:00Z",
            "created": "2026-01-05T10:00:00Z",
            "requester": text,
            "tool": text,
            "state": "denied",
            "decider": text,
            "reason": text,
        }
    ]
    sessions = [{"session_id": "s-evil", "client": f"{text} {text}/1.0"}]
    return build_review(
        Inputs(events, approvals, sessions), parse_config_text(CONFIG).policy, HEADER
    )


def skeleton(page: str) -> list[str]:
    return re.findall(r"</?[a-z][a-z0-9]*", page)


@pytest.mark.parametrize("evil", HOSTILE)
def test_caller_text_in_the_markdown_report_is_inert(evil: str) -> None:
    page = rendered_markdown(_review_with(evil))
    assert "<img" not in page and "<a " not in page
    # the same elements, in the same order, as for a harmless name: nothing added or split
    assert skeleton(page) == skeleton(rendered_markdown(_review_with("plain")))
    shown = " ".join(evil.split())
    assert html.escape(shown, quote=False) in page


def test_a_suggestion_with_backticks_and_newlines_stays_inside_its_yaml_block() -> None:
    evil = "x\n```\n![pixel](http://127.0.0.1:9/t.png)\n```"
    config = CONFIG.replace("search_customers, run_sql]", 'search_customers, run_sql, "x*"]')
    inputs = Inputs([call("alice", evil, "allow", "support")])
    review = build_review(inputs, parse_config_text(config).policy, HEADER)
    page = rendered_markdown(review)
    assert "<img" not in page
    (block,) = [b for b in page.split("<pre") if 'lang="yaml"' in b[:40]]
    assert "t.png" in block
