"""Least-privilege suggestions: per identity, the rules in force cut down to what it used,
never deciding any call more loosely than the rules in force do.

A copy of each rule that granted a use, for that user only and (per upstream and kind)
only the names used, keeping everything else the rule says: its action (an `approve`
stays an approve, with its approvers, timeout, grant and `valid_for`), its argument
conditions, its `limit`. A rule with a `limit` is copied once, not per upstream or kind:
the limit is counted per rule name and user, so two copies would each count afresh.

First match wins, so a call the copies leave out must not fall through to a later copy
that is looser than the rule deciding it today. So every deny rule before the last copy is
kept as written, and every rule before it that is not a plain allow (an approve, or an
allow with a limit) is followed by a deny of the rest of what it matches. After the last
copy nothing is needed: no match is `default-deny`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from holdgate.policy.policytest import build_message, caller_for
from holdgate.policy.rules import ArgCondition, Globs, Policy, Rule, rule_checks
from holdgate.protocol.uris import canonical_uri

Target = tuple[str, str, str]  # (upstream, kind, name)
KIND_METHOD = {"tool": "tools/call", "resource": "resources/read", "prompt": "prompts/get"}
_DEFAULT_REASON = {"allow": "allowed", "deny": "denied by policy", "approve": "needs approval"}
_WILDCARD = re.compile(r"[*?]")


@dataclass(frozen=True)
class Use:
    """A target an identity used, and the rule the gateway recorded as letting it through."""

    target: Target
    rule: str


def granting_rule(
    policy: Policy, caller_groups: tuple[str, ...], user: str, use: Use
) -> Rule | None:
    """The rule in force that grants `use`: the recorded rule when it is still there and
    could match the target, else the first allow or approve rule that could (arguments
    are unknown here); None when no rule grants it any more."""
    upstream, kind, name = use.target
    caller = caller_for(user, caller_groups)
    probe = build_message(KIND_METHOD[kind], name, {})

    def could_grant(rule: Rule) -> bool:
        checks = rule_checks(rule, caller, upstream, probe, lazy=False)
        return rule.action != "deny" and all(c.held for c in checks if c.key != "args")

    recorded = next((r for r in policy.rules if r.name == use.rule), None)
    if recorded is not None and could_grant(recorded):
        return recorded
    return next((r for r in policy.rules if could_grant(r)), None)


def suggest(
    user: str, groups: Iterable[str], uses: Iterable[Use], policy: Policy
) -> list[dict[str, Any]]:
    """The suggested rules for `user` (as a config's `rules:` list), in the policy's order."""
    seen_groups = tuple(sorted(set(groups)))
    used: dict[str, set[Target]] = defaultdict(set)
    for use in uses:
        rule = granting_rule(policy, seen_groups, user, use)
        if rule is not None:
            used[rule.name].add(use.target)
    if not used:
        return []
    last = max(i for i, rule in enumerate(policy.rules) if rule.name in used)
    out: list[dict[str, Any]] = []
    for index, rule in enumerate(policy.rules[: last + 1]):
        if rule.users and user not in rule.users:
            continue  # never matches this user's calls
        copies = _copies(rule, user, used.get(rule.name, set()))
        out += copies
        if rule.action == "deny":
            out.append(as_written(rule))
        elif (
            index < last
            and (rule.action == "approve" or rule.limit is not None)
            and not _covers(rule, copies)
        ):
            rest = as_written(rule, action="deny")
            rest["name"] = f"{user}: the rest of {rule.name}"
            rest["match"]["users"] = [user]
            rest["reason"] = f"not used by {user} in the review period (rule {rule.name!r})"
            out.append(_ordered(rest))
    return _unique_names(out)


def _copies(rule: Rule, user: str, targets: set[Target]) -> list[dict[str, Any]]:
    """`rule` for `user` and the `targets` used under it only."""
    if not targets:
        return []
    if rule.limit is not None:
        groups = {("", ""): targets}  # one copy: one count of the limit
    else:
        groups = defaultdict(set)
        for target in targets:
            groups[(target[0], target[1])].add(target)
    out = []
    for (upstream, kind), some in sorted(groups.items()):
        copy = as_written(rule)
        copy["name"] = f"{user}: {rule.name}" + (
            f" ({kind}s on {upstream or 'any upstream'})" if len(groups) > 1 else ""
        )
        match = copy["match"]
        match["users"] = [user]
        upstreams = sorted({t[0] for t in some})
        if all(upstreams):
            match["upstream"] = upstreams
        kinds = sorted({t[1] for t in some})
        if len(kinds) == 1:
            match[kinds[0]] = _narrowed(rule, kinds[0], sorted({t[2] for t in some}))
        else:  # several kinds in one copy: narrowed to their methods only
            match["method"] = [KIND_METHOD[k] for k in kinds]
        out.append(_ordered(copy))
    return out


def _narrowed(rule: Rule, kind: str, names: list[str]) -> list[str]:
    """Globs matching `names` and nothing `rule` would not: each name itself, unless it
    holds a wildcard (a name is no glob for itself then): the rule's own glob for it."""
    own: Globs | None = {"tool": rule.tools, "resource": rule.resources, "prompt": rule.prompts}[
        kind
    ]
    out: list[str] = []
    for name in names:
        literal = canonical_uri(name)[0] if kind == "resource" else name
        if literal is not None and not _WILDCARD.search(literal):
            out.append(literal)
        elif own is None:
            out.append("**" if kind == "resource" else "*")
        else:
            segments = kind == "resource"
            matching = [p for p in own.patterns if Globs.of([p], segments=segments).match(literal)]
            out += matching or own.patterns
    return sorted(set(out))


def _covers(rule: Rule, copies: list[dict[str, Any]]) -> bool:
    """Whether the copies match every call of their user that `rule` matches: one copy whose
    names are all of the rule's (literal) names of one kind, and no upstream narrowing."""
    if len(copies) != 1:
        return False
    match = copies[0]["match"]
    if match.get("upstream", []) != sorted(rule.upstreams):
        return False
    kinds = (("tool", rule.tools), ("resource", rule.resources), ("prompt", rule.prompts))
    return any(
        globs is not None and sorted(globs.patterns) == match.get(kind) for kind, globs in kinds
    )


def as_written(rule: Rule, *, action: str | None = None) -> dict[str, Any]:
    """A compiled rule as a config's rule mapping (what `parse_rules` reads back to it)."""
    action = action or rule.action
    match: dict[str, Any] = {}
    if rule.upstreams:
        match["upstream"] = list(rule.upstreams)
    if rule.users:
        match["users"] = list(rule.users)
    if rule.groups:
        match["groups"] = list(rule.groups)
    for key, globs in (
        ("method", rule.methods),
        ("tool", rule.tools),
        ("resource", rule.resources),
        ("prompt", rule.prompts),
    ):
        if globs is not None:
            match[key] = list(globs.patterns)
    if rule.args:
        match["args"] = {c.path: _condition(c) for c in rule.args}
    out: dict[str, Any] = {"name": rule.name, "match": match, "action": action}
    if action == "approve":
        out["approvers"] = list(rule.approvers)
        out["timeout"] = duration_text(rule.timeout)
        if rule.grant:
            out["grant"] = duration_text(rule.grant)
        if rule.valid_for is not None:
            out["valid_for"] = duration_text(rule.valid_for)
        if rule.approval_via != "hold":
            out["approval_via"] = rule.approval_via
    if action != "deny" and rule.limit is not None:
        count, per = rule.limit
        out["limit"] = f"{count}/{_PER[per]}"
    if rule.reason != f"{_DEFAULT_REASON[rule.action]} by rule {rule.name!r}":
        out["reason"] = rule.reason
    return out


_PER = {1.0: "s", 60.0: "min", 3600.0: "hour", 86400.0: "day"}


def _condition(condition: ArgCondition) -> dict[str, Any]:
    if condition.regex is not None:
        return {"regex": condition.regex.pattern}
    if condition.search is not None:
        return {"search": condition.search.pattern}
    if condition.path_under is not None:
        return {"path_under": condition.path_under}
    if condition.has_equals:
        return {"equals": condition.equals}
    if condition.one_of is not None:
        return {"in": list(condition.one_of)}
    return {"exists": condition.exists if condition.exists is not None else True}


def duration_text(seconds: float) -> str | float:
    """`10m` for 600 seconds: in the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds) % size == 0:
            return f"{int(seconds // size)}{unit}"
    return seconds


def _ordered(rule: dict[str, Any]) -> dict[str, Any]:
    keys = ("upstream", "users", "groups", "method", "tool", "resource", "prompt", "args")
    rule["match"] = {k: rule["match"][k] for k in keys if k in rule["match"]}
    return rule


def _unique_names(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    taken: set[str] = set()
    for rule in rules:
        base, n = rule["name"], 1
        while rule["name"] in taken:
            n += 1
            rule["name"] = f"{base} ({n})"
        taken.add(rule["name"])
    return rules


class _Dumper(yaml.SafeDumper):
    """Strings holding a line break or a control character are written double-quoted,
    escaped, so each stays on one line (a report shows the block as it is)."""


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if _UNPRINTABLE.search(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def suggestion_yaml(user: str, rules: list[dict[str, Any]]) -> str:
    """The suggested rules as YAML to paste under `rules:`."""
    if not rules:
        return f"# nothing used by {user!r}: remove every grant"
    text = _dump(rules, allow_unicode=True)
    if _UNPRINTABLE.search(text):  # YAML prints bidirectional overrides as they are
        text = _dump(rules, allow_unicode=False)
    return text.rstrip("\n")


def _dump(rules: list[dict[str, Any]], *, allow_unicode: bool) -> str:
    text: str = yaml.dump(
        rules,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=allow_unicode,
        width=1 << 30,
        default_flow_style=None,  # a list of names on one line: `tool: [a, b]`
    )
    return text
