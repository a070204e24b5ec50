"""The access review: per identity, what it is granted, what it used, and what to remove;
how many sessions it had and which clients it used (as they named themselves).

Built from the audit feed (events and approvals) and the policy in force; rendered as
Markdown, HTML (with simple bar charts) or CSV for a reviewer.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from holdgate.config.gateway_config import GatewayConfig
from holdgate.policy.policytest import build_message, caller_for


@dataclass
class Usage:
    count: int = 0
    first: str = ""
    last: str = ""
    denied: int = 0


@dataclass
class IdentityReview:
    user: str
    groups: tuple[str, ...] = ()
    used: dict[tuple[str, str], Usage] = field(default_factory=dict)  # (upstream, tool)
    granted: dict[tuple[str, str], str] = field(default_factory=dict)  # -> rule name
    denials: int = 0
    approvals_requested: int = 0
    approvals_approved: int = 0
    approvals_denied: int = 0
    masked: dict[str, int] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    clients: set[str] = field(default_factory=set)  # self-reported: evidence, not identity

    @property
    def unused(self) -> list[tuple[str, str]]:
        return sorted(
            k
            for k in self.granted
            if k not in self.used or not self.used[k].count - self.used[k].denied
        )

    def suggestion(self) -> str:
        """The narrowest rule set that would have allowed exactly what this identity used."""
        by_upstream: dict[str, list[str]] = defaultdict(list)
        for (upstream, tool), usage in sorted(self.used.items()):
            if usage.count > usage.denied:
                by_upstream[upstream].append(tool)
        lines = []
        for upstream, tools in by_upstream.items():
            lines += [
                f"- name: {self.user} uses {upstream}",
                f"  match: {{users: [{self.user}], upstream: {upstream}, "
                f"tool: {json.dumps(tools)}}}",
                "  action: allow",
            ]
        return "\n".join(lines) or "# nothing used: remove every grant"


@dataclass
class Review:
    identities: list[IdentityReview]


def build_review(
    rows: Sequence[Mapping[str, Any]],
    approvals: Sequence[Mapping[str, Any]],
    config: GatewayConfig,
    sessions: Sequence[Mapping[str, Any]] = (),
) -> Review:
    """The review of `rows` (events, as the store gives them) and `approvals` (their latest
    states) under `config`'s rules; `sessions` (as the store lists them) name the clients.
    Masked exposures are each row's own findings, counted once: a request row's are what
    its arguments held, a response row's what its answer did.
    """
    people: dict[str, IdentityReview] = {}
    tools_seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        user = row.get("user")
        if not user or row.get("direction") != "request":
            continue
        person = people.setdefault(user, IdentityReview(user))
        person.groups = tuple(json.loads(row.get("groups") or "[]"))
        if row.get("session_id"):
            person.sessions.add(row["session_id"])
        denied = row.get("decision") not in ("allow", "approve", "pass")
        person.denials += int(denied)
        if row.get("method") != "tools/call" or not row.get("target"):
            continue
        key = (row.get("upstream") or "", row["target"])
        tools_seen[key[0]].add(key[1])
        usage = person.used.setdefault(key, Usage(first=row["ts"]))
        usage.count += 1
        usage.denied += int(denied)
        usage.last = row["ts"]
    for row in rows:  # tools the upstream offered, as recorded in tools/list answers
        if row.get("direction") == "response" and row.get("method") == "tools/list":
            for tool in _listed_tools(row.get("args_masked")):
                tools_seen[row.get("upstream") or ""].add(tool)
    for row in rows:
        if row.get("user") in people and row.get("masked"):
            person = people[row["user"]]
            for name, n in json.loads(row["masked"]).items():
                person.masked[name] = person.masked.get(name, 0) + n
    for session in sessions:
        owner = people.get(session.get("user") or "")
        if owner is not None and session["session_id"] in owner.sessions and session["client"]:
            owner.clients.add(session["client"])
    for approval in approvals:
        requester = people.get(approval.get("requester") or "")
        if requester is None:
            continue
        requester.approvals_requested += 1
        requester.approvals_approved += int(approval.get("state") == "approved")
        requester.approvals_denied += int(approval.get("state") == "denied")
    for person in people.values():
        caller = caller_for(person.user, person.groups)
        for upstream, tools in tools_seen.items():
            for tool in sorted(tools):
                decision = config.policy.evaluate(
                    caller, upstream, build_message("tools/call", tool, {})
                )
                if decision.action != "deny":
                    person.granted[(upstream, tool)] = decision.rule
    return Review(sorted(people.values(), key=lambda p: p.user))


def _listed_tools(recorded: str | None) -> list[str]:
    try:
        message = json.loads(recorded or "null")
        tools = message["result"]["tools"]
        return [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    except (json.JSONDecodeError, KeyError, TypeError):
        return []


def render_markdown(review: Review) -> str:
    out = ["# Access review", ""]
    for p in review.identities:
        out += [f"## {p.user}", "", f"groups: {', '.join(p.groups) or '-'}", ""]
        out += [
            "| upstream | tool | granted by | used | first | last |",
            "|---|---|---|---|---|---|",
        ]
        for key in sorted(set(p.granted) | set(p.used)):
            u = p.used.get(key, Usage())
            out.append(
                f"| {key[0]} | {key[1]} | {p.granted.get(key, '(not granted)')} | {u.count} | "
                f"{u.first or '-'} | {u.last or '-'} |"
            )
        out += [
            "",
            f"denials: {p.denials}; approvals requested {p.approvals_requested}, "
            f"approved {p.approvals_approved}, denied {p.approvals_denied}",
            "masked exposures: "
            + (", ".join(f"{k} {v}" for k, v in sorted(p.masked.items())) or "none"),
            f"sessions: {len(p.sessions)}; clients: " + (", ".join(sorted(p.clients)) or "-"),
        ]
        if p.unused:
            out += [
                "",
                "**Candidates for removal** (granted, never used): "
                + ", ".join(f"{u}/{t}" for u, t in p.unused),
            ]
        out += ["", "Least-privilege suggestion:", "", "```yaml", p.suggestion(), "```", ""]
    return "\n".join(out) + "\n"


def render_csv(review: Review) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "user",
            "groups",
            "upstream",
            "tool",
            "granted_by",
            "used",
            "first",
            "last",
            "unused_grant",
            "sessions",
            "clients",
        ]
    )
    for p in review.identities:
        for key in sorted(set(p.granted) | set(p.used)):
            u = p.used.get(key, Usage())
            writer.writerow(
                [
                    p.user,
                    " ".join(p.groups),
                    key[0],
                    key[1],
                    p.granted.get(key, ""),
                    u.count,
                    u.first,
                    u.last,
                    key in p.unused,
                    len(p.sessions),
                    " | ".join(sorted(p.clients)),
                ]
            )
    return buffer.getvalue()


def render_html(review: Review) -> str:
    peak = max((u.count for p in review.identities for u in p.used.values()), default=1) or 1
    parts = [
        "<!doctype html><meta charset=utf-8><title>Holdgate access review</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        ".bar{background:#4a7;height:1em;display:inline-block}"
        ".unused{color:#b30}td,th{padding:2px 8px;text-align:left}</style>",
        "<h1>Access review</h1>",
    ]
    for p in review.identities:
        parts.append(
            f"<h2>{html.escape(p.user)}</h2><p>groups: "
            f"{html.escape(', '.join(p.groups) or '-')}</p><table>"
        )
        parts.append("<tr><th>upstream/tool</th><th>granted by</th><th>use</th></tr>")
        for key in sorted(set(p.granted) | set(p.used)):
            u = p.used.get(key, Usage())
            width = int(200 * u.count / peak)
            css = ' class="unused"' if key in p.unused else ""
            parts.append(
                f"<tr{css}><td>{html.escape('/'.join(key))}</td>"
                f"<td>{html.escape(p.granted.get(key, '(not granted)'))}</td>"
                f"<td><span class=bar style='width:{width}px'></span> {u.count}</td></tr>"
            )
        parts.append("</table>")
        parts.append(
            f"<p>denials {p.denials}; approvals requested {p.approvals_requested}; "
            f"masked: {html.escape(json.dumps(p.masked))}; sessions {len(p.sessions)}; "
            f"clients: {html.escape(', '.join(sorted(p.clients)) or '-')}</p>"
        )
        parts.append(f"<pre>{html.escape(p.suggestion())}</pre>")
    return "\n".join(parts) + "\n"
