"""Least-privilege suggestions: what each identity used, as the policy in force grants it,
and never a call decided more loosely than that policy decides it."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.decisions import looser
from holdgate.config.gateway_config import parse_config_text
from holdgate.policy.policytest import build_message, caller_for
from holdgate.policy.rules import Decision, Policy
from holdgate.reports.least_privilege import Use, suggest, suggestion_yaml

HEAD = (
    "version: 1\nupstreams:\n  - {name: demo, url: 'http://127.0.0.1:9'}\n"
    "  - {name: db, url: 'http://127.0.0.1:9/db', prefix: /db}\n"
)


def policy_of(rules: list[dict[str, Any]]) -> Policy:
    return parse_config_text(HEAD + yaml.safe_dump({"rules": rules}, sort_keys=False)).policy


def suggested_policy(user: str, groups: tuple[str, ...], uses: list[Use], active: Policy):
    """The suggestion as an operator would paste it: its YAML text, read by the config."""
    text = suggestion_yaml(user, suggest(user, groups, uses, active))
    return parse_config_text(
        HEAD + "rules:\n" + "\n".join(f"  {line}" for line in text.splitlines())
    )


def decide(policy: Policy, user: str, groups: tuple[str, ...], call: tuple[str, dict]) -> Decision:
    tool, args = call
    return policy.evaluate(
        caller_for(user, groups), "demo", build_message("tools/call", tool, args)
    )


# --- the cases --------------------------------------------------------------

DEMO = [
    {
        "name": "support reads customers",
        "match": {"groups": ["support"], "method": "tools/call", "tool": ["get_*", "search_*"]},
        "action": "allow",
        "limit": "120/min",
    },
    {
        "name": "engineers read the database",
        "match": {
            "groups": ["engineering", "dba"],
            "tool": "run_sql",
            "args": {"$.query": {"regex": "(?is)\\s*select\\b(?!.*\\binto\\b)[^;]*;?\\s*"}},
        },
        "action": "allow",
    },
    {
        "name": "other SQL needs a DBA",
        "match": {"groups": ["engineering", "dba"], "tool": "run_sql"},
        "action": "approve",
        "approvers": ["dba"],
        "timeout": "10m",
        "grant": "15m",
    },
    {
        "name": "engineers use their tools",
        "match": {"groups": ["engineering"], "tool": ["get_service_config", "slow_echo"]},
        "action": "allow",
    },
]


def test_an_approved_use_stays_an_approval_with_its_approvers_timeout_and_grant() -> None:
    active = policy_of(DEMO)
    uses = [
        Use(("demo", "tool", "run_sql"), "other SQL needs a DBA"),
        Use(("demo", "tool", "get_service_config"), "engineers use their tools"),
    ]
    rules = suggest("bob", ("engineering",), uses, active)
    approve = next(r for r in rules if r["action"] == "approve")
    assert approve["match"]["users"] == ["bob"] and approve["match"]["tool"] == ["run_sql"]
    assert (approve["approvers"], approve["timeout"], approve["grant"]) == (["dba"], "10m", "15m")
    # the SELECT rule he did not use is not granted: a SELECT asks the DBA too
    suggested = suggested_policy("bob", ("engineering",), uses, active).policy
    select = decide(suggested, "bob", ("engineering",), ("run_sql", {"query": "SELECT 1"}))
    assert (select.action, select.approvers) == ("approve", ("dba",))
    assert decide(suggested, "bob", ("engineering",), ("slow_echo", {})).action == "deny"


def test_a_limited_grant_keeps_its_limit_and_the_rest_of_a_limited_rule_is_denied() -> None:
    active = policy_of(DEMO)
    uses = [Use(("demo", "tool", "get_customer"), "support reads customers")]
    rules = suggest("alice", ("support",), uses, active)
    assert rules[0]["limit"] == "120/min" and rules[0]["match"]["tool"] == ["get_customer"]
    assert rules[0]["match"]["method"] == ["tools/call"]  # the rule's own conditions stay
    suggested = suggested_policy("alice", ("support",), uses, active).policy
    got = decide(suggested, "alice", ("support",), ("get_customer", {}))
    assert (got.action, got.limit) == ("allow", (120, 60.0))
    assert decide(suggested, "alice", ("support",), ("search_customers", {})).action == "deny"


def test_a_call_left_out_does_not_fall_through_to_a_looser_later_copy() -> None:
    """An approve rule before the allow rule used: a call it holds today is not let through
    by the copy of the allow rule below it."""
    active = policy_of(
        [
            {
                "name": "deletes need a DBA",
                "match": {"tool": "run_sql", "args": {"$.query": {"search": "(?i)delete"}}},
                "action": "approve",
                "approvers": ["dba"],
            },
            {"name": "sql", "match": {"tool": "run_sql"}, "action": "allow"},
        ]
    )
    uses = [Use(("demo", "tool", "run_sql"), "sql")]
    suggested = suggested_policy("bob", (), uses, active).policy
    assert decide(suggested, "bob", (), ("run_sql", {"query": "select 1"})).action == "allow"
    assert decide(suggested, "bob", (), ("run_sql", {"query": "DELETE FROM t"})).action == "deny"


def test_a_name_holding_a_wildcard_keeps_the_rules_own_glob_never_a_wider_one() -> None:
    active = policy_of([{"name": "one char", "match": {"tool": ["a?"]}, "action": "allow"}])
    rules = suggest("u", (), [Use(("demo", "tool", "a*"), "one char")], active)
    assert rules[0]["match"]["tool"] == ["a?"]  # `a*` as a glob would grant `abc`


def test_a_rule_used_for_resources_and_prompts_is_copied_per_kind() -> None:
    active = policy_of(
        [
            {
                "name": "schema and prompts",
                "match": {"method": ["resources/read", "prompts/get"]},
                "action": "allow",
            }
        ]
    )
    uses = [
        Use(("demo", "resource", "db://schema/customers"), "schema and prompts"),
        Use(("demo", "prompt", "summarise"), "schema and prompts"),
    ]
    rules = suggest("u", (), uses, active)
    assert [r["match"].get("resource") or r["match"].get("prompt") for r in rules] == [
        ["summarise"],
        ["db://schema/customers"],
    ]
    suggested = suggested_policy("u", (), uses, active).policy
    caller = caller_for("u", ())

    def read(method: str, target: str) -> str:
        return suggested.evaluate(caller, "demo", build_message(method, target)).action

    assert read("resources/read", "db://schema/customers") == "allow"
    assert read("resources/read", "db://schema/secrets") == "deny"
    assert read("prompts/get", "summarise") == "allow"
    assert read("prompts/get", "other") == "deny"


def test_a_use_no_rule_grants_any_more_is_not_suggested() -> None:
    active = policy_of([{"name": "x", "match": {"tool": "x"}, "action": "allow"}])
    rules = suggest("u", (), [Use(("demo", "tool", "gone"), "old rule")], active)
    assert rules == [] and "remove every grant" in suggestion_yaml("u", rules)


def test_control_characters_and_line_breaks_stay_escaped_on_one_line() -> None:
    name = "x\n```\n\x1b]8;;http://evil\x07 \u202egnp.exe"
    active = policy_of([{"name": "any", "match": {"tool": "*"}, "action": "allow"}])
    text = suggestion_yaml("u", suggest("u", (), [Use(("demo", "tool", name), "any")], active))
    assert "\x1b" not in text and "\u202e" not in text and "\n```" not in text
    assert yaml.safe_load(text)[0]["match"]["tool"] == [name]


# --- the property ----------------------------------------------------------------------

TOOLS = ["a", "b", "c", "run_sql"]
METHODS = ["tools/call", "prompts/get"]
KINDS = {"tools/call": "tool", "prompts/get": "prompt"}
GROUPS = ["g1", "g2"]
CONDITIONS = st.sampled_from(
    [
        {"$.x": {"equals": 1}},
        {"$.x": {"in": [1, 2]}},
        {"$.q": {"search": "drop"}},
        {"$.q": {"regex": "select [a-z]+"}},
        {"$.x": {"exists": True}},
    ]
)


@st.composite
def rules(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for n in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["allow", "allow", "deny", "approve"]))
        match: dict[str, Any] = {}
        names = st.lists(st.sampled_from([*TOOLS, "*", "r*", "?"]), min_size=1, unique=True)
        target = draw(st.sampled_from(["tool", "prompt", None, None]))
        if target is not None:
            match[target] = draw(names)
        elif draw(st.booleans()):
            match["method"] = draw(st.lists(st.sampled_from(METHODS), min_size=1, unique=True))
        if draw(st.integers(0, 3)) == 0:
            match["upstream"] = draw(st.sampled_from(["demo", "db"]))
        if draw(st.booleans()):
            match["groups"] = draw(st.lists(st.sampled_from(GROUPS), min_size=1, unique=True))
        if draw(st.integers(0, 4)) == 0:
            match["users"] = draw(st.lists(st.sampled_from(["u1", "u2"]), min_size=1, unique=True))
        if draw(st.booleans()):
            match["args"] = draw(CONDITIONS)
        rule: dict[str, Any] = {"name": f"r{n}", "match": match, "action": action}
        if action == "approve":
            rule["approvers"] = draw(st.lists(st.sampled_from(["dba", "ops"]), min_size=1))
            rule["timeout"] = draw(st.sampled_from(["30s", "10m"]))
            if draw(st.booleans()):
                rule["grant"] = "15m"
        if action == "allow" and draw(st.booleans()):
            rule["limit"] = draw(st.sampled_from(["5/min", "120/min", "10/s"]))
        out.append(rule)
    return out


ARGS = st.sampled_from(
    [{}, {"x": 1}, {"x": 2}, {"x": 3}, {"q": "select abc"}, {"q": "drop table"}, {"q": "x"}]
)
CALLS = st.tuples(
    st.sampled_from(["demo", "db"]), st.sampled_from(METHODS), st.sampled_from([*TOOLS, "zz"]), ARGS
)


def decide_call(policy: Policy, user: str, groups: tuple[str, ...], call: tuple) -> Decision:
    upstream, method, name, args = call
    return policy.evaluate(caller_for(user, groups), upstream, build_message(method, name, args))


@settings(max_examples=200, deadline=None)
@given(
    written=rules(),
    groups=st.lists(st.sampled_from(GROUPS), unique=True).map(tuple),
    traffic=st.lists(CALLS, max_size=8),
    others=st.lists(CALLS, max_size=12),
    other_groups=st.lists(st.sampled_from(GROUPS), unique=True).map(tuple),
)
def test_a_suggestion_never_decides_a_call_more_loosely(
    written, groups, traffic, others, other_groups
) -> None:
    """Random policies and recorded traffic: replayed against the suggestion, each recorded
    call and any other call (also with other groups in the credential) is decided no more
    loosely than by the policy in force; each recorded use is decided as it was."""
    active = policy_of(written)
    uses = []
    for call in traffic:
        decision = decide_call(active, "u1", groups, call)
        if decision.action != "deny":  # allowed, or approved by an approver
            target = (call[0], KINDS[call[1]], call[2])
            uses.append((call, decision, Use(target, decision.rule)))
    suggested = suggested_policy("u1", groups, [u for _, _, u in uses], active).policy
    for call, before, _ in uses:
        after = decide_call(suggested, "u1", groups, call)
        assert (after.action, after.limit, after.approvers) == (
            before.action,
            before.limit,
            before.approvers,
        ), (call, json.dumps(written))
    for who in (groups, other_groups):
        for call in [c for c, _, _ in uses] + others:
            problem = looser(
                decide_call(suggested, "u1", who, call), decide_call(active, "u1", who, call)
            )
            assert problem is None, (problem, call, who, json.dumps(written))
