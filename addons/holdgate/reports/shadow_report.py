"""`holdgate shadow report`: where a shadow policy decided differently from the one in force.

Built from the store alone: the decision rows whose `extra.shadow` names the candidate's
decision (each call with its masked arguments, as recorded), and the candidate's summary
rows in `config_versions` (role `candidate`, outcome `summary`), which count every call
it decided, by rule. Differences are grouped by rule pair (the rule in force -> the
candidate's), loosening first: those are the calls the candidate would let through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from holdgate.policy.shadow import KINDS, ROLE, SUMMARY

COUNTS = ("evaluated", "same", "changed", "errors", "skipped")


@dataclass(frozen=True)
class ShadowCall:
    """One call the candidate decided differently, as its decision row recorded it."""

    seq: int
    ts: str
    user: str | None
    method: str | None
    target: str | None
    arguments: Any  # masked, as recorded; None for a message without arguments

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "user": self.user,
            "method": self.method,
            "tool": self.target,
            "arguments": self.arguments,
        }


@dataclass
class RulePair:
    """The calls one rule in force and one candidate rule decided differently."""

    kind: str
    active_action: str
    active_rule: str
    candidate_action: str
    candidate_rule: str
    calls: list[ShadowCall] = field(default_factory=list)
    configs: dict[str, None] = field(default_factory=dict)  # the candidates' hashes, in order

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "active": {"action": self.active_action, "rule": self.active_rule},
            "candidate": {"action": self.candidate_action, "rule": self.candidate_rule},
            "configs": list(self.configs),
            "count": len(self.calls),
            "calls": [c.to_json() for c in self.calls],
        }


@dataclass
class Coverage:
    """One candidate config's counts over the period, from its summary rows."""

    config: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    error_types: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)

    @property
    def unused(self) -> list[str]:
        return [name for name, calls in self.rules.items() if not calls]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            **self.counts,
            "error_types": self.error_types,
            "rules": self.rules,
            "rules_unused": self.unused,
        }


@dataclass
class ShadowReport:
    pairs: list[RulePair]
    coverage: list[Coverage]

    @property
    def loosened(self) -> int:
        return sum(len(p.calls) for p in self.pairs if p.kind == "loosen")

    def to_json(self) -> dict[str, Any]:
        return {
            "differences": [p.to_json() for p in self.pairs],
            "loosened": self.loosened,
            "coverage": [c.to_json() for c in self.coverage],
        }


def build_report(
    events: Iterable[Mapping[str, Any]], versions: Iterable[Mapping[str, Any]]
) -> ShadowReport:
    """The report of the decision rows `events` and the config version rows `versions`,
    both already limited to the period."""
    pairs: dict[tuple[str, str, str, str, str], RulePair] = {}
    for row in events:
        shadow = _extra(row).get("shadow")
        if not isinstance(shadow, dict) or shadow.get("kind") not in KINDS:
            continue
        key = (
            str(shadow["kind"]),
            str(row.get("decision")),
            str(row.get("rule")),
            str(shadow.get("action")),
            str(shadow.get("rule")),
        )
        pair = pairs.get(key)
        if pair is None:
            pair = pairs[key] = RulePair(*key)
        pair.configs[str(shadow.get("config"))] = None
        pair.calls.append(
            ShadowCall(
                int(row["seq"]),
                str(row["ts"]),
                row.get("user"),
                row.get("method"),
                row.get("target"),
                _arguments(row.get("args_masked")),
            )
        )
    ordered = sorted(pairs.values(), key=lambda p: (KINDS.index(p.kind), -len(p.calls)))
    return ShadowReport(ordered, _coverage(versions))


def _coverage(versions: Iterable[Mapping[str, Any]]) -> list[Coverage]:
    by_config: dict[str, Coverage] = {}
    for row in versions:
        if row.get("role") != ROLE or row.get("outcome") != SUMMARY:
            continue
        try:
            detail = json.loads(row.get("detail") or "")
        except ValueError:
            continue
        if not isinstance(detail, dict):
            continue
        config = str(row.get("config_hash"))
        found = by_config.setdefault(config, Coverage(config))
        for name in COUNTS:
            found.counts[name] += _count(detail.get(name))
        for kind, calls in _counts(detail.get("error_types")).items():
            found.error_types[kind] = found.error_types.get(kind, 0) + calls
        for rule, calls in _counts(detail.get("rules")).items():
            found.rules[rule] = found.rules.get(rule, 0) + calls
    return list(by_config.values())


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _counts(value: Any) -> dict[str, int]:
    return {str(k): _count(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _extra(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        extra = json.loads(row.get("extra") or "{}")
    except ValueError:
        return {}
    return extra if isinstance(extra, dict) else {}


def _arguments(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # truncated in the record: shown as it is


def render_text(report: ShadowReport) -> str:
    """The report for a person: each rule pair and its calls, then the coverage."""
    lines: list[str] = []
    if not report.pairs:
        lines.append("no differences: the candidate decided every call as the policy in force")
    for pair in report.pairs:
        configs = ", ".join(config[:12] for config in pair.configs)
        lines.append(
            f"{pair.kind.upper()}  {pair.active_action} by {pair.active_rule!r} -> "
            f"{pair.candidate_action} by {pair.candidate_rule!r}  "
            f"({len(pair.calls)} call{'' if len(pair.calls) == 1 else 's'}; candidate {configs})"
        )
        for call in pair.calls:
            arguments = json.dumps(call.arguments, ensure_ascii=False)
            lines.append(
                f"  #{call.seq} {call.ts} {call.user or '-'} "
                f"{call.target or call.method or '-'} {arguments}"
            )
    if not report.coverage:
        lines.append("coverage: no summary rows in the period (the gateway writes one a minute)")
    for cov in report.coverage:
        counts = ", ".join(f"{name} {cov.counts[name]}" for name in COUNTS)
        lines.append(f"coverage of candidate {cov.config[:12]}: {counts}")
        if cov.error_types:
            lines.append(
                "  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(cov.error_types.items()))
            )
        for rule, calls in cov.rules.items():
            lines.append(f"  {calls:>6}  {rule}")
        if cov.unused:
            lines.append("  rules that saw no call: " + ", ".join(repr(r) for r in cov.unused))
    return "\n".join(lines)
