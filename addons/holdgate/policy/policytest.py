"""Policy unit tests (`holdgate policy test FILE TESTS.yaml`) and explanations.

A tests file lists named cases, each a literal request and the decision expected:

    tests:
      - name: support_reads_customer_allowed
        identity: {user: alice, groups: [support]}
        upstream: demo
        request: {method: tools/call, tool: get_customer, args: {customer_id: 1}}
        expect: {action: allow, rule: support reads customers}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from holdgate.configfile import Node, load_yaml_file
from holdgate.policy.rules import ArgCondition, Check, Decision, Policy, Rule
from holdgate.protocol.jsonrpc import NAME_PARAM, Message, parse_message

CASE_KEYS = {"name", "identity", "upstream", "request", "expect"}
IDENTITY_KEYS = {"user", "groups", "method"}
REQUEST_KEYS = {"method", "tool", "resource", "prompt", "args"}
EXPECT_KEYS = {"action", "rule"}


@dataclass(frozen=True)
class ProbeCaller:
    user: str
    groups: tuple[str, ...]
    method: str


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    expected: dict[str, str]
    got: Decision
    line: int


def build_message(
    method: str, target: str | None = None, args: dict[str, Any] | None = None
) -> Message:
    """A JSON-RPC request as a client would send it, for explaining and testing rules."""
    params: dict[str, Any] = {}
    key = NAME_PARAM.get(method)
    if key is not None:
        params[key] = target or ""
        if args is not None:
            params["arguments"] = args
    raw = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return parse_message(raw, None)


def caller_for(user: str | None, groups: tuple[str, ...]) -> ProbeCaller:
    if user is None or user == "anonymous":
        return ProbeCaller("anonymous", (), "anonymous")
    return ProbeCaller(user, groups, "test")


def run_tests(policy: Policy, upstreams: Sequence[str], tests_path: str) -> list[CaseResult]:
    """Run the cases in `tests_path` against `policy`; `upstreams` are the config's names
    (the first is a case's default)."""
    doc, _ = load_yaml_file(tests_path)
    root = doc.root.mapping({"tests"}, required={"tests"})
    results = []
    for case in root.child("tests").elements():
        results.append(_run_case(policy, upstreams, case))
    return results


def _run_case(policy: Policy, upstreams: Sequence[str], case: Node) -> CaseResult:
    case.mapping(CASE_KEYS, required={"name", "request", "expect"})
    name = case.child("name").string()
    ident = case.child("identity")
    if not ident.missing:
        ident.mapping(IDENTITY_KEYS)
    caller = caller_for(ident.child("user").optional_string(), ident.child("groups").strings())
    upstream = case.child("upstream").string(default=upstreams[0])
    if upstream not in upstreams:
        raise case.child("upstream").error(f"no upstream named {upstream!r} in the policy")
    req = case.child("request").mapping(REQUEST_KEYS, required={"method"})
    method = req.child("method").string()
    target = next(
        (req.child(k).string() for k in ("tool", "resource", "prompt") if req.has(k)), None
    )
    args = req.child("args").value
    if args is not None and not isinstance(args, dict):
        raise req.child("args").error("expected a mapping of argument names to values")
    expect = case.child("expect").mapping(EXPECT_KEYS, required={"action"})
    expected = {"action": expect.child("action").choice(("allow", "deny", "approve"))}
    if expect.has("rule"):
        expected["rule"] = expect.child("rule").string()
    got = policy.evaluate(caller, upstream, build_message(method, target, args))
    passed = got.action == expected["action"] and expected.get("rule", got.rule) == got.rule
    line = case.doc.marks.get(case.path, (0, 0))[0]
    return CaseResult(name, passed, expected, got, line)


def format_explanation(
    decision: Decision,
    trace: list[tuple[Rule, list[Check]]],
    shown: ShownValues,
) -> str:
    """The trace for a person; an argument condition's line gives each value it was tried
    on, as `shown` gives them (`masked_values`: as the record keeps them, never in clear),
    and what the condition made of it."""
    lines = []
    for rule, checks in trace:
        matched = all(c.held for c in checks)
        mark = "MATCH" if matched else "skip "
        lines.append(f"{mark} rule {rule.name!r} (line {rule.line}, action {rule.action})")
        for check in checks:
            status = "ok  " if check.held else "FAIL"
            judged = _judged(check, shown)
            if len(judged) == 1:
                lines.append(f"        {status} {check.key}: {check.detail}: {judged[0]}")
                continue
            lines.append(f"        {status} {check.key}: {check.detail}")
            lines.extend(f"               {line}" for line in judged)
    if decision.rule == "default-deny":
        lines.append("no rule matched -> default-deny")
    lines.append(f"decision: {decision.action} by {decision.rule!r} ({decision.reason})")
    return "\n".join(lines)


SHOWN_CHARS = 80


def _judged(check: Check, shown: ShownValues) -> list[str]:
    """For an argument condition, one line per value: the value (as `shown` gives it) and
    what the condition made of it; nothing for other checks."""
    condition = check.condition
    if condition is None:
        return []
    if not check.values:
        return [
            f"{'absent' if condition.exists is not None else 'no value there'} "
            f"({condition.written})"
        ]
    texts = [_text(v) for v in shown(condition, check.values)]
    if condition.exists is not None:  # a null: many upstreams read it as absent
        return [
            f"{text} {'cannot be decided (null)' if v is None else 'is present'} "
            f"({condition.written})"
            for text, v in zip(texts, check.values, strict=True)
        ]
    return [f"{text} {condition.judged(v)}" for text, v in zip(texts, check.values, strict=True)]


# The values of an argument condition as a person may see them: the arguments masked as
# the record would keep them, at the same places (`masked_values`).
ShownValues = Callable[[ArgCondition, tuple[Any, ...]], tuple[Any, ...]]


def masked_values(masked_arguments: Any) -> ShownValues:
    """`ShownValues` from the masked copy of the arguments: each value is read at the same
    path there. Masking keeps the shape of the arguments, except that a masked subtree is
    one string; when the path then finds other values, each is shown as `[masked]`."""

    def shown(condition: ArgCondition, values: tuple[Any, ...]) -> tuple[Any, ...]:
        found = tuple(m.value for m in condition.expr.find(masked_arguments))
        return found if len(found) == len(values) else tuple(MASKED for _ in values)

    return shown


MASKED = "[masked]"


def _text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def parse_args_json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("--args must be a JSON object")
    return value
