"""The review's exceptions about people's decisions: approvals and certifications nobody
may trust at face value, and campaigns closed before they were done.

Read from what the store recorded of each decision: its channel and the decider as
authenticated (`approvals.channel`, `approvals.decided_as`; a certification's
`decided_how`), the rule's approvers, the config's reviewer groups. A decision recorded
before decisions said how they were made is shown as such ("channel not recorded"), never
taken for an authenticated one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from holdgate.store.approval_records import approver_groups
from holdgate.store.campaign_records import Campaign, Item

DECIDED = ("approved", "denied")
InPeriod = Callable[[Any], bool]  # whether a timestamp column falls in the review's period

# Each kind of exception, and why a reviewer must look at it.
WHY: dict[str, str] = {
    "no-identity": "a call nobody is accountable for",
    "no-approval-record": "a call let through by an approve rule with no decision on record",
    "tool-changed": "a tool's definition changed: what was approved may not be what runs",
    "config-changed": "the policy changed within the period",
    "evidence": "the audit store's evidence does not check out",
    "decider-not-approver": "an approval decided by someone outside the rule's approvers",
    "break-glass": "a decision written straight to the store: nobody authenticated it and "
    "no group was checked",
    "mitmweb-decision": "a decision made at the mitmweb console, not through the gateway's API",
    "channel-not-recorded": "a decision recorded before decisions said how they were made: "
    "who made it is the name typed, not an authenticated identity",
    "certifier-not-reviewer": "a certification by someone not recorded in the reviewer groups",
    "closed-undecided": "a certification campaign closed with grants nobody decided on",
}


@dataclass(frozen=True)
class Finding:
    """One exception: something the auditor must look at before the per-identity pages."""

    kind: str  # a key of WHY
    ts: str
    subject: str
    detail: str


@dataclass(frozen=True)
class Deciders:
    """What the config says of the people who decide: the reviewer groups
    (`review.reviewers`) and the groups of the identities it names itself (API keys)."""

    reviewers: tuple[str, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _json_object(value: Any) -> dict[str, Any] | None:
    """A JSON object column (text or already decoded); None when absent or unreadable."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return None
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


def approval_findings(approvals: Iterable[Mapping[str, Any]], in_period: InPeriod) -> list[Finding]:
    """The exceptions among the approval decisions made in the period (`in_period(ts)`)."""
    out = []
    for row in approvals:
        if row.get("state") not in DECIDED or not in_period(row.get("decided")):
            continue
        decider = row.get("decider") or "-"
        ts = str(row["decided"])
        subject = f"approval {row['approval_id']}: {row.get('tool') or '-'} for " + (
            row.get("requester") or "-"
        )
        said = f"{row['state']} by {decider}"
        channel = row.get("channel")
        if channel is None:
            out.append(
                Finding(
                    "channel-not-recorded",
                    ts,
                    subject,
                    f"{said}: channel not recorded (a decision from before the store "
                    "recorded how decisions were made)",
                )
            )
            continue
        approvers = approver_groups(row)
        if channel == "break-glass":
            out.append(
                Finding(
                    "break-glass",
                    ts,
                    subject,
                    f"{said} via break-glass (no credential, no group checked; approvers: "
                    f"{_names(approvers)}): {row.get('reason') or 'no reason given'}",
                )
            )
            continue
        if channel == "mitmweb":
            out.append(Finding("mitmweb-decision", ts, subject, f"{said} at the mitmweb console"))
        problem = _approver_problem(row.get("decided_as"), approvers)
        if problem is not None:
            out.append(
                Finding("decider-not-approver", ts, subject, f"{said} via {channel}: {problem}")
            )
    return out


def _approver_problem(recorded: Any, approvers: frozenset[str]) -> str | None:
    """Why the record of a decision (`decided_as`) does not show the decider in the rule's
    approvers, or None when it does: a qualifying group named, and among the groups seen."""
    decided_as = _json_object(recorded)
    if decided_as is None:
        what = "not recorded" if recorded is None else "unreadable"
        return f"how the decider authenticated is {what}, so no approver group is shown"
    groups = decided_as.get("groups")
    if not isinstance(groups, list):
        return f"no group of the decider was checked (approvers: {_names(approvers)})"
    seen = {str(g) for g in groups}
    if decided_as.get("qualified_by") is None or not seen & approvers:
        return f"groups {_names(seen)} are not in the approvers ({_names(approvers)})"
    return None


def campaign_findings(
    campaigns: Iterable[Campaign],
    deciders: Deciders,
    seen_groups: Mapping[str, Iterable[str]],
    in_period: InPeriod,
) -> list[Finding]:
    """Certifications and closes in the period nobody may take at face value.

    A certifier is a reviewer when the record of the certification shows a reviewer group
    among the groups they authenticated with; without such a record (break-glass, or a
    certification from before decisions said how they were made), when the config's API
    key of that name or the credentials they called with in the period have one."""
    out = []
    for campaign in campaigns:
        for item in campaign.items:
            if item.state in ("keep", "revoke") and in_period(item.decided_at):
                out += _certification_findings(campaign, item, deciders, seen_groups)
        for event in campaign.events:
            if event.get("event") == "closed" and in_period(event.get("ts")):
                out += _close_findings(campaign, event)
    return out


def _certification_findings(
    campaign: Campaign,
    item: Item,
    deciders: Deciders,
    seen_groups: Mapping[str, Iterable[str]],
) -> list[Finding]:
    # `decided_how` ({channel, decided_as}) is recorded with each certification since #27
    how = _json_object(getattr(item, "decided_how", None)) or {}
    channel = how.get("channel")
    reviewer = item.reviewer or "-"
    ts = str(item.decided_at)
    subject = (
        f"campaign {campaign.campaign_id} item {item.item_id}: {item.user} "
        f"{item.target_kind} {item.target} on {item.upstream or '-'}"
    )
    said = f"{item.state} by {reviewer}"
    reviewers = (
        _names(deciders.reviewers)
        if deciders.reviewers
        else "none configured: add `review: {reviewers: [GROUP]}` to the config"
    )
    out = []
    if channel is None:
        out.append(
            Finding(
                "channel-not-recorded",
                ts,
                subject,
                f"{said}: channel not recorded (a certification from before the store "
                "recorded how decisions were made)",
            )
        )
    elif channel == "break-glass":
        out.append(
            Finding(
                "break-glass",
                ts,
                subject,
                f"{said} via break-glass (no credential, not checked against the reviewer "
                f"groups: {reviewers}): {item.reason or 'no reason given'}",
            )
        )
    decided_as = _json_object(how.get("decided_as")) or {}
    recorded = decided_as.get("groups")
    if channel not in (None, "break-glass") and isinstance(recorded, list):
        groups, source = {str(g) for g in recorded}, f"authenticated via {channel}"
    else:
        groups = set(deciders.groups.get(reviewer, ())) | set(seen_groups.get(reviewer, ()))
        source = "as configured or seen in the period's calls"
    if not groups & set(deciders.reviewers):
        out.append(
            Finding(
                "certifier-not-reviewer",
                ts,
                subject,
                f"{said}, whose groups ({_names(groups)}; {source}) are not among the "
                f"reviewer groups ({reviewers})",
            )
        )
    return out


def _close_findings(campaign: Campaign, event: Mapping[str, Any]) -> list[Finding]:
    detail = _json_object(event.get("detail")) or {}
    undecided = detail.get("undecided")
    counted = isinstance(undecided, int) and not isinstance(undecided, bool)
    if not counted:  # closes from before the close recorded it: count the items
        undecided = sum(1 for item in campaign.items if item.state == "open")
    closer = detail.get("closer") or event.get("actor") or "-"
    subject = f"campaign {campaign.campaign_id}"
    ts = str(event["ts"])
    out = []
    if undecided:
        forced = detail.get("forced", detail.get("force"))
        how = " with --force" if forced else ""
        why = f": {detail['reason']}" if detail.get("reason") else ""
        out.append(
            Finding(
                "closed-undecided",
                ts,
                subject,
                f"closed by {closer}{how} with {undecided} of {len(campaign.items)} items "
                f"undecided{'' if counted else ' (counted from its items)'}{why}",
            )
        )
    if detail.get("channel") == "break-glass":
        out.append(Finding("break-glass", ts, subject, f"closed by {closer} via break-glass"))
    return out
