"""Rule-level differences between two policies (`holdgate policy diff OLD NEW`).

Rules are matched by `name`, the identity a person gives them: a rule is added, removed,
changed (with each key that differs, written as in the config) or unchanged. Since the
first matching rule wins, a rule that moved before or after another rule both files
have is a change too, even with nothing else edited. What the changes do to real calls
is `replay` with the old policy as the baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

from holdgate.policy.rules import Globs, Policy, Rule

PERIOD_UNITS = ((86400.0, "day"), (3600.0, "h"), (60.0, "min"), (1.0, "s"))


@dataclass(frozen=True)
class RuleChange:
    """A rule both policies have, and what differs: (key, old, new) as written."""

    name: str
    old_line: int
    new_line: int
    keys: tuple[tuple[str, str, str], ...]


@dataclass
class PolicyDiff:
    added: list[Rule] = field(default_factory=list)
    removed: list[Rule] = field(default_factory=list)
    changed: list[RuleChange] = field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": [{"name": r.name, "line": r.line, **written(r)} for r in self.added],
            "removed": [{"name": r.name, "line": r.line} for r in self.removed],
            "changed": [
                {
                    "name": c.name,
                    "old_line": c.old_line,
                    "new_line": c.new_line,
                    "keys": [{"key": k, "old": old, "new": new} for k, old, new in c.keys],
                }
                for c in self.changed
            ],
            "unchanged": self.unchanged,
        }


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """What changed from `old` to `new`, rule by rule, in the new file's order (removed
    rules in the old file's order)."""
    before = {rule.name: rule for rule in old.rules}
    after = {rule.name: rule for rule in new.rules}
    common_old = [r.name for r in old.rules if r.name in after]
    common_new = [r.name for r in new.rules if r.name in before]
    moved = _moved(common_old, common_new)
    result = PolicyDiff(removed=[r for r in old.rules if r.name not in after])
    for rule in new.rules:
        previous = before.get(rule.name)
        if previous is None:
            result.added.append(rule)
            continue
        keys = changed_keys(previous, rule)
        if rule.name in moved:
            was, now = common_old.index(rule.name), common_new.index(rule.name)
            keys.append(("position", _position(was, common_old), _position(now, common_new)))
        if keys:
            result.changed.append(RuleChange(rule.name, previous.line, rule.line, tuple(keys)))
        else:
            result.unchanged += 1
    return result


def _moved(old: list[str], new: list[str]) -> set[str]:
    """The rules that changed places: all but the longest run kept in the same order (one
    rule moved to the top is that rule, not every rule it passed)."""
    kept = SequenceMatcher(None, old, new, autojunk=False).get_matching_blocks()
    in_order = {name for block in kept for name in old[block.a : block.a + block.size]}
    return set(new) - in_order


def _position(index: int, names: list[str]) -> str:
    """Where a rule stands among the rules both files have: after which one."""
    return f"after {names[index - 1]!r}" if index else "first"


def changed_keys(old: Rule, new: Rule) -> list[tuple[str, str, str]]:
    """Each key whose meaning differs, as (key, old, new) written as in the config."""
    was, now = written(old), written(new)
    return [
        (key, was.get(key, "-"), now.get(key, "-"))
        for key in dict.fromkeys([*now, *was])
        if was.get(key) != now.get(key)
    ]


def written(rule: Rule) -> dict[str, str]:
    """The rule's keys that are set, each written as in the config: what a diff shows."""
    out: dict[str, str] = {"action": rule.action}
    for key, values in (
        ("match.upstream", rule.upstreams),
        ("match.users", rule.users),
        ("match.groups", rule.groups),
    ):
        if values:
            out[key] = _list(values)
    for key, globs in (
        ("match.method", rule.methods),
        ("match.tool", rule.tools),
        ("match.resource", rule.resources),
        ("match.prompt", rule.prompts),
    ):
        if globs is not None:
            out[key] = _globs(globs)
    for condition in rule.args:
        out[f"match.args.{condition.path}"] = condition.written
    if rule.action == "approve":
        out["approvers"] = _list(rule.approvers)
        out["timeout"] = _seconds(rule.timeout)
        out["grant"] = _seconds(rule.grant)
        out["approval_via"] = rule.approval_via
        if rule.valid_for is not None:
            out["valid_for"] = _seconds(rule.valid_for)
    if rule.limit is not None:
        out["limit"] = rate(rule.limit)
    out["reason"] = rule.reason
    return out


def rate(limit: tuple[int, float]) -> str:
    """`(30, 60.0)` as written: `30/min`."""
    count, seconds = limit
    unit = next((name for size, name in PERIOD_UNITS if seconds == size), None)
    return f"{count}/{unit}" if unit else f"{count} per {_seconds(seconds)}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _globs(globs: Globs) -> str:
    return _list(globs.patterns)


def _list(values: tuple[str, ...]) -> str:
    return json.dumps(list(values), ensure_ascii=False)


def format_diff(diff: PolicyDiff) -> list[str]:
    """The rule-level changes as lines of text."""
    lines: list[str] = []
    for rule in diff.added:
        lines.append(f"added   rule {rule.name!r} (line {rule.line})")
        lines.extend(f"    {key}: {value}" for key, value in written(rule).items())
    for rule in diff.removed:
        lines.append(f"removed rule {rule.name!r} (was line {rule.line})")
    for change in diff.changed:
        lines.append(f"changed rule {change.name!r} (line {change.old_line} -> {change.new_line})")
        lines.extend(f"    {key}: {old} -> {new}" for key, old, new in change.keys)
    lines.append(
        f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed, "
        f"{diff.unchanged} unchanged"
    )
    return lines
