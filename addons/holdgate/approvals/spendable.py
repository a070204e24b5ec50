"""When a given approval may still let its call through (be spent).

An approval is a person's answer to one call under one rule, at one time. It may be spent
only while both still hold:

- time: within the rule's `valid_for` (default: its `timeout`) after the decision, so an
  approval given today is not a standing licence for tomorrow, whatever happened between
  (restarts, replicas: the decision's time is the store's);
- lineage: the rule in force for the call has the name and the lineage (`rule_lineage`,
  the SHA-256 of the rule as written) it had when the approval was asked for. A reload
  that edits or removes the rule voids every approval not yet spent. An approval without
  a lineage (stored before schema 6) is never spent after a restart: it cannot be matched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol

from holdgate.policy.rules import Decision, Policy, decision_for
from holdgate.policy.tool_pins import TOOL_CHANGED, ToolChangePolicy, tool_change_decision
from holdgate.store.rows import parse_iso


class PinnedUpstream(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def on_tool_change(self) -> ToolChangePolicy: ...


class RulesInForce(Protocol):
    """The rules an approval is checked against: a loaded gateway config (which is built
    on top of this layer, so it is not imported here)."""

    @property
    def policy(self) -> Policy: ...
    @property
    def upstreams(self) -> Sequence[PinnedUpstream]: ...


class SpendRefusal(NamedTuple):
    """Why an approved approval cannot let its call through now."""

    kind: Literal["approval-expired", "rule-changed"]
    reason: str


def spend_refusal(
    record: Mapping[str, Any], in_force: Decision | None, now: float
) -> SpendRefusal | None:
    """None when the approved `record` may be spent at `now` (seconds since the epoch) under
    `in_force`, the approve decision of the rule now in force for its call (None: no rule
    of that name asks for approval any more)."""
    rule = record.get("rule")
    approval = record.get("approval_id")
    if (
        in_force is None
        or in_force.action != "approve"
        or in_force.rule != rule
        or not in_force.lineage
        or in_force.lineage != record.get("rule_lineage")
    ):
        gone = in_force is None or in_force.rule != rule or in_force.action != "approve"
        what = "was removed" if gone else "was changed"
        return SpendRefusal(
            "rule-changed",
            f"approval {approval} void: the rule {rule!r} that required it {what} by a config "
            "reload since it was asked for; call again without its requestState to ask anew",
        )
    decided = record.get("decided")
    window = in_force.valid_for if in_force.valid_for is not None else in_force.timeout
    try:
        decided_at = parse_iso(str(decided)) if decided else None
    except ValueError:
        decided_at = None
    if decided_at is None:
        return SpendRefusal(
            "approval-expired", f"approval {approval} void: its decision time is unknown"
        )
    if now > decided_at + window:
        return SpendRefusal(
            "approval-expired",
            f"approval {approval} expired after its decision: approved at {decided}, it could "
            f"be used for {window:g}s (rule {rule!r}: valid_for, else timeout); call again "
            "without its requestState to ask anew",
        )
    return None


def rule_in_force(config: RulesInForce | None, rule: str, upstream: str) -> Decision | None:
    """The approve decision of the rule named `rule` in `config` (for `tool-changed`, the
    upstream's `on_tool_change`), or None when no such rule asks for approval."""
    if config is None:
        return None
    if rule == TOOL_CHANGED:
        found = next((u for u in config.upstreams if u.name == upstream), None)
        return tool_change_decision(upstream, found.on_tool_change, "") if found else None
    for candidate in config.policy.rules:
        if candidate.name == rule:
            return decision_for(candidate) if candidate.action == "approve" else None
    return None
