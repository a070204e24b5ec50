"""The access review's model: per identity what it is granted, what it used, what it was
refused and what to remove; first the exceptions an auditor must look at.

Built from store rows (events, approvals, sessions, tool pins, config versions) and the
policy in force; pure, so the renderers (`review_render.py`, `review_html.py`) and the
campaigns (`campaigns.py`) read one model.

A use is a call that reached its upstream: decided `allow`, or `approve` with an approval
that was approved. A denial is a call refused: decided `deny`, or `approve` with an
approval denied, expired or cancelled. They are counted apart and drawn apart.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from holdgate.policy.policytest import build_message, caller_for
from holdgate.policy.rules import Policy
from holdgate.reports.decision_findings import (
    Deciders,
    Finding,
    approval_findings,
    campaign_findings,
)
from holdgate.reports.least_privilege import Use, suggest, suggestion_yaml
from holdgate.store.campaign_records import Campaign, ItemSpec

CALL_KINDS = {"tools/call": "tool", "resources/read": "resource", "prompts/get": "prompt"}
KIND_METHOD = {kind: method for method, kind in CALL_KINDS.items()}
# listing method -> (kind, result key, name field)
LIST_KINDS = {
    "tools/list": ("tool", "tools", "name"),
    "prompts/list": ("prompt", "prompts", "name"),
    "resources/list": ("resource", "resources", "uri"),
}
LOADED = ("loaded", "reloaded")  # config_versions outcomes that put a config in force
ACTIVE_ROLES = (None, "active")  # config_versions roles of the config in force (not a shadow)
FIRST_PIN = "first-seen"

Target = tuple[str, str, str]  # (upstream, kind, name)


@dataclass
class Usage:
    calls: int = 0
    first: str = ""
    last: str = ""
    sessions: set[str] = field(default_factory=set)

    def add(self, ts: str, session: str | None) -> None:
        self.calls += 1
        self.first = self.first or ts
        self.last = ts
        if session:
            self.sessions.add(session)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "first": self.first or None,
            "last": self.last or None,
            "sessions": len(self.sessions),
        }


@dataclass
class Denial:
    """Refused calls of one target for one rule and reason."""

    rule: str
    reason: str
    target: Target
    count: int = 0
    first: str = ""
    last: str = ""


@dataclass(frozen=True)
class ApprovalLine:
    approval_id: str
    upstream: str
    tool: str
    state: str
    requested_at: str
    decider: str | None
    decided_at: str | None
    reason: str | None
    channel: str | None = None  # how it was decided (`approvals.channel`; None before schema 8)

    @property
    def decided_by(self) -> str | None:
        """The decider and the channel they decided through, as a reviewer reads it."""
        if self.decider is None:
            return None
        return f"{self.decider} via {self.channel or 'a channel not recorded'}"


@dataclass(frozen=True, order=True)
class Delegated:
    """Who an upstream saw when this identity called it: the `sub` and `aud` of the token
    exchanged for it (`mode: exchange`), or the upstream's static credential."""

    upstream: str
    mode: str  # exchange | static
    subject: str
    audience: str


@dataclass
class IdentityReview:
    user: str
    groups: set[str] = field(default_factory=set)
    used: dict[Target, Usage] = field(default_factory=dict)
    granted: dict[Target, str] = field(default_factory=dict)  # -> rule name
    denials: dict[tuple[str, str, Target], Denial] = field(default_factory=dict)
    approvals: list[ApprovalLine] = field(default_factory=list)
    masked: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target, detector)
    sessions: set[str] = field(default_factory=set)
    clients: set[str] = field(default_factory=set)  # self-reported: evidence, not identity
    days: Counter[str] = field(default_factory=Counter)  # YYYY-MM-DD -> uses
    grants_used: set[Use] = field(default_factory=set)  # each used target and its rule
    suggested: list[dict[str, Any]] = field(default_factory=list)  # `least_privilege.suggest`
    # per-user upstream credentials: whom each upstream saw calling, and how often
    delegated: Counter[Delegated] = field(default_factory=Counter)

    @property
    def unused(self) -> list[Target]:
        return sorted(k for k in self.granted if k not in self.used)

    @property
    def denial_count(self) -> int:
        return sum(d.count for d in self.denials.values())

    def suggestion(self) -> str:
        """The narrowest rules that grant what this identity used, as the policy in force
        grants it (`least_privilege`): YAML to paste under `rules:`."""
        return suggestion_yaml(self.user, self.suggested)


@dataclass(frozen=True)
class Evidence:
    """What `verify` says of the store, and of the signed checkpoints when configured."""

    chain_ok: bool
    chain: str
    checkpoints: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Header:
    period_start: str
    period_end: str
    generated_at: str
    generated_by: str
    store: str
    config_file: str
    evidence: Evidence
    config_versions: tuple[Mapping[str, Any], ...] = ()


@dataclass
class Review:
    header: Header
    identities: list[IdentityReview]
    exceptions: list[Finding]
    campaign: Campaign | None = None


@dataclass(frozen=True)
class Inputs:
    """The store's rows a review is built from (as the store returns them)."""

    events: Sequence[Mapping[str, Any]]
    approvals: Sequence[Mapping[str, Any]] = ()
    sessions: Sequence[Mapping[str, Any]] = ()
    tool_pins: Sequence[Mapping[str, Any]] = ()
    config_versions: Sequence[Mapping[str, Any]] = ()
    campaigns: Sequence[Campaign] = ()


def _in_period(ts: str | None, header: Header) -> bool:
    return ts is not None and header.period_start <= ts < header.period_end


def build_review(
    inputs: Inputs, policy: Policy, header: Header, deciders: Deciders | None = None
) -> Review:
    """The review of the period in `header`: `inputs.events` should already be that period's.
    `deciders` (the config's reviewer groups and API keys' groups) tell reviewers apart."""
    people: dict[str, IdentityReview] = {}
    seen: set[Target] = set()
    exceptions: list[Finding] = []
    approvals = {a["approval_id"]: a for a in inputs.approvals}
    approve_rules = {r.name for r in policy.rules if r.action == "approve"}
    for row in inputs.events:
        method = row.get("method") or ""
        upstream = row.get("upstream") or ""
        if row.get("direction") == "response" and method in LIST_KINDS:
            listed = LIST_KINDS[method][0]
            seen.update((upstream, listed, n) for n in _listed(row.get("args_masked"), method))
        if row.get("direction") != "request":
            continue
        user = row.get("user")
        kind = CALL_KINDS.get(method)
        if not user:
            if kind is not None:
                exceptions.append(
                    Finding(
                        "no-identity",
                        row["ts"],
                        f"{method} {row.get('target') or '-'} on {upstream or '-'}",
                        f"decided {row.get('decision') or '-'} by {row.get('rule') or '-'}: "
                        "a call nobody is accountable for",
                    )
                )
            continue
        person = people.setdefault(user, IdentityReview(user))
        _count_delegation(person, upstream, row)
        person.groups.update(json.loads(row.get("groups") or "[]"))
        if row.get("session_id"):
            person.sessions.add(row["session_id"])
        if kind is None or not row.get("target"):
            continue
        target: Target = (upstream, kind, row["target"])
        seen.add(target)
        _count_call(person, target, row, approvals, approve_rules, exceptions)
    for row in inputs.events:
        exposed = people.get(row.get("user") or "")
        if exposed is not None and row.get("masked"):
            for detector, n in json.loads(row["masked"]).items():
                exposed.masked[(row.get("target") or "-", detector)] += int(n)
    for session in inputs.sessions:
        owner = people.get(session.get("user") or "")
        if owner is not None and session["session_id"] in owner.sessions and session["client"]:
            owner.clients.add(session["client"])
    for approval in inputs.approvals:
        requester = people.get(approval.get("requester") or "")
        asked = approval.get("created") or approval.get("ts") or ""
        if requester is not None and _in_period(asked, header):
            requester.approvals.append(
                ApprovalLine(
                    approval["approval_id"],
                    approval.get("upstream") or "",
                    approval.get("tool") or "",
                    approval.get("state") or "",
                    asked,
                    approval.get("decider"),
                    approval.get("decided"),
                    approval.get("reason"),
                    approval.get("channel"),
                )
            )
    for person in people.values():
        caller = caller_for(person.user, tuple(sorted(person.groups)))
        for upstream, kind, name in sorted(seen):
            message = build_message(KIND_METHOD[kind], name, {})
            decision = policy.evaluate(caller, upstream, message)
            if decision.action != "deny":
                person.granted[(upstream, kind, name)] = decision.rule
        person.suggested = suggest(person.user, person.groups, person.grants_used, policy)
    exceptions += _pin_findings(inputs.tool_pins, header)
    exceptions += _config_findings(inputs.config_versions, header)
    in_period = partial(_in_period, header=header)
    exceptions += approval_findings(inputs.approvals, in_period)
    groups_seen = {p.user: p.groups for p in people.values()}
    exceptions += campaign_findings(
        inputs.campaigns, deciders or Deciders(), groups_seen, in_period
    )
    exceptions += [
        Finding("evidence", header.generated_at, "audit store", p) for p in header.evidence.problems
    ]
    exceptions.sort(key=lambda f: (f.ts, f.kind))
    return Review(header, sorted(people.values(), key=lambda p: p.user), exceptions)


def _count_delegation(person: IdentityReview, upstream: str, row: Mapping[str, Any]) -> None:
    """A forwarded call's `extra.upstream_credential`: whom the upstream saw (a refused
    exchange sent nothing, so it names no one)."""
    try:
        credential = json.loads(row.get("extra") or "{}").get("upstream_credential")
    except (ValueError, AttributeError):
        return
    if not isinstance(credential, dict) or "error" in credential:
        return
    mode = credential.get("mode")
    if mode == "static":
        person.delegated[Delegated(upstream, "static", "(static credential)", "-")] += 1
    elif mode == "exchange" and credential.get("sub") is not None:
        audience = credential.get("aud")
        shown = " ".join(audience) if isinstance(audience, list) else str(audience or "-")
        person.delegated[Delegated(upstream, "exchange", str(credential["sub"]), shown)] += 1


def _count_call(
    person: IdentityReview,
    target: Target,
    row: Mapping[str, Any],
    approvals: Mapping[str, Mapping[str, Any]],
    approve_rules: set[str],
    exceptions: list[Finding],
) -> None:
    decision = row.get("decision")
    rule = row.get("rule") or "-"
    reason = row.get("reason") or ""
    if decision == "approve" or rule in approve_rules:
        approval = approvals.get(row.get("approval_id") or "")
        if approval is None:
            exceptions.append(
                Finding(
                    "no-approval-record",
                    row["ts"],
                    f"{person.user}: {target[1]} {target[2]} on {target[0] or '-'}",
                    f"rule {rule!r} asks for approval, but the call has no approval record "
                    f"(approval id {row.get('approval_id') or 'none'})",
                )
            )
            decision = "allow"  # it was let through: count it, the exception says how
        elif approval.get("state") in ("approved", "grant_used", "redeemed"):
            decision = "allow"
        else:
            decision, reason = "deny", f"approval {approval.get('state')}: {reason}".strip(": ")
    if decision == "allow":
        person.used.setdefault(target, Usage()).add(row["ts"], row.get("session_id"))
        person.grants_used.add(Use(target, rule))
        person.days[row["ts"][:10]] += 1
        return
    denial = person.denials.setdefault((rule, reason, target), Denial(rule, reason, target))
    denial.count += 1
    denial.first = denial.first or row["ts"]
    denial.last = row["ts"]


def _listed(recorded: str | None, method: str) -> list[str]:
    _, key, name = LIST_KINDS[method]
    try:
        items = json.loads(recorded or "null")["result"][key]
        return [i[name] for i in items if isinstance(i, dict) and isinstance(i.get(name), str)]
    except (json.JSONDecodeError, KeyError, TypeError):
        return []


def _pin_findings(rows: Iterable[Mapping[str, Any]], header: Header) -> list[Finding]:
    return [
        Finding(
            "tool-changed",
            row["ts"],
            f"{row.get('upstream') or '-'} {row.get('tool') or '-'}",
            f"{row.get('event')}: {row.get('detail') or 'the listed definition changed'}"
            + (f" (by {row['actor']})" if row.get("actor") else ""),
        )
        for row in rows
        if row.get("event") != FIRST_PIN and _in_period(row.get("ts"), header)
    ]


def _config_findings(rows: Iterable[Mapping[str, Any]], header: Header) -> list[Finding]:
    """Each config put in force during the period that differs from the one before it."""
    out = []
    previous: str | None = None
    for row in rows:
        if row.get("role") not in ACTIVE_ROLES:
            continue  # a shadow policy's load or summary changed nothing in force
        if row.get("outcome") not in LOADED:
            if _in_period(row.get("ts"), header):
                out.append(
                    Finding(
                        "config-changed",
                        row["ts"],
                        f"config {str(row.get('config_hash'))[:12]}",
                        f"{row.get('outcome')}: {row.get('detail') or '-'} (not put in force)",
                    )
                )
            continue
        if (
            previous is not None
            and row["config_hash"] != previous
            and _in_period(row["ts"], header)
        ):
            out.append(
                Finding(
                    "config-changed",
                    row["ts"],
                    f"config {previous[:12]} -> {row['config_hash'][:12]}",
                    f"{row.get('outcome')} from {row.get('source') or '-'}",
                )
            )
        previous = row["config_hash"]
    return out


def versions_in_force(
    rows: Iterable[Mapping[str, Any]], start: str, end: str
) -> list[dict[str, Any]]:
    """The config versions in force at some time in [start, end): the last one put in force
    before `start`, then each one put in force in the period."""
    loaded = [r for r in rows if r.get("outcome") in LOADED and r.get("role") in ACTIVE_ROLES]
    before = [r for r in loaded if r["ts"] < start]
    during = [r for r in loaded if start <= r["ts"] < end]
    return [
        {"ts": r["ts"], "config_hash": r["config_hash"], "source": r.get("source") or ""}
        for r in ([before[-1]] if before else []) + during
    ]


def campaign_items(review: Review) -> list[ItemSpec]:
    """One item per (identity, grant) of the review, with its use in the period."""
    specs = []
    for person in review.identities:
        for target, rule in sorted(person.granted.items()):
            usage = person.used.get(target, Usage()).to_json()
            usage["denied"] = sum(d.count for d in person.denials.values() if d.target == target)
            specs.append(ItemSpec(person.user, target[0], target[1], target[2], rule, usage))
    return specs
