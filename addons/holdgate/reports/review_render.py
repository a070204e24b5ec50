"""The access review as Markdown, CSV and JSON (HTML: `review_html.py`).

Every value that came from a client, an upstream or a reviewer (names, reasons) is
inert in its format: in Markdown a code span (no link, image, HTML or emphasis; one line,
so no new block; `|` escaped in tables), and CSV cells cannot start a spreadsheet formula.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from holdgate.reports.decision_findings import WHY
from holdgate.reports.review_model import IdentityReview, Review, Target, Usage

CSV_FIELDS = (
    "user",
    "groups",
    "upstream",
    "kind",
    "target",
    "granted_by",
    "calls",
    "denied",
    "first",
    "last",
    "sessions_used",
    "unused_grant",
    "sessions",
    "clients",
)


_BACKTICKS = re.compile(r"`+")


def md(value: object, *, cell: bool = True) -> str:
    """`value` as Markdown that shows it as text: a code span, whose content is never syntax
    (links, images, HTML, emphasis), fenced by more backticks than the longest run in it
    and padded with a space (stripped again by renderers), on one line so nothing in it
    starts a block. In a table `cell`, `|` is escaped: GFM splits cells on it first."""
    if value in (None, ""):
        return "-"
    text = " ".join(str(value).split())
    fence = "`" * (1 + max((len(run) for run in _BACKTICKS.findall(text)), default=0))
    if cell:
        text = text.replace("|", "\\|")
    return f"{fence} {text} {fence}"


# Characters a terminal acts on or that reorder what it shows: C0/C1 controls (ESC starts
# sequences that move the cursor, set hyperlinks or the clipboard), DEL, line and paragraph
# separators, and bidirectional overrides and isolates.
_TERMINAL_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_text(value: object) -> str:
    """`value` for a line of text output: what a terminal would act on is shown escaped."""
    return _TERMINAL_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(value))


def target_name(target: Target) -> str:
    upstream, kind, name = target
    return f"{upstream or '-'} {kind} {name}"


def rows_of(person: IdentityReview) -> list[tuple[Target, str | None, Usage, int]]:
    """(target, granted by, usage, denied calls) for everything granted, used or refused."""
    denied: dict[Target, int] = {}
    for denial in person.denials.values():
        denied[denial.target] = denied.get(denial.target, 0) + denial.count
    keys = sorted(set(person.granted) | set(person.used) | set(denied))
    return [(k, person.granted.get(k), person.used.get(k, Usage()), denied.get(k, 0)) for k in keys]


def kinds_of(review: Review) -> list[str]:
    """The kinds of exception the review has, in the order `WHY` explains them."""
    found = {f.kind for f in review.exceptions}
    return [kind for kind in WHY if kind in found]


def header_lines(review: Review) -> list[tuple[str, str]]:
    h = review.header
    versions = "; ".join(
        f"{v['config_hash'][:12]} from {v['ts']} ({v['source'] or '-'})" for v in h.config_versions
    )
    return [
        ("period", f"{h.period_start} .. {h.period_end}"),
        ("generated", f"{h.generated_at} by {h.generated_by}"),
        ("store", h.store),
        ("policy", h.config_file),
        ("evidence", f"{h.evidence.chain}; {h.evidence.checkpoints}"),
        ("config versions in force", versions or "none recorded in the period"),
    ]


def render_markdown(review: Review) -> str:
    out = ["# Access review", "", "| | |", "|---|---|"]
    out += [f"| {k} | {md(v)} |" for k, v in header_lines(review)]
    out += ["", f"## Exceptions ({len(review.exceptions)})", ""]
    if review.exceptions:
        out += ["| when | kind | subject | detail |", "|---|---|---|---|"]
        out += [
            f"| {md(f.ts)} | {md(f.kind)} | {md(f.subject)} | {md(f.detail)} |"
            for f in review.exceptions
        ]
        out += ["", "Why each kind matters:", ""]
        out += [f"- {md(kind, cell=False)}: {WHY[kind]}" for kind in kinds_of(review)]
    else:
        out.append("none")
    if review.campaign is not None:
        c = review.campaign
        progress = ", ".join(f"{n} {s}" for s, n in c.progress().items())
        out += [
            "",
            f"## Certification campaign {md(c.campaign_id, cell=False)} ({c.state}; {progress})",
            "",
            "| item | identity | grant | rule | decision | reviewer | when | reason |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for item in c.items:
            grant = f"{item.upstream} {item.target_kind} {item.target}"
            out.append(
                f"| {md(item.item_id)} | {md(item.user)} | {md(grant)} | {md(item.rule)} | "
                f"{md(item.state)} | {md(item.reviewer)} | {md(item.decided_at)} | "
                f"{md(item.reason)} |"
            )
            for attempt in item.refused:
                out.append(
                    f"| {md(item.item_id)} | | | | refused attempt | {md(attempt['reviewer'])} | "
                    f"{md(attempt['ts'])} | {md(attempt['reason'])} |"
                )
    for p in review.identities:
        out += _identity_markdown(p)
    return "\n".join(out) + "\n"


def _identity_markdown(p: IdentityReview) -> list[str]:
    out = [
        "",
        f"## {md(p.user, cell=False)}",
        "",
        f"groups (as seen in its credentials): {md(', '.join(sorted(p.groups)), cell=False)}",
        f"sessions: {len(p.sessions)}; clients: {md(', '.join(sorted(p.clients)), cell=False)}",
        "",
        "### Grants and use",
        "",
        "| grant | granted by | calls | sessions | first | last |",
        "|---|---|---|---|---|---|",
    ]
    for target, rule, usage, _ in rows_of(p):
        if rule is None and not usage.calls:
            continue
        out.append(
            f"| {md(target_name(target))} | {md(rule or '(not granted)')} | {usage.calls} | "
            f"{len(usage.sessions)} | {md(usage.first)} | {md(usage.last)} |"
        )
    out += ["", f"### Denials ({p.denial_count} refused calls)", ""]
    if p.denials:
        out += ["| REFUSED | rule | calls | first | last | reason |", "|---|---|---|---|---|---|"]
        for d in sorted(p.denials.values(), key=lambda d: (d.rule, d.target)):
            out.append(
                f"| {md(target_name(d.target))} | {md(d.rule)} | {d.count} | {md(d.first)} | "
                f"{md(d.last)} | {md(d.reason)} |"
            )
    else:
        out.append("none")
    out += ["", f"### Approvals ({len(p.approvals)} requested)", ""]
    if p.approvals:
        out += ["| approval | tool | state | by | when | reason |", "|---|---|---|---|---|---|"]
        for a in p.approvals:
            out.append(
                f"| {md(a.approval_id)} | {md(a.tool)} | {md(a.state)} | {md(a.decided_by)} | "
                f"{md(a.decided_at)} | {md(a.reason)} |"
            )
    else:
        out.append("none")
    totals: dict[str, int] = {}
    for (_, detector), n in p.masked.items():
        totals[detector] = totals.get(detector, 0) + n
    out += [
        "",
        # detector names are the config's (profiles), never a caller's
        "masked exposures: " + (", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "none"),
    ]
    if p.masked:
        out += ["", "| target | detector | values masked |", "|---|---|---|"]
        out += [f"| {md(t)} | {md(d)} | {n} |" for (t, d), n in sorted(p.masked.items())]
    out += _delegated_markdown(p)
    if p.unused:
        out += [
            "",
            "**Unused grants** (granted, never used): "
            + ", ".join(md(target_name(t), cell=False) for t in p.unused),
        ]
    suggestion = p.suggestion()
    # a fence longer than any run of backticks in the block: nothing in it can close it
    fence = "`" * max(3, 1 + max((len(r) for r in _BACKTICKS.findall(suggestion)), default=0))
    out += ["", "Least-privilege suggestion:", "", f"{fence}yaml", suggestion, fence]
    return out


def _delegated_markdown(p: IdentityReview) -> list[str]:
    """Per upstream, whom it saw calling for this identity (per-user credentials)."""
    if not p.delegated:
        return []
    out = [
        "",
        "### Upstream credentials",
        "",
        "| upstream | seen as | audience | credential | calls |",
        "|---|---|---|---|---|",
    ]
    for d, calls in sorted(p.delegated.items()):
        out.append(
            f"| {md(d.upstream)} | {md(d.subject)} | {md(d.audience)} | {md(d.mode)} | {calls} |"
        )
    return out


def delegated_json(p: IdentityReview) -> list[dict[str, Any]]:
    return [
        {
            "upstream": d.upstream,
            "mode": d.mode,
            "subject": d.subject,
            "audience": d.audience,
            "calls": calls,
        }
        for d, calls in sorted(p.delegated.items())
    ]


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render_csv(review: Review) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    for p in review.identities:
        for target, rule, usage, denied in rows_of(p):
            line = [
                p.user,
                " ".join(sorted(p.groups)),
                target[0],
                target[1],
                target[2],
                rule or "",
                usage.calls,
                denied,
                usage.first,
                usage.last,
                len(usage.sessions),
                target in p.unused,
                len(p.sessions),
                " | ".join(sorted(p.clients)),
            ]
            writer.writerow([csv_cell(v) for v in line])
    return buffer.getvalue()


def review_json(review: Review) -> dict[str, Any]:
    h = review.header
    return {
        "header": {
            "period_start": h.period_start,
            "period_end": h.period_end,
            "generated_at": h.generated_at,
            "generated_by": h.generated_by,
            "store": h.store,
            "policy": h.config_file,
            "evidence": {
                "chain_ok": h.evidence.chain_ok,
                "chain": h.evidence.chain,
                "checkpoints": h.evidence.checkpoints,
                "problems": list(h.evidence.problems),
            },
            "config_versions": list(h.config_versions),
        },
        "exceptions": [{**vars(f), "why": WHY[f.kind]} for f in review.exceptions],
        "campaign": review.campaign.to_json() if review.campaign else None,
        "identities": [
            {
                "user": p.user,
                "groups": sorted(p.groups),
                "sessions": len(p.sessions),
                "clients": sorted(p.clients),
                "grants": [
                    {"upstream": t[0], "kind": t[1], "target": t[2], "rule": r}
                    for t, r in sorted(p.granted.items())
                ],
                "use": [
                    {"upstream": t[0], "kind": t[1], "target": t[2], **u.to_json()}
                    for t, u in sorted(p.used.items())
                ],
                "denials": [
                    {
                        "upstream": d.target[0],
                        "kind": d.target[1],
                        "target": d.target[2],
                        "rule": d.rule,
                        "reason": d.reason,
                        "count": d.count,
                        "first": d.first,
                        "last": d.last,
                    }
                    for d in p.denials.values()
                ],
                "approvals": [vars(a) for a in p.approvals],
                "masked": [
                    {"target": t, "detector": d, "count": n}
                    for (t, d), n in sorted(p.masked.items())
                ],
                "unused_grants": [
                    {"upstream": t[0], "kind": t[1], "target": t[2]} for t in p.unused
                ],
                "suggestion": p.suggestion(),
                "suggested_rules": p.suggested,
                "upstream_credentials": delegated_json(p),
            }
            for p in review.identities
        ],
    }


def render_json(review: Review) -> str:
    return json.dumps(review_json(review), indent=2, ensure_ascii=False) + "\n"
