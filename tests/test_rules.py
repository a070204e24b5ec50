"""Matcher tests, named like OPA policy tests: literal input, expected decision."""

import json
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from holdgate.configfile import ConfigError, parse_yaml
from holdgate.policy.rules import Policy, parse_rules
from holdgate.protocol.jsonrpc import parse_body

RULES = """
rules:
  - name: support reads customers
    match:
      upstream: crm
      groups: [support]
      method: tools/call
      tool: ["get_*", "search_*"]
    action: allow
  - name: destructive SQL needs a DBA
    match:
      tool: run_sql
      args:
        "$.query": {search: "(?i)\\\\b(drop|delete)\\\\b"}
    action: approve
    approvers: [dba]
    timeout: 10m
    grant: 15m
  - name: no shell
    match: {tool: ["exec_*", "shell*"]}
    action: deny
    reason: shell access is not granted through the gateway
  - name: reads by region
    match:
      tool: report
      args:
        "$.filters[*].region": {in: [eu, us]}
        "$.dry_run": {equals: true}
    action: allow
  - name: bob only
    match: {users: [bob], tool: whoami}
    action: allow
  - name: everyone may list and initialize
    match: {method: [initialize, "notifications/*", tools/list, ping]}
    action: allow
"""


@dataclass(frozen=True)
class Caller:
    user: str
    groups: tuple[str, ...] = ()
    method: str = "api_key"


ANON = Caller("anonymous", (), "anonymous")


def policy(text: str = RULES) -> Policy:
    return parse_rules(parse_yaml(text, "t.yaml").root.child("rules"))


def msg(method: str, **params):
    raw = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return parse_body(json.dumps(raw).encode(), max_bytes=1 << 20).messages[0]


def call(tool: str, **args):
    return msg("tools/call", name=tool, arguments=args)


@pytest.mark.parametrize(
    ("name", "caller", "upstream", "message", "action", "rule"),
    [
        (
            "support_reads_customer_allowed",
            Caller("alice", ("support",)),
            "crm",
            call("get_customer", id=1),
            "allow",
            "support reads customers",
        ),
        (
            "support_on_other_upstream_denied",
            Caller("alice", ("support",)),
            "hr",
            call("get_customer", id=1),
            "deny",
            "default-deny",
        ),
        (
            "engineer_reads_customer_denied",
            Caller("bob", ("eng",)),
            "crm",
            call("get_customer"),
            "deny",
            "default-deny",
        ),
        (
            "drop_table_needs_approval",
            Caller("alice", ("support",)),
            "crm",
            call("run_sql", query="DROP TABLE x"),
            "approve",
            "destructive SQL needs a DBA",
        ),
        (
            "select_is_default_denied",
            Caller("alice", ("support",)),
            "crm",
            call("run_sql", query="select 1"),
            "deny",
            "default-deny",
        ),
        (
            "shell_denied_with_reason",
            Caller("dana", ("dba",)),
            "crm",
            call("exec_shell", command="ls"),
            "deny",
            "no shell",
        ),
        (
            "case_variant_is_not_the_rule_but_still_denied",
            Caller("alice", ("support",)),
            "crm",
            call("Get_customer"),
            "deny",
            "default-deny",
        ),
        (
            "region_in_list_allowed",
            ANON,
            "crm",
            call("report", filters=[{"region": "us"}, {"region": "eu"}], dry_run=True),
            "allow",
            "reads by region",
        ),
        (
            # an allow rule's condition must hold for every value the path finds
            "one_region_outside_the_list_denied",
            ANON,
            "crm",
            call("report", filters=[{"region": "apac"}, {"region": "eu"}], dry_run=True),
            "deny",
            "default-deny",
        ),
        (
            "region_not_in_list_denied",
            ANON,
            "crm",
            call("report", filters=[{"region": "apac"}], dry_run=True),
            "deny",
            "default-deny",
        ),
        (
            "equals_true_is_not_one",
            ANON,
            "crm",
            call("report", filters=[{"region": "eu"}], dry_run=1),
            "deny",
            "default-deny",
        ),
        (
            "anonymous_never_matches_users",
            Caller("bob", (), "anonymous"),
            "crm",
            call("whoami"),
            "deny",
            "default-deny",
        ),
        ("bob_matches_users", Caller("bob"), "crm", call("whoami"), "allow", "bob only"),
        (
            "notification_glob",
            ANON,
            "crm",
            msg("notifications/initialized"),
            "allow",
            "everyone may list and initialize",
        ),
    ],
)
def test_decisions(name, caller, upstream, message, action, rule):
    decision = policy().evaluate(caller, upstream, message)
    assert (decision.action, decision.rule) == (action, rule), name


def test_approve_rule_carries_approvers_timeout_and_grant():
    decision = policy().evaluate(ANON, "crm", call("run_sql", query="delete from t"))
    assert decision.approvers == ("dba",)
    assert (decision.timeout, decision.grant) == (600.0, 900.0)


def test_explain_lists_every_rule_considered_and_why():
    decision, trace = policy().explain(Caller("bob", ("eng",)), "crm", call("get_customer"))
    assert decision.rule == "default-deny"
    assert len(trace) == 6
    first_rule, checks = trace[0]
    assert first_rule.name == "support reads customers"
    assert [(c.key, c.held) for c in checks] == [
        ("upstream", True),
        ("groups", False),
        ("method", True),
        ("tool", True),
    ]


def test_discovery_filter():
    p = policy()
    alice = Caller("alice", ("support",))
    assert p.may_use(alice, "crm", "tools/call", "get_customer")
    assert p.may_use(alice, "crm", "tools/call", "run_sql")  # may be approved
    assert not p.may_use(alice, "crm", "tools/call", "exec_shell")
    assert not p.may_use(Caller("bob", ("eng",)), "crm", "tools/call", "get_customer")


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        (
            "rules:\n  - name: a\n    match: {tol: x}\n    action: allow\n",
            "t.yaml:3:13",
            "did you mean 'tool'",
        ),
        (
            "rules:\n  - name: a\n    match: {}\n    action: permit\n",
            "t.yaml:4:5",
            "one of allow, deny, approve",
        ),
        ("rules:\n  - name: a\n    match: {}\n    action: approve\n", "t.yaml:4:5", "approvers"),
        (
            "rules:\n  - name: a\n    match: {args: {'$[': {exists: true}}}\n    action: allow\n",
            "t.yaml:3",
            "invalid JSONPath",
        ),
        (
            "rules:\n  - name: a\n    match: {args: {'$.q': {regex: '('}}}\n    action: allow\n",
            "t.yaml:3",
            "invalid regular expression",
        ),
        (
            "rules:\n  - name: a\n    match: {}\n    action: allow\n    limit: lots\n",
            "t.yaml:5:5",
            "30/min",
        ),
        (
            "rules:\n  - name: a\n    match: {}\n    action: allow\n  - name: a\n    match: {}\n"
            "    action: deny\n",
            "t.yaml:5:5",
            "used twice",
        ),
        ("rules:\n  - name: a\n    action: allow\n", "t.yaml:2:5", "match"),
    ],
)
def test_config_errors_name_file_line_and_key(text, where, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        policy(text)
    assert str(info.value).startswith(where)


@given(st.dictionaries(st.sampled_from(["query", "a", "b", "c"]), st.text(max_size=8)))
def test_decision_never_depends_on_key_order(args):
    args = {**args, "query": "drop table t"}
    forward = call("run_sql", **args)
    backward = call("run_sql", **dict(reversed(list(args.items()))))
    p = policy()
    assert p.evaluate(ANON, "crm", forward) == p.evaluate(ANON, "crm", backward)


def linear(p: Policy, caller, upstream, message):
    """First match over every rule, without the tool index."""
    from holdgate.policy.rules import decision_for, rule_checks

    for rule in p.rules:
        if all(c.held for c in rule_checks(rule, caller, upstream, message, lazy=True)):
            return decision_for(rule)
    return None


TOOLS = ["a", "b", "c", "a*", "?", "*"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["allow", "deny"]),
            st.lists(st.sampled_from(TOOLS), max_size=2),
            st.booleans(),
        ),
        max_size=8,
    ),
    st.sampled_from(["a", "b", "c", "ab", "zz"]),
    st.sampled_from(["tools/call", "ping"]),
)
def test_tool_index_decides_exactly_like_first_match(specs, tool, method):
    text = "rules:\n" + "".join(
        f"  - name: r{i}\n    match: {{{'tool: ' + json.dumps(tools) + ', ' if tools else ''}"
        f"{'groups: [g]' if grouped else 'upstream: [crm]'}}}\n    action: {action}\n"
        for i, (action, tools, grouped) in enumerate(specs)
    )
    p = policy(text)
    message = call(tool) if method == "tools/call" else msg("ping")
    caller = Caller("u", ("g",))
    expected = linear(p, caller, "crm", message)
    got = p.evaluate(caller, "crm", message)
    assert got.rule == (expected.rule if expected else "default-deny")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "upstream: [crm], ", "upstream: [crm, hr], "]),
            st.sampled_from(["", "users: [ann], ", "users: [bob, ann], "]),
            st.sampled_from(["", "groups: [g], ", "groups: [x, y], "]),
            st.sampled_from(["tool: a", "tool: 'a*'", "method: ping"]),
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(["ann", "bob", "cy"]),
    st.lists(st.sampled_from(["g", "x", "z"]), max_size=2),
    st.sampled_from(["crm", "hr", "ops"]),
    st.sampled_from(["a", "ab", "ping"]),
)
def test_identity_prefilter_decides_exactly_like_every_check(specs, user, groups, upstream, name):
    text = "rules:\n" + "".join(
        f"  - name: r{i}\n    match: {{{u}{us}{g}{t}}}\n    action: allow\n"
        for i, (u, us, g, t) in enumerate(specs)
    )
    p = policy(text)
    message = msg("ping") if name == "ping" else call(name)
    caller = Caller(user, tuple(groups))
    expected = linear(p, caller, upstream, message)
    assert p.evaluate(caller, upstream, message).rule == (
        expected.rule if expected else "default-deny"
    )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ann", "bob", "cy"]),
            st.lists(st.sampled_from(["g", "x", "z"]), max_size=2),
            st.sampled_from(["crm", "hr"]),
            st.sampled_from(["a", "ab", "ping"]),
        ),
        min_size=1,
        max_size=30,
    )
)
@example([("bob", [], "crm", "a"), ("ann", [], "crm", "a")])  # another user's rules
@example([("ann", ["z"], "crm", "ab"), ("ann", ["x"], "crm", "ab")])  # other groups
@example([("cy", [], "crm", "ping"), ("cy", [], "hr", "ping")])  # another upstream
def test_the_per_caller_rule_cache_never_answers_for_another_caller(calls):
    """One Policy, many callers in turn (the gateway's case): each decision is still what
    checking every rule gives, whoever asked before."""
    p = policy(
        "rules:\n"
        "  - {name: ann-a, match: {users: [ann], tool: a}, action: allow}\n"
        "  - {name: g-crm, match: {groups: [g], upstream: [crm]}, action: deny}\n"
        "  - {name: x-any, match: {groups: [x], tool: 'a*'}, action: allow}\n"
        "  - {name: hr-ping, match: {upstream: [hr], method: ping}, action: allow}\n"
    )
    for user, groups, upstream, name in calls:
        message = msg("ping") if name == "ping" else call(name)
        caller = Caller(user, tuple(groups))
        expected = linear(p, caller, upstream, message)
        assert p.evaluate(caller, upstream, message).rule == (
            expected.rule if expected else "default-deny"
        )
