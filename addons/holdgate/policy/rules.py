"""Policy rules: compiled once at config load, evaluated per JSON-RPC message.

First match wins; no match is `default-deny`. Tool, prompt and method names are compared
exactly as the upstream will see them: globs are case-sensitive and compare Unicode code points
as they are (no case folding, no normalisation), so `Exec_Shell` is not `exec_*`.
That is safe because anything not allowed by a rule is denied.

Arguments and URIs are matched so that a value cannot slip past a condition:
- `regex:` must match the whole value (`re.fullmatch`); `search:` finds the pattern anywhere.
- Resource URIs are put in RFC 3986 normal form before `resource` globs see them; a URI
  upstreams could resolve differently (encoded `/` or dot segments, backslashes, control
  characters) is denied before any rule (`ambiguous-uri`). In URI globs `*` and `?` stop
  at `/` and `**` crosses it.
- A condition on several values (`$.paths[*]`) holds in an allow rule only if every value
  passes, in a deny or approve rule if any value does.
- A value that cannot be decided never passes an allow rule and always fires a deny or
  approve rule: `path_under` on a relative path or one with `..`; a value of another JSON
  type than the one `equals`/`in` names (`"1"` against `1`: lax upstreams coerce it); a
  number equal to the named one once rounded to a double (JavaScript upstreams round
  beyond 2**53); for `regex`/`search` anything but a string, except that a list or object
  is searched through (every string in it) and is decided not to match when none of its
  strings does and it holds nothing else; `exists` on a null.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext.parser import parse as parse_jsonpath

from holdgate.configfile import Node, Problems, collected
from holdgate.protocol.jsonrpc import NAME_PARAM, Message
from holdgate.protocol.uris import AmbiguousValue, canonical_uri, normalise_path, normalise_uri

Action = Literal["allow", "deny", "approve"]
ACTIONS: tuple[Action, ...] = ("allow", "deny", "approve")
DEFAULT_DENY = "default-deny"
AMBIGUOUS_URI = "ambiguous-uri"

MATCH_KEYS = {"upstream", "users", "groups", "method", "tool", "resource", "prompt", "args"}
RULE_KEYS = {
    "name",
    "match",
    "action",
    "reason",
    "approvers",
    "timeout",
    "grant",
    "limit",
    "approval_via",
    "valid_for",
}
# How an approve rule's call waits: held open, or (for MCP 2026-07-28 clients that declare
# URL-mode elicitation) answered `input_required` and retried once decided.
APPROVAL_VIA = ("hold", "elicitation")
CONDITION_KEYS = {"regex", "search", "equals", "in", "exists", "path_under"}


class Caller(Protocol):
    """What rules need of an identity."""

    @property
    def user(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def method(self) -> str: ...


_GLOB_TOKEN = re.compile(r"\*\*|\*|\?|[^*?]+")
_NAME_WILDCARDS = {"**": ".*", "*": ".*", "?": "."}
_URI_WILDCARDS = {"**": ".*", "*": "[^/]*", "?": "[^/]"}


def compile_glob(pattern: str, *, segments: bool = False) -> re.Pattern[str]:
    """`*` any run of characters, `?` one character, everything else literal.

    With `segments` (URI globs) `*` and `?` stop at `/`, and `**` is any run including `/`.
    """
    wild = _URI_WILDCARDS if segments else _NAME_WILDCARDS
    parts = (wild.get(t, re.escape(t)) for t in _GLOB_TOKEN.findall(pattern))
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class Globs:
    patterns: tuple[str, ...]
    compiled: re.Pattern[str]

    @classmethod
    def of(cls, patterns: Iterable[str], *, segments: bool = False) -> Globs:
        pats = tuple(patterns)
        joined = "|".join(f"(?:{compile_glob(p, segments=segments).pattern})" for p in pats)
        return cls(pats, re.compile(joined, re.DOTALL))

    def match(self, value: str | None) -> bool:
        return value is not None and self.compiled.fullmatch(value) is not None


@dataclass(frozen=True)
class ArgCondition:
    path: str
    expr: JSONPath
    grants: bool = False  # in an allow rule: every value must pass, an undecided one never does
    regex: re.Pattern[str] | None = None
    search: re.Pattern[str] | None = None
    path_under: str | None = None
    equals: Any = None
    has_equals: bool = False
    one_of: tuple[Any, ...] | None = None
    exists: bool | None = None

    def holds(self, arguments: dict[str, Any]) -> bool:
        """Whether the condition holds for this rule's action: in an allow rule only when
        every value passes for certain, in a deny or approve rule when any value passes or
        cannot be decided."""
        values = [m.value for m in self.expr.find(arguments)]
        if self.exists is not None:
            return self._settles(existence_verdict(values, self.exists))
        if not values:
            return False
        verdicts = (self.verdict(v) for v in values)
        if self.grants:
            return all(v is True for v in verdicts)
        return any(v is not False for v in verdicts)

    def _settles(self, verdict: bool | None) -> bool:
        return verdict is True if self.grants else verdict is not False

    @property
    def written(self) -> str:
        """The condition as written in the config: `regex '^SELECT'`."""
        if self.regex is not None:
            return f"regex {self.regex.pattern!r}"
        if self.search is not None:
            return f"search {self.search.pattern!r}"
        if self.path_under is not None:
            return f"path_under {self.path_under!r}"
        if self.has_equals:
            return f"equals {json.dumps(self.equals, ensure_ascii=False)}"
        if self.one_of is not None:
            return f"in {json.dumps(list(self.one_of), ensure_ascii=False)}"
        return f"exists {'true' if self.exists else 'false'}"

    def judged(self, value: Any) -> str:
        """What the condition makes of one value, for a person: `does not match regex '…'`."""
        verdict = self.verdict(value)
        if verdict is None:
            return f"cannot be decided against {self.written} (a value of another type)"
        if self.regex is not None:
            verb = "matches" if verdict else "does not match"
        elif self.search is not None:
            verb = "has a match of" if verdict else "has no match of"
        elif self.path_under is not None:
            return f"{'is' if verdict else 'is not'} under {self.path_under!r}"
        elif self.has_equals:
            verb = "equals" if verdict else "does not equal"
            return f"{verb} {json.dumps(self.equals, ensure_ascii=False)}"
        else:
            return f"{'is' if verdict else 'is not'} {self.written}"
        return f"{verb} {self.written}"

    def verdict(self, value: Any) -> bool | None:
        """Whether one value passes; None when it cannot be decided (see the module doc)."""
        if self.regex is not None:
            return text_verdict(value, self.regex.fullmatch)
        if self.search is not None:
            return text_verdict(value, self.search.search)
        if self.path_under is not None:
            return path_verdict(value, self.path_under)
        if self.has_equals:
            return same_value(value, self.equals)
        if self.one_of is not None:
            return any_verdict(same_value(value, option) for option in self.one_of)
        return False


# --- values of another type ----------------------------------------------------------
# An upstream reads a value its own way: pydantic in lax mode turns "1" into 1, a
# JavaScript server rounds 2**53 + 1 to 2**53, a lenient one runs the first string of a
# list. So a value a condition cannot compare as the upstream reads it is undecidable
# (None): it fires a deny or approve rule and never passes an allow rule.

JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"),  # before int: True is an int in Python, not in JSON
    ((int, float), "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
    (type(None), "null"),
)


def json_type(value: Any) -> str | None:
    """The JSON type of a decoded value; None for what JSON has not (a YAML date)."""
    for python_type, name in JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return None


def any_verdict(verdicts: Iterable[bool | None]) -> bool | None:
    """True if one holds, else None if one is undecidable, else False."""
    undecided = False
    for verdict in verdicts:
        if verdict is True:
            return True
        undecided = undecided or verdict is None
    return None if undecided else False


def same_value(value: Any, named: Any) -> bool | None:
    """Whether `value` is the JSON value `named`: None when another JSON type (an upstream
    may coerce it), or a number equal to it once both are rounded to doubles."""
    kind = json_type(named)
    if json_type(value) != kind:
        return None
    if kind == "number":
        if value == named:
            return True
        return None if as_double(value) == as_double(named) else False
    if kind == "array":
        if len(value) != len(named):
            return False
        return every_verdict(same_value(a, b) for a, b in zip(value, named, strict=True))
    if kind == "object":
        if value.keys() != named.keys():
            return False
        return every_verdict(same_value(value[k], named[k]) for k in named)
    return bool(value == named)


def every_verdict(verdicts: Iterable[bool | None]) -> bool | None:
    """False if one fails, else None if one is undecidable, else True (`any_verdict` of
    the negations, negated)."""
    return _negated(any_verdict(_negated(verdict) for verdict in verdicts))


def _negated(verdict: bool | None) -> bool | None:
    return None if verdict is None else not verdict


def as_double(number: float) -> float:
    """The IEEE double a JavaScript (or any float-only) upstream reads the number as."""
    try:
        return float(number)
    except OverflowError:
        return math.copysign(math.inf, number)


def text_verdict(value: Any, matches: Callable[[str], object]) -> bool | None:
    """A text condition (`regex`, `search`) on one value. A string is decided; a list or
    object is searched through — every string in it, keys included — and is undecidable
    when one matches or when it holds anything but strings (never True: an allow rule
    does not pass a container where it names text); any other type is undecidable."""
    if isinstance(value, str):
        return matches(value) is not None
    if not isinstance(value, (list, dict)):
        return None
    for text in strings_within(value):
        if text is None or matches(text) is not None:
            return None
    return False


def strings_within(value: list[Any] | dict[str, Any]) -> Iterable[str | None]:
    """Every string inside a container, keys included, and None for each other scalar.
    Iterative, so nesting depth costs no stack."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            yield from item.keys()
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        else:
            yield item if isinstance(item, str) else None


def existence_verdict(values: list[Any], exists: bool) -> bool | None:
    """`exists:` on the values found; a null is undecidable (many upstreams read a null
    argument as one not given)."""
    if any(v is None for v in values):
        return None
    return bool(values) == exists


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
    approval_via: str = "hold"
    valid_for: float | None = None  # how long an approval may be spent; None: `timeout`
    lineage: str = ""  # `rule_lineage` of the rule as written


@dataclass(frozen=True)
class Check:
    """One line of an explanation: which condition of a rule held or failed. For an
    argument condition, the condition and the values it was tried on (explanations only:
    shown masked, never recorded)."""

    key: str
    held: bool
    detail: str
    condition: ArgCondition | None = None
    values: tuple[Any, ...] = ()


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
    approval_via: str = "hold"
    valid_for: float | None = None
    lineage: str = ""  # of the rule that decided (`rule_lineage`): approvals are bound to it

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


CALLER_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    # What `holdgate policy check` warns about: "file:line:col: key: warning: …" each.
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Rules limited to literal tool names are indexed by name, so a thousand per-tool rules
    # cost about what ten do; first-match order is kept by merging indices in order.
    _generic: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    _by_tool: dict[str, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)
    # The candidates whose identity and upstream conditions hold, per (user, groups,
    # upstream, candidate list): most rules are for other teams, and a caller sends many
    # calls. Bounded (oldest out); rules never change within one Policy (a reload builds
    # another).
    _for_caller: OrderedDict[tuple[str, tuple[str, ...], str, int], tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_for_caller", OrderedDict())
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
        refused = _ambiguous_uri(message)
        if refused is not None:
            return refused
        for rule in self._caller_candidates(caller, upstream, self.candidates(message)):
            if all(check.held for check in rule_checks(rule, caller, upstream, message, lazy=True)):
                return decision_for(rule)
        return Decision("deny", DEFAULT_DENY, "no rule allows this")

    def _caller_candidates(
        self, caller: Caller, upstream: str, candidates: tuple[Rule, ...]
    ) -> tuple[Rule, ...]:
        key = (caller.user, tuple(caller.groups), upstream, id(candidates))
        cache = self._for_caller
        found = cache.get(key)
        if found is None:
            found = tuple(r for r in candidates if _cheap_checks_hold(r, caller, upstream))
            cache[key] = found
            if len(cache) > CALLER_CACHE_SIZE:
                cache.popitem(last=False)
        return found

    def explain(
        self, caller: Caller, upstream: str, message: Message
    ) -> tuple[Decision, list[tuple[Rule, list[Check]]]]:
        """Every rule considered, why each did or did not match, and the decision."""
        trace: list[tuple[Rule, list[Check]]] = []
        refused = _ambiguous_uri(message)
        if refused is not None:
            return refused, trace
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
        if _ambiguous_uri(probe) is not None:
            return False
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


def _ambiguous_uri(message: Message) -> Decision | None:
    """A `resources/read` of a URI upstreams could resolve differently is denied whatever
    the rules say: a deny glob it slipped past could not be trusted either."""
    if message.method != "resources/read" or message.target is None:
        return None
    normal, why = canonical_uri(message.target)
    if normal is not None:
        return None
    return Decision(
        "deny", AMBIGUOUS_URI, f"the resource URI is ambiguous ({why}); send it in normal form"
    )


def decision_for(rule: Rule) -> Decision:
    return Decision(
        rule.action,
        rule.name,
        rule.reason,
        rule.approvers,
        rule.timeout,
        rule.grant,
        rule.limit,
        approval_via=rule.approval_via,
        valid_for=rule.valid_for,
        lineage=rule.lineage,
    )


def rule_lineage(written: Any) -> str:
    """A rule's identity across reloads: SHA-256 of its mapping as written in the config
    (keys sorted), so a reload that edits any of its keys changes it, and one that only
    moves it (its line) does not. Approvals are bound to it."""
    text = json.dumps(
        written, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
            detail = f"{key} {target!r}"
            if key == "resource" and target is not None:
                normal = canonical_uri(target)[0]
                if normal != target:
                    detail += f" (normalised {normal!r})"
                target = normal
            yield Check(key, globs.match(target), detail)
    if rule.args:
        arguments = message.arguments or {}
        for condition in rule.args:
            held = condition.holds(arguments)
            found = () if lazy else tuple(m.value for m in condition.expr.find(arguments))
            yield Check("args", held, f"args {condition.path}", condition, found)
            if lazy and not held:
                return


# --- paths ---------------------------------------------------------------------------


def path_verdict(value: Any, base: str) -> bool | None:
    """Whether `value` is the normalised path `base` or below it; None when unknowable."""
    if not isinstance(value, str):
        return None
    try:
        path = normalise_path(value)
    except AmbiguousValue:
        return None
    return path == base or path.startswith(base if base.endswith("/") else base + "/")


# --- parsing -------------------------------------------------------------------------

_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_PERIODS |= {"h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rules(node: Node, problems: Problems | None = None) -> Policy:
    """The `rules:` list. Each rule is checked on its own: a rule with a mistake is
    recorded in `problems` and left out (without one, all mistakes are raised at the end)."""
    return collected(lambda found: _parse_rule_list(node, found), problems)


def _parse_rule_list(node: Node, problems: Problems) -> Policy:
    if node.missing:
        return Policy(())
    rules: list[Rule] = []
    names: set[str] = set()
    warnings: list[str] = []
    for item in problems.elements(node):
        rule = problems.attempt(_parse_rule, item, warnings)
        if rule is None:
            continue
        if rule.name in names:
            problems.add(
                item.child("name").error(
                    f"rule name {rule.name!r} is used twice; names must be unique"
                )
            )
            continue
        names.add(rule.name)
        rules.append(rule)
    warning = _discovery_warning(rules)
    if warning is not None:
        warnings.append(node.warning(warning))
    return Policy(tuple(rules), tuple(warnings))


def _discovery_warning(rules: list[Rule]) -> str | None:
    """MCP 2026-07-28 clients start with `server/discover` (no `initialize`): a policy that
    lets clients initialize but not discover makes them fall back to the old handshake, or
    fail. Judged on the method alone: what an allow rule could let through."""

    def allowed(method: str) -> bool:
        return any(
            r.action == "allow" and (r.methods is None or r.methods.match(method)) for r in rules
        )

    if allowed("initialize") and not allowed("server/discover"):
        return (
            "`initialize` is allowed but `server/discover` is not: MCP 2026-07-28 clients "
            "discover first and would fall back or fail; allow server/discover where "
            "initialize is allowed"
        )
    return None


def _parse_rule(node: Node, warnings: list[str]) -> Rule:
    """One rule, every mistake in it reported: an unknown key or a bad value of one key
    never hides a mistake in another (each key is checked on its own)."""
    if not isinstance(node.value, dict):
        node.mapping(RULE_KEYS)  # raises: not a mapping
    found = Problems()
    found.attempt(node.mapping, RULE_KEYS, {"name", "action"})
    name = found.attempt(node.child("name").string) if node.has("name") else None
    if name in (DEFAULT_DENY, AMBIGUOUS_URI):
        found.add(node.child("name").error(f"{name!r} is reserved; choose another name"))
    action: Action | None = (
        cast(Action | None, found.attempt(node.child("action").choice, ACTIONS))
        if node.has("action")
        else None
    )
    match = node.child("match")
    if match.missing:
        found.add(node.error("missing required key 'match' (use `match: {}` to match everything)"))
    else:
        found.attempt(match.mapping, MATCH_KEYS)
    approvers = found.attempt(node.child("approvers").strings)
    if action == "approve" and approvers == ():
        found.add(node.child("action").error("an approve rule needs `approvers: [group, ...]`"))
    if action in ("allow", "deny"):
        for key in ("approvers", "timeout", "grant", "approval_via", "valid_for"):
            if node.has(key):
                found.add(
                    node.child(key).error(f"{key!r} only applies to rules with action: approve")
                )
    parsed: dict[str, Any] = {  # each None if it had a mistake (raised below)
        "upstreams": found.attempt(match.child("upstream").strings),
        "users": found.attempt(match.child("users").strings),
        "groups": found.attempt(match.child("groups").strings),
        "methods": found.attempt(_globs, match.child("method")),
        "tools": found.attempt(_globs, match.child("tool")),
        "resources": found.attempt(_uri_globs, match.child("resource")),
        "prompts": found.attempt(_globs, match.child("prompt")),
        "timeout": found.attempt(node.child("timeout").duration, 600.0),
        "grant": found.attempt(node.child("grant").duration, 0.0),
        "limit": found.attempt(_parse_limit, node.child("limit")),
        "approval_via": found.attempt(node.child("approval_via").choice, APPROVAL_VIA, "hold"),
        "valid_for": found.attempt(_valid_for, node.child("valid_for")),
    }
    reason = found.attempt(node.child("reason").optional_string)
    args = _parse_args(match.child("args"), action or "deny", warnings, found)
    found.raise_if_any()
    if name is None or action is None or approvers is None:  # cannot happen: recorded above
        raise node.error("the rule could not be read")
    default_reason = {"allow": "allowed", "deny": "denied by policy", "approve": "needs approval"}
    return Rule(
        name=name,
        action=action,
        reason=reason or f"{default_reason[action]} by rule {name!r}",
        line=node.doc.marks.get(node.path, (0, 0))[0],
        args=args,
        approvers=approvers,
        lineage=rule_lineage(node.value),
        **parsed,
    )


def _valid_for(node: Node) -> float | None:
    """`valid_for:` how long after its decision an approval may be spent (default: the
    rule's `timeout`)."""
    if node.missing:
        return None
    seconds = node.duration()
    if seconds <= 0:
        raise node.error(
            f"expected a duration above zero like 30s or 10m; got {node.value!r} "
            "(an approval must be spendable for some time after it is given)"
        )
    return seconds


def _globs(node: Node) -> Globs | None:
    return Globs.of(node.strings()) if not node.missing else None


_WILDCARD_STAND_INS = {"**": "\ue001", "*": "\ue000", "?": "\ue002"}


def _uri_globs(node: Node) -> Globs | None:
    """URI globs, each in the normal form URIs are matched in (else it could never match)."""
    if node.missing:
        return None
    patterns = node.strings()
    for i, pattern in enumerate(patterns):
        where = node if isinstance(node.value, str) else node.child(i)
        literal = "".join(_WILDCARD_STAND_INS.get(t, t) for t in _GLOB_TOKEN.findall(pattern))
        try:
            normal = normalise_uri(literal)
        except AmbiguousValue as exc:
            raise where.error(
                f"resource glob {pattern!r} can never match: it has {exc} "
                "(resource URIs are normalised before matching)"
            ) from None
        for wildcard, stand_in in _WILDCARD_STAND_INS.items():
            normal = normal.replace(stand_in, wildcard)
        if normal != pattern:
            raise where.error(
                f"resource glob {pattern!r} can never match a normalised URI; write {normal!r}"
            )
    return Globs.of(patterns, segments=True)


def _parse_limit(node: Node) -> tuple[int, float] | None:
    if node.missing:
        return None
    match = _LIMIT.match(str(node.value))
    if not match or int(match.group(1)) < 1:
        raise node.error(f"expected a rate like 30/min or 5/s; got {node.value!r}")
    return int(match.group(1)), float(_PERIODS[match.group(2)])


def _parse_args(
    node: Node, action: Action, warnings: list[str], found: Problems
) -> tuple[ArgCondition, ...]:
    """The `args:` conditions, each checked on its own (its mistakes recorded in `found`)."""
    if node.missing:
        return ()
    conditions = []
    for path, cond in found.attempt(lambda: list(node.items())) or ():
        condition = found.attempt(_parse_arg_condition, path, cond, action, warnings)
        if condition is not None:
            conditions.append(condition)
    return tuple(conditions)


def _parse_arg_condition(
    path: str, cond: Node, action: Action, warnings: list[str]
) -> ArgCondition:
    try:
        expr = parse_jsonpath(path)
    except (JsonPathLexerError, JsonPathParserError, ValueError, TypeError) as exc:
        raise cond.error(f"invalid JSONPath {path!r}: {exc}") from None
    cond.mapping(CONDITION_KEYS)
    if len(cond.value) != 1:
        raise cond.error(f"give exactly one of {', '.join(sorted(CONDITION_KEYS))}")
    return _parse_condition(path, expr, cond, action, warnings)


def _parse_condition(
    path: str, expr: JSONPath, cond: Node, action: Action, warnings: list[str]
) -> ArgCondition:
    grants = action == "allow"
    for kind in ("regex", "search"):
        if cond.has(kind):
            pattern = cond.child(kind).string()
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise cond.child(kind).error(f"invalid regular expression: {exc}") from None
            warning = _pattern_warning(kind, pattern, action)
            if warning is not None:
                warnings.append(cond.child(kind).warning(warning))
            if kind == "regex":
                return ArgCondition(path, expr, grants, regex=compiled)
            return ArgCondition(path, expr, grants, search=compiled)
    if cond.has("path_under"):
        return ArgCondition(path, expr, grants, path_under=_path_base(cond.child("path_under")))
    if cond.has("equals"):
        named = _json_value(cond.child("equals"))
        return ArgCondition(path, expr, grants, equals=named, has_equals=True)
    if cond.has("in"):
        options = cond.value["in"]
        if not isinstance(options, list):
            raise cond.child("in").error("expected a list of values")
        for i in range(len(options)):
            _json_value(cond.child("in").child(i))
        kinds = sorted({str(json_type(option)) for option in options})
        if len(kinds) > 1:
            warnings.append(
                cond.child("in").warning(
                    f"the values are of several JSON types ({', '.join(kinds)}); a value of "
                    "another type than an option cannot be decided, so a deny or approve rule "
                    "fires on it and an allow rule passes only the values listed exactly"
                )
            )
        return ArgCondition(path, expr, grants, one_of=tuple(options))
    return ArgCondition(path, expr, grants, exists=cond.child("exists").boolean(default=True))


def _json_value(node: Node) -> Any:
    """A value to compare arguments with: JSON only, as arguments are JSON."""
    pending = [node.value]
    while pending:
        value = pending.pop()
        kind = json_type(value)
        if kind is None:
            raise node.error(
                f"{value!r} is not a JSON value (YAML read it as {type(value).__name__}); "
                "quote it to compare with a string"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise node.error(f"{value!r} is not a JSON number; no argument can equal it")
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return node.value


def _path_base(node: Node) -> str:
    base = node.string()
    try:
        normal = normalise_path(base)
    except AmbiguousValue as exc:
        raise node.error(f"expected an absolute path without '..'; {base!r} has {exc}") from None
    if normal != base:
        raise node.error(f"write the folder in normal form: {normal!r}")
    return normal


_INLINE_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")
_ANY_RUN = r"(?:\.|\[\\s\\S\]|\[\\S\\s\])[*+]\??"
_LEADING_ANY = re.compile(rf"\^?{_ANY_RUN}")
_TRAILING_ANY = re.compile(rf"(?<!\\){_ANY_RUN}(?:\$|\\Z)?$")


def _pattern_warning(kind: str, pattern: str, action: Action) -> str | None:
    """Why a pattern likely does not mean what its rule needs (a warning, not an error)."""
    flags, body = "", pattern
    while match := _INLINE_FLAGS.match(body):
        flags, body = flags + match.group(1), body[match.end() :]
    if action == "allow":
        if kind == "search":
            return (
                "search: finds the pattern anywhere, so this allow rule passes any value that "
                "contains a match; use regex: (the whole value must match)"
            )
        if _LEADING_ANY.match(body) or _TRAILING_ANY.search(body):
            return (
                "the regex starts or ends with a run of any characters, so this allow rule "
                "passes whatever comes before or after the part it checks; say what may come there"
            )
        return None
    if kind == "regex":
        partial = body.startswith("^") and not body.endswith(("$", "\\Z"))
        if partial or body.startswith("\\b") or body.endswith("\\b"):
            return (
                "regex: must match the whole value; to find the pattern anywhere in it (what a "
                "deny or approve rule usually wants) use search:"
            )
        if "s" not in flags and (_LEADING_ANY.match(body) or _TRAILING_ANY.search(body)):
            return (
                "'.' does not match a line break without (?s), so a value with one slips past "
                "this rule; add (?s) or use search:"
            )
    return None
