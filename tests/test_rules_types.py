"""Argument conditions against values of another type than the one they name: what an
upstream may coerce, round or unwrap is undecidable, so deny and approve rules fire on it
and allow rules do not pass it. Named like OPA policy tests; the properties by hypothesis."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonpath_ng.ext.parser import parse as parse_jsonpath

from helpers.strategies import json_values
from holdgate.config.configfile import ConfigError, parse_yaml
from holdgate.policy.rules import ArgCondition, Policy, json_type, parse_rules
from holdgate.protocol.jsonrpc import parse_body

RULES = """
rules:
  - name: customer 1 is off limits
    match: {tool: get_customer, args: {"$.customer_id": {in: [1]}}}
    action: deny
  - name: destructive SQL needs a DBA
    match: {tool: run_sql, args: {"$.query": {search: "(?i)\\\\bdelete\\\\b"}}}
    action: approve
    approvers: [dba]
  - name: only dry runs of report
    match: {tool: report, args: {"$.dry_run": {equals: true}}}
    action: allow
  - name: confirmed wipes only
    match: {tool: wipe, args: {"$.confirm": {exists: false}}}
    action: deny
  - name: regions
    match: {tool: by_region, args: {"$.region": {regex: "eu|us"}}}
    action: allow
  - name: everything else
    match: {tool: ["get_customer", "run_sql", "wipe"]}
    action: allow
"""


@dataclass(frozen=True)
class Caller:
    user: str = "alice"
    groups: tuple[str, ...] = ("support",)
    method: str = "api_key"


def policy(text: str = RULES) -> Policy:
    return parse_rules(parse_yaml(text, "t.yaml").root.child("rules"))


def call(tool: str, arguments: Any) -> Any:
    raw = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    raw["params"] = {"name": tool, "arguments": arguments}
    return parse_body(json.dumps(raw).encode(), max_bytes=1 << 20).messages[0]


@pytest.mark.parametrize(
    ("name", "tool", "arguments", "rule"),
    [
        ("customer_id_1_denied", "get_customer", {"customer_id": 1}, "customer 1 is off limits"),
        ("customer_id_2_allowed", "get_customer", {"customer_id": 2}, "everything else"),
        (
            "customer_id_1_0_denied",
            "get_customer",
            {"customer_id": 1.0},
            "customer 1 is off limits",
        ),
        # pydantic (lax) and JavaScript read these as 1
        ("string_1_denied", "get_customer", {"customer_id": "1"}, "customer 1 is off limits"),
        ("spaced_string_denied", "get_customer", {"customer_id": " 1"}, "customer 1 is off limits"),
        ("string_1_0_denied", "get_customer", {"customer_id": "1.0"}, "customer 1 is off limits"),
        ("string_1e0_denied", "get_customer", {"customer_id": "1e0"}, "customer 1 is off limits"),
        ("true_denied", "get_customer", {"customer_id": True}, "customer 1 is off limits"),
        ("list_denied", "get_customer", {"customer_id": [1]}, "customer 1 is off limits"),
        ("object_denied", "get_customer", {"customer_id": {"id": 1}}, "customer 1 is off limits"),
        ("null_denied", "get_customer", {"customer_id": None}, "customer 1 is off limits"),
        ("next_double_allowed", "get_customer", {"customer_id": 1 + 2**-52}, "everything else"),
        (
            "delete_needs_approval",
            "run_sql",
            {"query": "DELETE FROM t"},
            "destructive SQL needs a DBA",
        ),
        ("select_runs", "run_sql", {"query": "SELECT 1"}, "everything else"),
        ("delete_in_list", "run_sql", {"query": ["DELETE FROM t"]}, "destructive SQL needs a DBA"),
        (
            "delete_nested",
            "run_sql",
            {"query": {"sql": "DELETE FROM t"}},
            "destructive SQL needs a DBA",
        ),
        (
            "delete_deeper",
            "run_sql",
            {"query": [{"a": [["x", "delete"]]}]},
            "destructive SQL needs a DBA",
        ),
        (
            "delete_as_key",
            "run_sql",
            {"query": {"delete from t": 1}},
            "destructive SQL needs a DBA",
        ),
        (
            "select_in_list_runs",
            "run_sql",
            {"query": ["SELECT 1", {"q": "SELECT 2"}]},
            "everything else",
        ),
        (
            "number_in_list_held",
            "run_sql",
            {"query": ["SELECT 1", 5]},
            "destructive SQL needs a DBA",
        ),
        ("number_query_held", "run_sql", {"query": 5}, "destructive SQL needs a DBA"),
        ("boolean_query_held", "run_sql", {"query": False}, "destructive SQL needs a DBA"),
        ("dry_run_true_allowed", "report", {"dry_run": True}, "only dry runs of report"),
        ("dry_run_string_not_allowed", "report", {"dry_run": "true"}, "default-deny"),
        ("dry_run_one_not_allowed", "report", {"dry_run": 1}, "default-deny"),
        ("dry_run_list_not_allowed", "report", {"dry_run": [True]}, "default-deny"),
        ("wipe_unconfirmed_denied", "wipe", {}, "confirmed wipes only"),
        ("wipe_confirmed_allowed", "wipe", {"confirm": "yes"}, "everything else"),
        ("wipe_null_confirm_denied", "wipe", {"confirm": None}, "confirmed wipes only"),
        ("region_allowed", "by_region", {"region": "eu"}, "regions"),
        ("region_list_not_allowed", "by_region", {"region": ["eu"]}, "default-deny"),
        ("region_number_not_allowed", "by_region", {"region": 1}, "default-deny"),
    ],
)
def test_values_of_another_type(name: str, tool: str, arguments: Any, rule: str) -> None:
    assert policy().evaluate(Caller(), "crm", call(tool, arguments)).rule == rule, name


def test_an_integer_a_javascript_upstream_rounds_to_the_named_one_is_denied() -> None:
    named = 2**53
    rules = RULES.replace("in: [1]", f"in: [{named}]")
    for sent, rule in ((named + 1, "customer 1 is off limits"), (named + 2, "everything else")):
        got = policy(rules).evaluate(Caller(), "crm", call("get_customer", {"customer_id": sent}))
        assert got.rule == rule, sent


def condition(kind: str, named: Any, *, allow: bool) -> ArgCondition:
    expr = parse_jsonpath("$.v")
    if kind == "equals":
        return ArgCondition("$.v", expr, allow, equals=named, has_equals=True)
    return ArgCondition("$.v", expr, allow, one_of=(named,))


def fires(kind: str, named: Any, value: Any, *, allow: bool) -> bool:
    return condition(kind, named, allow=allow).holds({"v": value})


@given(named=json_values, value=json_values, kind=st.sampled_from(["equals", "in"]))
def test_another_type_never_weakens_a_deny_nor_strengthens_an_allow(
    named: Any, value: Any, kind: str
) -> None:
    assert fires(kind, named, named, allow=False) and fires(kind, named, named, allow=True)
    if json_type(value) != json_type(named):
        assert fires(kind, named, value, allow=False)
        assert not fires(kind, named, value, allow=True)


@given(
    named=json_values,
    value=json_values,
    kind=st.sampled_from(["equals", "in", "regex", "search", "path_under", "exists"]),
)
def test_a_deny_fires_wherever_the_same_condition_would_allow(
    named: Any, value: Any, kind: str
) -> None:
    expr = parse_jsonpath("$.v")
    text = named if isinstance(named, str) else "x"
    made = {
        "regex": {"regex": re.compile(re.escape(text))},
        "search": {"search": re.compile(re.escape(text))},
        "path_under": {"path_under": "/srv"},
        "exists": {"exists": bool(named)},
    }
    if kind in made:
        deny = ArgCondition("$.v", expr, False, **made[kind])
        allow = ArgCondition("$.v", expr, True, **made[kind])
    else:
        deny, allow = condition(kind, named, allow=False), condition(kind, named, allow=True)
    if allow.holds({"v": value}):
        assert deny.holds({"v": value})


@given(st.integers(min_value=2**53, max_value=2**70), st.integers(min_value=-3, max_value=3))
def test_numbers_equal_as_doubles_fire_a_deny(named: int, delta: int) -> None:
    value = named + delta
    same_double = float(value) == float(named)
    assert fires("in", named, value, allow=False) == same_double
    assert fires("in", named, value, allow=True) == (value == named)


@given(value=json_values, word=st.sampled_from(["DELETE FROM t", "drop table x"]))
def test_a_search_sees_every_string_inside_a_container(value: Any, word: str) -> None:
    expr = parse_jsonpath("$.v")
    pattern = re.compile("(?i)delete|drop")
    deny = ArgCondition("$.v", expr, False, search=pattern)
    for wrapped in ([value, word], {"k": [value, {"sql": word}]}, [[[word]]]):
        assert deny.holds({"v": wrapped})


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("{equals: 2024-01-01}", "t.yaml:4:"),
        ("{in: [1, 2024-01-01]}", "quote it"),
        ("{equals: .nan}", "not a JSON number"),
        ("{in: [.inf]}", "not a JSON number"),
        ("{equals: {a: [2024-01-01]}}", "not a JSON value"),
    ],
)
def test_a_value_that_is_not_json_is_a_config_error(option: str, fragment: str) -> None:
    text = f"""rules:
  - name: r
    action: deny
    match: {{tool: t, args: {{"$.v": {option}}}}}
"""
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        policy(text)


def test_an_in_list_of_mixed_types_is_warned_about_and_stays_closed() -> None:
    text = """rules:
  - name: not customer one
    action: deny
    match: {tool: get_customer, args: {"$.customer_id": {in: [1, "1"]}}}
  - name: customer one
    action: allow
    match: {tool: get_customer, args: {"$.customer_id": {in: [1, "1"]}}}
"""
    got = policy(text)
    first, second = got.warnings
    assert first.startswith("t.yaml:4:") and "several JSON types (number, string)" in first
    assert second.startswith("t.yaml:7:")
    deny = got.rules[0].args[0]
    assert deny.holds({"customer_id": "1.0"}) and deny.holds({"customer_id": 1})
    allow = got.rules[1].args[0]
    assert allow.holds({"customer_id": "1"}) and not allow.holds({"customer_id": "01"})
