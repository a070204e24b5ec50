"""Policy rules: compiled once at config load, evaluated per JSON-RPC message.

First match wins; no match is `default-deny`. Names are compared exactly as the
upstream will see them: globs are case-sensitive and compare Unicode code points
as they are (no case folding, no normalisation), so `Exec_Shell` is not `exec_*`.
That is safe because anything not allowed by a rule is denied.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse as parse_jsonpath

from holdgate.configfile import Node
from holdgate.jsonrpc import NAME_PARAM, Message

Action = Literal["allow", "deny", "approve"]
ACTIONS: tuple[Action, ...] = ("allow", "deny", "approve")
DEFAULT_DENY = "default-deny"

MATCH_KEYS = {"upstream", "users", "groups", "method", "tool", "resource", "prompt", "args"}
RULE_KEYS = {"name", "match", "action", "reason", "approvers", "timeout", "grant", "limit"}
CONDITION_KEYS = {"regex", "equals", "in", "exists"}


class Caller(Protocol):
    """What rules need of an identity."""

    @property
    def user(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def method(self) -> str: ...


def compile_glob(pattern: str) -> re.Pattern[str]:
    """`*` any run of characters, `?` one character, everything else literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class Globs:
    patterns: tuple[str, ...]
    compiled: re.Pattern[str]

    @classmethod
    def of(cls, patterns: Iterable[str]) -> Globs:
        pats = tuple(patterns)
        joined = "|".join(f"(?:{compile_glob(p).pattern})" for p in pats)
        return cls(pats, re.compile(joined, re.DOTALL))

    def match(self, value: str | None) -> bool:
        return value is not None and self.compiled.fullmatch(value) is not None


@dataclass(frozen=True)
class ArgCondition:
    path: str
    expr: JSONPath
    regex: re.Pattern[str] | None = None
    equals: Any = None
    has_equals: bool = False
    one_of: tuple[Any, ...] | None = None
    exists: bool | None = None

    def holds(self, arguments: dict[str, Any]) -> bool:
        values = [m.value for m in self.expr.find(arguments)]
        if self.exists is not None:
            return bool(values) == self.exists
        return any(self._value_matches(v) for v in values)

    def _value_matches(self, value: Any) -> bool:
        if self.regex is not None:
            return isinstance(value, str) and self.regex.search(value) is not None
        if self.has_equals:
            return _same(value, self.equals)
        if self.one_of is not None:
            return any(_same(value, option) for option in self.one_of)
        return False


def _same(a: Any, b: Any) -> bool:
    """Equality that does not treat True as 1 (JSON keeps them apart)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    reason: str
    line: int
    upstreams: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    methods: Globs | None = None
    tools: Globs | None = None
    resources: Globs | None = None
    prompts: Globs | None = None
    args: tuple[ArgCondition, ...] = ()
    approvers: tuple[str, ...] = ()
    timeout: float = 600.0
    grant: float = 0.0
    limit: tuple[int, float] | None = None  # (count, per seconds)


@dataclass(frozen=True)
class Check:
    """One line of an explanation: which condition of a rule held or failed."""

    key: str
    held: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str
    reason: str
    approvers: tuple[str, ...] = ()
    timeout: float = 0.0
    grant: float = 0.0
    limit: tuple[int, float] | None = None
    rate_limited: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "rule": self.rule, "reason": self.reason}
        if self.rate_limited:
            out["rate_limited"] = True
        return out


def literal_tools(rule: Rule) -> tuple[str, ...] | None:
    """The exact tool names a rule is limited to, when its tool globs have no wildcard."""
    if rule.tools is None or any(c in p for p in rule.tools.patterns for c in "*?"):
        return None
    return rule.tools.patterns


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    # Rules limited to literal tool names are indexed by name, so a thousand per-tool rules
    # cost about what ten do; first-match order is kept by merging indices in order.
    _generic: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    _by_tool: dict[str, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        generic: list[int] = []
        specific: dict[str, list[int]] = {}
        for index, rule in enumerate(self.rules):
            names = literal_tools(rule)
            if names is None:
                generic.append(index)
            else:
                for name in names:
                    specific.setdefault(name, []).append(index)
        object.__setattr__(self, "_generic", tuple(self.rules[i] for i in generic))
        object.__setattr__(
            self,
            "_by_tool",
            {
                name: tuple(self.rules[i] for i in sorted(set(generic) | set(indices)))
                for name, indices in specific.items()
            },
        )

    def candidates(self, message: Message) -> tuple[Rule, ...]:
        """The rules that could match, in order (others have a literal tool that differs)."""
        if message.method == "tools/call" and message.target is not None:
            return self._by_tool.get(message.target, self._generic)
        return self._generic

    def evaluate(self, caller: Caller, upstream: str, message: Message) -> Decision:
        for rule in self.candidates(message):
            if _cheap_checks_hold(rule, caller, upstream) and all(
                check.held for check in rule_checks(rule, caller, upstream, message, lazy=True)
            ):
                return decision_for(rule)
        return Decision("deny", DEFAULT_DENY, "no rule allows this")

    def explain(
        self, caller: Caller, upstream: str, message: Message
    ) -> tuple[Decision, list[tuple[Rule, list[Check]]]]:
        """Every rule considered, why each did or did not match, and the decision."""
        trace: list[tuple[Rule, list[Check]]] = []
        for rule in self.rules:
            checks = list(rule_checks(rule, caller, upstream, message, lazy=False))
            trace.append((rule, checks))
            if all(c.held for c in checks):
                return decision_for(rule), trace
        return Decision("deny", DEFAULT_DENY, "no rule allows this"), trace

    def may_use(self, caller: Caller, upstream: str, method: str, target: str) -> bool:
        """Could some call of `target` by this caller be allowed or approved (discovery filter)?

        Argument conditions are unknown at listing time, so a rule with `args` counts as
        possibly granting; a deny rule only hides the target when it has no `args`.
        """
        probe = _probe_message(method, target)
        for rule in self.rules:
            checks = [
                c for c in rule_checks(rule, caller, upstream, probe, lazy=False) if c.key != "args"
            ]
            if all(c.held for c in checks):
                if rule.action != "deny":
                    return True
                if not rule.args:
                    return False
        return False


def _probe_message(method: str, target: str) -> Message:
    key = NAME_PARAM[method]
    raw = {"jsonrpc": "2.0", "id": 0, "method": method, "params": {key: target}}
    return Message(raw, "request", method, 0, target, {})


def decision_for(rule: Rule) -> Decision:
    return Decision(
        rule.action, rule.name, rule.reason, rule.approvers, rule.timeout, rule.grant, rule.limit
    )


def _cheap_checks_hold(rule: Rule, caller: Caller, upstream: str) -> bool:
    """The identity and upstream conditions, without building explanations: most rules of
    a large policy are for other teams and fail here (`rule_checks` stays the reference)."""
    if rule.upstreams and upstream not in rule.upstreams:
        return False
    if rule.groups and not any(g in rule.groups for g in caller.groups):
        return False
    return not (rule.users and caller.user not in rule.users)


def rule_checks(
    rule: Rule, caller: Caller, upstream: str, message: Message, *, lazy: bool
) -> Iterable[Check]:
    """Yield each condition of `rule` in turn; with lazy=True the caller stops at a failure."""
    anonymous = caller.method == "anonymous"
    if rule.upstreams:
        yield Check("upstream", upstream in rule.upstreams, f"upstream {upstream!r}")
    if rule.users:
        held = not anonymous and caller.user in rule.users
        yield Check("users", held, f"user {caller.user!r}")
    if rule.groups:
        held = not anonymous and any(g in rule.groups for g in caller.groups)
        yield Check("groups", held, f"groups {list(caller.groups)!r}")
    if rule.methods is not None:
        yield Check("method", rule.methods.match(message.method), f"method {message.method!r}")
    for key, globs, method in (
        ("tool", rule.tools, "tools/call"),
        ("resource", rule.resources, "resources/read"),
        ("prompt", rule.prompts, "prompts/get"),
    ):
        if globs is not None:
            target = message.target if message.method == method else None
            yield Check(key, globs.match(target), f"{key} {target!r}")
    if rule.args:
        arguments = message.arguments or {}
        for condition in rule.args:
            held = condition.holds(arguments)
            yield Check("args", held, f"args {condition.path}")
            if lazy and not held:
                return


class RateLimiter:
    """Sliding-window counts per (rule, user), for rules with `limit: N/period`."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def allow(self, rule: str, user: str, limit: tuple[int, float]) -> bool:
        count, period = limit
        now = self._clock()
        hits = self._hits.setdefault((rule, user), deque())
        while hits and hits[0] <= now - period:
            hits.popleft()
        if len(hits) >= count:
            return False
        hits.append(now)
        return True


# --- parsing -------------------------------------------------------------------------

_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_PERIODS |= {"h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rules(node: Node) -> Policy:
    if node.missing:
        return Policy(())
    rules: list[Rule] = []
    names: set[str] = set()
    for item in node.elements():
        rule = _parse_rule(item)
        if rule.name in names:
            raise item.child("name").error(
                f"rule name {rule.name!r} is used twice; names must be unique"
            )
        names.add(rule.name)
        rules.append(rule)
    return Policy(tuple(rules))


def _parse_rule(node: Node) -> Rule:
    node.mapping(RULE_KEYS, required={"name", "action"})
    name = node.child("name").string()
    if name == DEFAULT_DENY:
        raise node.child("name").error(f"{DEFAULT_DENY!r} is reserved; choose another name")
    action: Action = node.child("action").choice(ACTIONS)  # type: ignore[assignment]
    match = node.child("match")
    if match.missing:
        raise node.error("missing required key 'match' (use `match: {}` to match everything)")
    match.mapping(MATCH_KEYS)
    approvers = node.child("approvers").strings()
    if action == "approve" and not approvers:
        raise node.child("action").error("an approve rule needs `approvers: [group, ...]`")
    if action != "approve":
        for key in ("approvers", "timeout", "grant"):
            if node.has(key):
                raise node.child(key).error(f"{key!r} only applies to rules with action: approve")
    default_reason = {"allow": "allowed", "deny": "denied by policy", "approve": "needs approval"}
    line = node.doc.marks.get(node.path, (0, 0))[0]
    return Rule(
        name=name,
        action=action,
        reason=node.child("reason").string(default=f"{default_reason[action]} by rule {name!r}"),
        line=line,
        upstreams=match.child("upstream").strings(),
        users=match.child("users").strings(),
        groups=match.child("groups").strings(),
        methods=_globs(match.child("method")),
        tools=_globs(match.child("tool")),
        resources=_globs(match.child("resource")),
        prompts=_globs(match.child("prompt")),
        args=_parse_args(match.child("args")),
        approvers=approvers,
        timeout=node.child("timeout").duration(default=600.0),
        grant=node.child("grant").duration(default=0.0),
        limit=_parse_limit(node.child("limit")),
    )


def _globs(node: Node) -> Globs | None:
    return Globs.of(node.strings()) if not node.missing else None


def _parse_limit(node: Node) -> tuple[int, float] | None:
    if node.missing:
        return None
    match = _LIMIT.match(str(node.value))
    if not match or int(match.group(1)) < 1:
        raise node.error(f"expected a rate like 30/min or 5/s; got {node.value!r}")
    return int(match.group(1)), float(_PERIODS[match.group(2)])


def _parse_args(node: Node) -> tuple[ArgCondition, ...]:
    if node.missing:
        return ()
    conditions = []
    for path, cond in node.items():
        try:
            expr = parse_jsonpath(path)
        except (JsonPathLexerError, JsonPathParserError, ValueError, TypeError) as exc:
            raise cond.error(f"invalid JSONPath {path!r}: {exc}") from None
        cond.mapping(CONDITION_KEYS)
        if len(cond.value) != 1:
            raise cond.error("give exactly one of regex, equals, in, exists")
        conditions.append(_parse_condition(path, expr, cond))
    return tuple(conditions)


def _parse_condition(path: str, expr: JSONPath, cond: Node) -> ArgCondition:
    if cond.has("regex"):
        pattern = cond.child("regex").string()
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise cond.child("regex").error(f"invalid regular expression: {exc}") from None
        return ArgCondition(path, expr, regex=compiled)
    if cond.has("equals"):
        return ArgCondition(path, expr, equals=cond.value["equals"], has_equals=True)
    if cond.has("in"):
        options = cond.value["in"]
        if not isinstance(options, list):
            raise cond.child("in").error("expected a list of values")
        return ArgCondition(path, expr, one_of=tuple(options))
    return ArgCondition(path, expr, exists=cond.child("exists").boolean(default=True))
