"""Comparing two policies' decisions of one call: which is looser."""

from __future__ import annotations

from holdgate.policy.rules import Decision

RANK = {"deny": 0, "approve": 1, "allow": 2}


def looser(suggested: Decision, active: Decision) -> str | None:
    """How `suggested` decides more loosely than `active` (allows what it holds or denies,
    holds what it denies, drops or raises its limit, widens its approval), or None."""
    if RANK[suggested.action] != RANK[active.action]:
        return "action" if RANK[suggested.action] > RANK[active.action] else None
    if suggested.action == "allow" and active.limit is not None:
        if suggested.limit is None:
            return "no limit"
        if suggested.limit[0] / suggested.limit[1] > active.limit[0] / active.limit[1]:
            return "higher limit"
    if suggested.action == "approve":
        if not set(suggested.approvers) <= set(active.approvers):
            return "other approvers"
        if suggested.grant > active.grant or suggested.timeout > active.timeout:
            return "longer grant or timeout"
        if (suggested.valid_for or suggested.timeout) > (active.valid_for or active.timeout):
            return "longer valid_for"
    return None
