"""Shadow policy: a candidate config decided beside the one in force, never enforced.

The pure half: how a candidate's decision differs from the active one (`difference_kind`),
the candidate's own rate-limit windows (`ShadowRateWindows`, never the store's, so the
counters of the policy in force are never touched), the time a request may spend on the
candidate (`ShadowBudget`) and the per-minute tally of what it decided (`ShadowTally`).
The glue that runs it on live traffic is `holdgate.addons.shadow`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from holdgate.policy.rules import Action, Decision

Kind = Literal["tighten", "loosen", "rule-only"]
# How a shadow policy's rows are told apart in `config_versions`: their role, and the
# outcome of its summary rows (loads are "loaded", "reloaded" or "rejected", as ever).
ROLE = "candidate"
SUMMARY = "summary"
KINDS: tuple[Kind, ...] = ("loosen", "tighten", "rule-only")  # the order a report lists them
# How strict each action is: a candidate that moves a call up this scale tightens it.
STRICTNESS: dict[Action, int] = {"allow": 0, "approve": 1, "deny": 2}
# The most time the candidate may take on one request's messages; the rest are skipped.
BUDGET_SECONDS = 0.002
# The share of the event loop's time the candidate may take overall, and how much of it
# may be spent at once: a candidate slower than the budget on every call is then
# evaluated on some calls only (the rest skipped and counted), never on all of them.
SHARE = 0.1
BURST_SECONDS = 0.1
# Rate-limit windows the candidate keeps per process; the oldest go first beyond it.
MAX_WINDOWS = 100_000


def difference_kind(active: Decision, candidate: Decision) -> Kind | None:
    """How the candidate's decision differs from the one in force; None when it is the
    same action by the same rule. A call the candidate denies for its rate limit is a
    deny: the same rule then tightens."""
    if candidate.action == active.action:
        return None if candidate.rule == active.rule else "rule-only"
    return "tighten" if STRICTNESS[candidate.action] > STRICTNESS[active.action] else "loosen"


def shadow_record(candidate: Decision, config: str, kind: Kind) -> dict[str, Any]:
    """What a decision row carries as `extra.shadow` where the candidate differs."""
    record: dict[str, Any] = {
        "action": candidate.action,
        "rule": candidate.rule,
        "config": config,
        "kind": kind,
    }
    if candidate.rate_limited:
        record["rate_limited"] = True
    return record


@dataclass
class ShadowRateWindows:
    """The candidate's rate-limit counters: a fixed window per bucket anchored at its first
    call, as the store counts the policy in force. Kept in this process only: a candidate
    is measured, not enforced, so it must never write the counters calls are refused by."""

    windows: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)
    limit: int = MAX_WINDOWS

    def take(self, bucket: str, period: float, now: float) -> int:
        """Count one call in `bucket`'s window; how many the window holds with it."""
        start, taken = self.windows.pop(bucket, (now, 0))
        if now - start >= period:
            start, taken = now, 0
        self.windows[bucket] = (start, taken + 1)
        if len(self.windows) > self.limit:
            self.windows.popitem(last=False)
        return taken + 1


@dataclass
class ShadowBudget:
    """The candidate's time on one request: once spent, its further messages are skipped
    (counted), so a slow candidate delays a request by at most about one evaluation more
    than the budget."""

    seconds: float = BUDGET_SECONDS
    spent: float = 0.0

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.seconds


@dataclass
class ShadowAllowance:
    """The candidate's time over all requests: a bucket of seconds refilled at `share` of
    the clock's and holding at most `burst`. Evaluations spend it; an empty bucket skips."""

    share: float = SHARE
    burst: float = BURST_SECONDS
    left: float = BURST_SECONDS
    at: float | None = None

    def available(self, now: float) -> bool:
        if self.at is not None:
            self.left = min(self.burst, self.left + (now - self.at) * self.share)
        self.at = now
        return self.left > 0

    def spend(self, seconds: float) -> None:
        self.left -= seconds


@dataclass
class ShadowTally:
    """What the candidate decided since the last summary, and its rules' coverage."""

    evaluated: int = 0
    same: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by exception type
    skipped: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)  # calls each candidate rule decided

    def decided(self, candidate: Decision, kind: Kind | None) -> None:
        self.evaluated += 1
        self.rules[candidate.rule] += 1
        if kind is None:
            self.same += 1
        else:
            self.kinds[kind] += 1

    def failed(self, error: BaseException) -> None:
        self.errors[type(error).__name__] += 1

    @property
    def empty(self) -> bool:
        return not (self.evaluated or self.errors or self.skipped)

    def summary(self, rule_names: tuple[str, ...], seconds: float) -> dict[str, Any]:
        """The summary row's detail: counts, and every candidate rule with the calls it
        decided (0 for one that saw none)."""
        rules = {name: 0 for name in rule_names}
        rules.update(self.rules)
        return {
            "seconds": round(seconds, 3),
            "evaluated": self.evaluated,
            "same": self.same,
            "changed": sum(self.kinds.values()),
            "kinds": {kind: self.kinds[kind] for kind in KINDS if self.kinds[kind]},
            "errors": sum(self.errors.values()),
            "error_types": dict(self.errors),
            "skipped": self.skipped,
            "rules": rules,
        }
