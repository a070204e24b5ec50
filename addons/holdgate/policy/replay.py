"""Shadow replay: recorded traffic decided again by a candidate policy, before it goes live.

Each recorded request or notification the policy decided is rebuilt (identity, upstream,
method, target, arguments as recorded) and evaluated by the candidate; the ones whose
outcome would differ are grouped by (recorded rule and action -> candidate rule and action).

What replay cannot know is said, not guessed: arguments were stored masked, so a row whose
arguments held masked values is flagged; rate limits depend on timing and are not
replayed; decisions the gateway makes outside the policy (tool pins) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from holdgate.policy.policytest import ProbeCaller, build_message, caller_for
from holdgate.policy.rules import Decision, Policy
from holdgate.policy.tasks import (
    INVALID_TASK_CURSOR,
    decide_task_request,
    is_task_request,
    recorded_task,
)
from holdgate.policy.tool_pins import TOOL_CHANGED
from holdgate.protocol.jsonrpc import Message
from holdgate.store.rows import json_or

# Recorded decisions the policy made; refusals before it (malformed, unauthenticated) and
# answers passed through are not policy decisions.
POLICY_ACTIONS = ("allow", "deny", "approve")
NOT_POLICY_RULES = (TOOL_CHANGED, "client-response", INVALID_TASK_CURSOR)


@dataclass(frozen=True)
class Replayed:
    """One recorded message, its recorded decision and the candidate's."""

    seq: int
    ts: str
    user: str
    upstream: str
    method: str
    target: str | None
    recorded_action: str
    recorded_rule: str
    candidate: Decision
    args_were_masked: bool
    args_masked: Any = None  # the arguments as recorded (masked); None when it had none

    @property
    def action_changed(self) -> bool:
        return self.candidate.action != self.recorded_action

    @property
    def rule_changed(self) -> bool:
        return self.candidate.rule != self.recorded_rule

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "user": self.user,
            "upstream": self.upstream,
            "method": self.method,
            "target": self.target,
            "recorded": {"action": self.recorded_action, "rule": self.recorded_rule},
            "candidate": self.candidate.to_json(),
            "args_were_masked": self.args_were_masked,
            "args_masked": self.args_masked,
        }


GroupKey = tuple[str, str, str, str]  # recorded action, rule -> candidate action, rule


@dataclass
class ReplayReport:
    considered: int = 0
    changed: list[Replayed] = field(default_factory=list)  # the action would differ
    rerouted: list[Replayed] = field(default_factory=list)  # same action, another rule
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def unchanged(self) -> int:
        return self.considered - len(self.changed) - len(self.rerouted)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @staticmethod
    def grouped(items: list[Replayed]) -> dict[GroupKey, list[Replayed]]:
        """Groups, largest first."""
        groups: dict[GroupKey, list[Replayed]] = {}
        for item in items:
            key = (item.recorded_action, item.recorded_rule, item.candidate.action)
            groups.setdefault((*key, item.candidate.rule), []).append(item)
        return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))

    def to_json(self) -> dict[str, Any]:
        def groups(items: list[Replayed]) -> list[dict[str, Any]]:
            return [
                {
                    "recorded": {"action": key[0], "rule": key[1]},
                    "candidate": {"action": key[2], "rule": key[3]},
                    "count": len(members),
                    "messages": [m.to_json() for m in members],
                }
                for key, members in self.grouped(items).items()
            ]

        return {
            "considered": self.considered,
            "unchanged": self.unchanged,
            "changed": groups(self.changed),
            "same_action_other_rule": groups(self.rerouted),
            "skipped": self.skipped,
        }


class NotReplayable(Exception):
    """A recorded row that cannot be turned back into the request it was."""


def rebuild(row: Mapping[str, Any]) -> tuple[ProbeCaller, Message]:
    """The caller and message of a recorded `events` row (arguments as recorded: masked)."""
    args = json_or(row.get("args_masked")) if row.get("args_masked") else None
    if row.get("args_masked") and not isinstance(args, dict):
        raise NotReplayable("arguments not recorded in full (too large)")
    try:
        message = build_message(row["method"], row.get("target"), args)
    except ValueError:
        raise NotReplayable("not a message the policy decides") from None
    groups = tuple(json_or(row.get("groups")) or ())
    return caller_for(row.get("user"), groups), message


def replay(
    candidate: Policy, rows: Iterable[Mapping[str, Any]], baseline: Policy | None = None
) -> ReplayReport:
    """Decide recorded `events` rows again with the `candidate` policy, and compare with
    what was recorded; with `baseline`, with what `baseline` decides of the same rows
    instead (`policy diff`: two versions of a file on the same traffic)."""
    report = ReplayReport()
    for row in rows:
        if row.get("direction") not in ("request", "notification"):
            continue
        if row.get("decision") not in POLICY_ACTIONS or not row.get("rule"):
            continue
        if row["rule"] in NOT_POLICY_RULES:
            report.skip("decided outside the policy (tool pin or client answer)")
            continue
        extra = json_or(row.get("extra")) or {}
        if extra.get("rate_limited"):
            report.skip("refused by a rate limit, which depends on timing")
            continue
        try:
            caller, message = rebuild(row)
        except NotReplayable as exc:
            report.skip(str(exc))
            continue
        decision = _decide(candidate, caller, message, row, extra)
        was_action, was_rule = row["decision"], row["rule"]
        if baseline is not None:
            was = _decide(baseline, caller, message, row, extra)
            was_action, was_rule = was.action, was.rule
        report.considered += 1
        item = Replayed(
            seq=row["seq"],
            ts=row["ts"],
            user=caller.user,
            upstream=row.get("upstream") or "",
            method=row["method"],
            target=row.get("target"),
            recorded_action=was_action,
            recorded_rule=was_rule,
            candidate=decision,
            args_were_masked=bool(extra.get("args_findings")),
            args_masked=message.arguments or None,
        )
        if item.action_changed:
            report.changed.append(item)
        elif item.rule_changed:
            report.rerouted.append(item)
    return report


def _decide(
    policy: Policy,
    caller: ProbeCaller,
    message: Message,
    row: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> Decision:
    upstream = row.get("upstream") or ""
    if is_task_request(message):  # decided by the task's owner, then the rules
        task = recorded_task(row["rule"], caller.user, upstream, extra.get("task"))
        return decide_task_request(policy, caller, upstream, message, task)
    return policy.evaluate(caller, upstream, message)


def format_report(report: ReplayReport, shown: int | None = 5) -> list[str]:
    """The report as lines of text; at most `shown` examples per group (None: all)."""
    lines = [
        f"{report.considered} recorded decisions replayed: {report.unchanged} unchanged, "
        f"{len(report.changed)} would change, {len(report.rerouted)} same action by another rule"
    ]
    sections = (("would change", report.changed), ("same action, another rule", report.rerouted))
    for title, items in sections:
        if not items:
            continue
        lines += ["", f"{title}:"]
        for (was, was_rule, now, now_rule), members in report.grouped(items).items():
            lines.append(f"  {was} by {was_rule!r} -> {now} by {now_rule!r}: {len(members)}")
            for m in members[:shown]:
                mark = " *" if m.args_were_masked else ""
                lines.append(
                    f"    {m.ts}  seq {m.seq}  {m.user} -> {m.upstream} {m.method} "
                    f"{m.target or ''}{mark}".rstrip()
                )
                if m.args_masked is not None:
                    lines.append(f"      args {shown_arguments(m.args_masked)}")
            if shown is not None and len(members) > shown:
                lines.append(f"    … and {len(members) - shown} more (--all shows every one)")
    if any(m.args_were_masked for m in report.changed + report.rerouted):
        lines += ["", "* arguments held masked values when recorded; live values may decide"]
        lines.append("  otherwise for rules on those arguments")
    for reason, count in report.skipped.items():
        lines.append(f"skipped {count}: {reason}")
    return lines


SHOWN_ARGUMENT_CHARS = 160


def shown_arguments(arguments: Any) -> str:
    """Recorded (masked) arguments on one line, cut at SHOWN_ARGUMENT_CHARS."""
    text = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    if len(text) <= SHOWN_ARGUMENT_CHARS:
        return text
    return text[: SHOWN_ARGUMENT_CHARS - 1] + "…"
