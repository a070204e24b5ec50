"""The review's exceptions about people's decisions, from rows the store recorded (SQLite
and PostgreSQL): approvals decided outside the approvers, by break-glass, at the mitmweb
console or before decisions said how they were made; certifications by non-reviewers or
by break-glass; campaigns closed with items undecided."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from helpers.configs import identity
from holdgate import store
from holdgate.cli.main import main
from holdgate.reports.decision_findings import Deciders, approval_findings, campaign_findings
from holdgate.store.campaign_records import Campaign, Item, ItemSpec

CONFIG = (
    "version: 1\n"
    + identity("carol", "dana")
    + """upstreams:
  - name: demo
    url: http://127.0.0.1:9
review:
  reviewers: [compliance]
rules:
  - name: support
    match: {groups: [support], tool: [get_customer]}
    action: allow
  - name: destructive SQL
    match: {tool: run_sql}
    action: approve
    approvers: [dba]
"""
)
DANA_KEY = {"via": "api_key", "key": "dana"}


def ask(db: store.Store, approval_id: str, requester: str = "bob") -> None:
    db.create_approval(
        {
            "approval_id": approval_id,
            "requester": requester,
            "upstream": "demo",
            "method": "tools/call",
            "tool": "run_sql",
            "rule": "destructive SQL",
            "approvers": '["dba"]',
            "via": "hold",
        }
    )


def review_json(where: str, config: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        main,
        ["review", "--format", "json", "--db", where, "--config", str(config), "--since", "1d"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def by_subject(review: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for f in review["exceptions"]:
        found.setdefault(f["subject"], []).append((f["kind"], f["detail"]))
    return found


def test_each_decision_a_reviewer_must_look_at_is_an_exception(where: str, tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(CONFIG)
    with store.open_store(where) as db:
        for n in range(1, 7):
            ask(db, f"a{n}")
        # an approver authenticated with a DBA key: nothing to look at
        db.decide_approval(
            "a1", "approved", "dana", ["dba"], "ok", channel="api", identity=DANA_KEY
        )
        db.decide_approval(
            "a2", "approved", "erin", None, "IdP down", channel="break-glass"
        )  # break-glass
        db.decide_approval(
            "a3", "denied", "dana", ["dba"], "no", channel="mitmweb", identity={"via": "console"}
        )
        # taken at its word: a name and no group checked (the CLI's --as before #27)
        db.decide_approval("a4", "approved", "alice", None, "sure", channel="cli")
        # written before decisions said how they were made (schema < 8)
        assert db.append_approval_state("a5", "approved", "alice", "old gateway")
        # recorded with the decider's groups, none of them an approver's
        current = db.approval("a6")
        assert current is not None
        db.append(
            "approvals",
            {
                **{k: current.get(k) for k in ("approval_id", "requester", "upstream", "tool")},
                "rule": "destructive SQL",
                "approvers": '["dba"]',
                "state": "approved",
                "decider": "alice",
                "channel": "inbox",
                "decided_as": json.dumps(
                    {"user": "alice", "groups": ["support"], "qualified_by": None}
                ),
            },
        )
        specs = [
            ItemSpec("alice", "demo", "tool", "get_customer", "support", {"calls": 1}),
            ItemSpec("alice", "demo", "tool", "search_customers", "support", {}),
            ItemSpec("bob", "demo", "tool", "run_sql", "destructive SQL", {}),
        ]
        period = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
        db.start_campaign("rc-1", period, "h", "carol", {}, specs)
        db.certify("rc-1.1", "keep", "carol", "in use", None)  # carol: a configured reviewer
        db.certify("rc-1.2", "revoke", "mallory", "unused", None)  # nobody's reviewer
        db.campaign_event("rc-1", "closed", "carol", {})  # rc-1.3 left undecided
        db.start_campaign("rc-2", period, "h", "carol", {}, specs[:1])
        closed = {"undecided": 1, "forced": True, "reason": "audit due", "channel": "cli"}
        db.campaign_event("rc-2", "closed", "dana", closed)
        db.start_campaign("rc-3", period, "h", "carol", {}, specs[:1])
        db.certify("rc-3.1", "keep", "carol", "in use", None)
        db.campaign_event("rc-3", "closed", "carol", {"undecided": 0, "forced": False})

    found = by_subject(review_json(where, config))
    assert "approval a1: run_sql for bob" not in found
    assert found["approval a2: run_sql for bob"] == [
        (
            "break-glass",
            "approved by erin via break-glass (no credential, no group checked; approvers: "
            "dba): IdP down",
        )
    ]
    assert found["approval a3: run_sql for bob"] == [
        ("mitmweb-decision", "denied by dana at the mitmweb console")
    ]
    ((kind, detail),) = found["approval a4: run_sql for bob"]
    assert kind == "decider-not-approver" and "no group of the decider was checked" in detail
    assert found["approval a5: run_sql for bob"] == [
        (
            "channel-not-recorded",
            "approved by alice: channel not recorded (a decision from before the store "
            "recorded how decisions were made)",
        )
    ]
    assert found["approval a6: run_sql for bob"] == [
        (
            "decider-not-approver",
            "approved by alice via inbox: groups support are not in the approvers (dba)",
        )
    ]
    carol = found["campaign rc-1 item rc-1.1: alice tool get_customer on demo"]
    assert [k for k, _ in carol] == ["channel-not-recorded"]  # but carol is a reviewer
    mallory = found["campaign rc-1 item rc-1.2: alice tool search_customers on demo"]
    assert ("certifier-not-reviewer") in [k for k, _ in mallory]
    assert any("revoke by mallory, whose groups (none;" in d for _, d in mallory)
    assert found["campaign rc-1"] == [
        ("closed-undecided", "closed by carol with 1 of 3 items undecided (counted from its items)")
    ]
    assert found["campaign rc-2"] == [
        ("closed-undecided", "closed by dana with --force with 1 of 1 items undecided: audit due")
    ]
    assert "campaign rc-3" not in found


def test_the_exceptions_say_why_in_every_format(tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(CONFIG)
    db_path = str(tmp_path / "audit.sqlite3")
    with store.open_store(db_path) as db:
        ask(db, "a1")
        db.decide_approval("a1", "approved", "<b>erin</b>", None, "x", channel="break-glass")
    pages = {}
    for fmt in ("md", "html", "json"):
        result = CliRunner().invoke(
            main,
            ["review", "--format", fmt, "--db", db_path, "--config", str(config)],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        pages[fmt] = result.output
    assert "## Exceptions (1)" in pages["md"] and "nobody authenticated it" in pages["md"]
    assert "<dt>break-glass</dt><dd>a decision written straight to the store" in pages["html"]
    assert "&lt;b&gt;erin&lt;/b&gt;" in pages["html"] and "<b>erin" not in pages["html"]
    (finding,) = json.loads(pages["json"])["exceptions"]
    assert finding["kind"] == "break-glass" and "no group was checked" in finding["why"]


@dataclass(frozen=True)
class RecordedItem(Item):
    """An item as the store gives it since decisions say how they were made (#27)."""

    decided_how: dict[str, Any] = field(default_factory=dict)


def item(n: int, reviewer: str, how: dict[str, Any]) -> RecordedItem:
    return RecordedItem(
        "rc-9",
        f"rc-9.{n}",
        "alice",
        "demo",
        "tool",
        "get_customer",
        "support",
        {},
        "keep",
        reviewer,
        "why",
        "2026-01-10T00:00:00Z",
        (),
        how,
    )


def test_certifications_are_judged_by_the_groups_their_record_shows() -> None:
    in_january = lambda ts: ts is not None and ts.startswith("2026-01")  # noqa: E731
    items = (
        item(1, "carol", {"channel": "api", "decided_as": {"groups": ["compliance"]}}),
        # carol's API key says compliance, but she certified with a support-only token
        item(2, "carol", {"channel": "inbox", "decided_as": {"groups": ["support"]}}),
        item(3, "carol", {"channel": "break-glass", "decided_as": {"groups": None}}),
        item(4, "zed", {"channel": "break-glass", "decided_as": {"groups": None}}),
    )
    campaign = Campaign("rc-9", "started", "", "", "h", "carol", "", (), items)
    deciders = Deciders(("compliance",), {"carol": ("compliance", "support")})
    found = [
        (f.subject.split()[3].rstrip(":"), f.kind)
        for f in campaign_findings([campaign], deciders, {}, in_january)
    ]
    assert found == [
        ("rc-9.2", "certifier-not-reviewer"),
        ("rc-9.3", "break-glass"),
        ("rc-9.4", "break-glass"),
        ("rc-9.4", "certifier-not-reviewer"),
    ]
    unconfigured = campaign_findings([campaign], Deciders(), {}, in_january)
    assert unconfigured[0].detail == (
        "keep by carol, whose groups (compliance; authenticated via api) are not among the "
        "reviewer groups (none configured: add `review: {reviewers: [GROUP]}` to the config)"
    )
    later = (item(5, "zed", {}),)
    outside = Campaign("rc-9", "started", "", "", "h", "carol", "", (), later)
    assert campaign_findings([outside], deciders, {}, lambda ts: False) == []


def test_a_decision_outside_the_period_is_not_an_exception_of_it(tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(CONFIG)
    db_path = str(tmp_path / "audit.sqlite3")
    with store.open_store(db_path) as db:
        ask(db, "a1")
        db.decide_approval("a1", "approved", "erin", None, "x", channel="break-glass")
    result = CliRunner().invoke(
        main,
        [
            "review",
            "--format",
            "json",
            "--db",
            db_path,
            "--config",
            str(config),
            "--until",
            "2020-01-01",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert not [
        f for f in json.loads(result.output)["exceptions"] if re.match("appr", f["subject"])
    ]


def test_a_decision_record_that_does_not_add_up_is_an_exception() -> None:
    """Groups with braces (a token's claim), a qualifying group the groups seen do not hold,
    a decided_as that is not JSON: each said, none taken for an approver's decision."""

    def row(n: int, decided_as: object) -> dict[str, Any]:
        return {
            "approval_id": f"a{n}",
            "state": "approved",
            "decided": "2026-01-10T00:00:00Z",
            "decider": "mallory",
            "requester": "bob",
            "tool": "run_sql",
            "approvers": '["dba"]',
            "channel": "api",
            "decided_as": decided_as,
        }

    rows = [
        row(1, json.dumps({"user": "mallory", "groups": ["{0}", "{x}"], "qualified_by": None})),
        row(2, json.dumps({"user": "mallory", "groups": ["support"], "qualified_by": "dba"})),
        row(3, "{not json"),
        row(4, json.dumps({"user": "dana", "groups": ["dba"], "qualified_by": "dba"})),
    ]
    found = [(f.subject.split(":")[0], f.detail) for f in approval_findings(rows, bool)]
    assert found == [
        (
            "approval a1",
            "approved by mallory via api: groups {0}, {x} are not in the approvers (dba)",
        ),
        (
            "approval a2",
            "approved by mallory via api: groups support are not in the approvers (dba)",
        ),
        (
            "approval a3",
            "approved by mallory via api: how the decider authenticated is unreadable, so no "
            "approver group is shown",
        ),
    ]


def test_a_close_whose_detail_is_unreadable_is_counted_from_its_items() -> None:
    items = (item(1, "carol", {}), replace(item(2, "carol", {}), state="open", reviewer=None))
    events = (
        {"ts": "2026-01-11T00:00:00Z", "event": "closed", "actor": "dana", "detail": "{oops"},
        {
            "ts": "2026-01-12T00:00:00Z",
            "event": "closed",
            "actor": "erin",
            "detail": '{"undecided": true}',
        },
    )
    campaign = Campaign("rc-9", "closed", "", "", "h", "carol", "", events, items)
    closes = [
        f.detail
        for f in campaign_findings([campaign], Deciders(("compliance",)), {}, bool)
        if f.kind == "closed-undecided"
    ]
    assert closes == [
        "closed by dana with 1 of 2 items undecided (counted from its items)",
        "closed by erin with 1 of 2 items undecided (counted from its items)",
    ]
