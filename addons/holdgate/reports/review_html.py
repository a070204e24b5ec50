"""The access review as one self-contained HTML page: nothing loaded from elsewhere,
readable on screen and printed on A4 (one identity per page), every value escaped.

Uses are drawn green, refusals red and apart from them; each identity gets an inline SVG
chart of its uses per day over the period.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from html import escape

from holdgate.escapes import inert
from holdgate.reports.decision_findings import WHY
from holdgate.reports.review_model import IdentityReview, Review
from holdgate.reports.review_render import header_lines, kinds_of, rows_of, target_name

STYLE = """
@page { size: A4; margin: 15mm; }
body { font: 10.5pt/1.4 system-ui, sans-serif; color: #111; max-width: 60em; margin: auto; }
h1 { font-size: 18pt; } h2 { font-size: 14pt; border-bottom: 1px solid #999; }
h3 { font-size: 11pt; margin-bottom: .2em; }
table { border-collapse: collapse; width: 100%; margin: .3em 0 .8em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eee; } td.n { text-align: right; }
.meta th { width: 12em; }
.use td:first-child { border-left: 4px solid #2a7; }
.denied td:first-child { border-left: 4px solid #c22; }
.denied th { background: #fbe3e3; } .denied .tag { color: #c22; font-weight: bold; }
.unused { color: #b30; }
.exceptions th { background: #fff0c2; }
dl.why dt { font-weight: bold; float: left; clear: left; width: 14em; }
dl.why dd { margin-left: 14em; }
.ok { color: #2a7; font-weight: bold; } .bad { color: #c22; font-weight: bold; }
section.identity { break-before: page; page-break-before: always; }
pre { background: #f4f4f4; padding: .5em; white-space: pre-wrap; }
@media print { body { max-width: none; } a { color: inherit; text-decoration: none; } }
"""


def _table(css: str, head: list[str], rows: list[list[str]]) -> str:
    """A table of already-escaped cells; numbers right-aligned by `n:` prefix."""
    out = [f'<table class="{css}"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = (
            f'<td class="n">{c[2:]}</td>' if c.startswith("n:") else f"<td>{c}</td>" for c in row
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _e(value: object) -> str:
    """A value as text: no markup, no bidi override or invisible character (`escapes.inert`)."""
    return escape(inert(str(value))) if value not in (None, "") else "-"


def render_html(review: Review) -> str:
    h = review.header
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>Holdgate access review {_e(h.period_start[:10])} .. "
        f"{_e(h.period_end[:10])}</title>",
        f"<style>{STYLE}</style><body>",
        "<h1>Access review</h1>",
    ]
    meta = []
    for key, value in header_lines(review):
        cell = _e(value)
        if key == "evidence":
            mark = "ok" if h.evidence.chain_ok and not h.evidence.problems else "bad"
            cell = f'<span class="{mark}">{"intact" if mark == "ok" else "PROBLEMS"}</span> {cell}'
        meta.append([_e(key), cell])
    parts.append(_table("meta", ["", ""], meta))
    parts.append(f'<h2 id="exceptions">Exceptions ({len(review.exceptions)})</h2>')
    if review.exceptions:
        parts.append(
            _table(
                "exceptions",
                ["when", "kind", "subject", "detail"],
                [[_e(f.ts), _e(f.kind), _e(f.subject), _e(f.detail)] for f in review.exceptions],
            )
        )
        parts.append(
            '<dl class="why">'
            + "".join(f"<dt>{_e(kind)}</dt><dd>{_e(WHY[kind])}</dd>" for kind in kinds_of(review))
            + "</dl>"
        )
    else:
        parts.append("<p>none</p>")
    if review.campaign is not None:
        c = review.campaign
        progress = ", ".join(f"{n} {s}" for s, n in c.progress().items())
        rows = []
        for item in c.items:
            rows.append(
                [
                    _e(item.item_id),
                    _e(item.user),
                    _e(f"{item.upstream} {item.target_kind} {item.target}"),
                    _e(item.rule),
                    _e(item.state),
                    _e(item.reviewer),
                    _e(item.decided_at),
                    _e(item.reason),
                ]
            )
            for attempt in item.refused:
                rows.append(
                    [
                        _e(item.item_id),
                        "",
                        "",
                        "",
                        '<span class="bad">refused attempt</span>',
                        _e(attempt["reviewer"]),
                        _e(attempt["ts"]),
                        _e(attempt["reason"]),
                    ]
                )
        parts.append(
            f'<h2 id="campaign">Certification campaign {_e(c.campaign_id)} '
            f"({_e(c.state)}; {_e(progress)})</h2>"
        )
        parts.append(
            _table(
                "campaign",
                ["item", "identity", "grant", "rule", "decision", "reviewer", "when", "reason"],
                rows,
            )
        )
    parts += [_identity_html(p, review) for p in review.identities]
    return "\n".join(parts) + "\n</body></html>\n"


def _identity_html(p: IdentityReview, review: Review) -> str:
    out = [
        f'<section class="identity"><h2>{_e(p.user)}</h2>',
        f"<p>groups (as seen in its credentials): {_e(', '.join(sorted(p.groups)))}<br>",
        f"sessions: {len(p.sessions)}; clients: {_e(', '.join(sorted(p.clients)))}</p>",
        _chart(p, review.header.period_start, review.header.period_end),
        "<h3>Grants and use</h3>",
    ]
    rows = []
    for target, rule, usage, _ in rows_of(p):
        if rule is None and not usage.calls:
            continue
        name = _e(target_name(target))
        if target in p.unused:
            name = f'<span class="unused">{name} (unused)</span>'
        rows.append(
            [
                name,
                _e(rule or "(not granted)"),
                f"n:{usage.calls}",
                f"n:{len(usage.sessions)}",
                _e(usage.first),
                _e(usage.last),
            ]
        )
    out.append(_table("use", ["grant", "granted by", "calls", "sessions", "first", "last"], rows))
    out.append(f"<h3>Denials ({p.denial_count} refused calls)</h3>")
    if p.denials:
        out.append(
            _table(
                "denied",
                ["refused", "rule", "calls", "first", "last", "reason"],
                [
                    [
                        f'<span class="tag">REFUSED</span> {_e(target_name(d.target))}',
                        _e(d.rule),
                        f"n:{d.count}",
                        _e(d.first),
                        _e(d.last),
                        _e(d.reason),
                    ]
                    for d in sorted(p.denials.values(), key=lambda d: (d.rule, d.target))
                ],
            )
        )
    else:
        out.append("<p>none</p>")
    out.append(f"<h3>Approvals ({len(p.approvals)} requested)</h3>")
    if p.approvals:
        out.append(
            _table(
                "approvals",
                ["approval", "tool", "state", "by", "when", "reason"],
                [
                    [
                        _e(a.approval_id),
                        _e(a.tool),
                        _e(a.state),
                        _e(a.decided_by),
                        _e(a.decided_at),
                        _e(a.reason),
                    ]
                    for a in p.approvals
                ],
            )
        )
    else:
        out.append("<p>none</p>")
    out.append("<h3>Masked exposures</h3>")
    if p.masked:
        out.append(
            _table(
                "masked",
                ["target", "detector", "values masked"],
                [[_e(t), _e(d), f"n:{n}"] for (t, d), n in sorted(p.masked.items())],
            )
        )
    else:
        out.append("<p>none</p>")
    if p.unused:
        out.append(
            '<p class="unused"><b>Unused grants</b> (granted, never used): '
            + _e(", ".join(target_name(t) for t in p.unused))
            + "</p>"
        )
    if p.delegated:
        out.append("<h3>Upstream credentials</h3>")
        out.append(
            _table(
                "delegated",
                ["upstream", "seen as", "audience", "credential", "calls"],
                [
                    [_e(d.upstream), _e(d.subject), _e(d.audience), _e(d.mode), f"n:{calls}"]
                    for d, calls in sorted(p.delegated.items())
                ],
            )
        )
    out.append(f"<h3>Least-privilege suggestion</h3><pre>{escape(p.suggestion())}</pre>")
    return "".join(out) + "</section>"


def _day(text: str) -> date | None:
    try:
        return datetime.fromisoformat(text[:10]).replace(tzinfo=UTC).date()
    except ValueError:
        return None


def _chart(p: IdentityReview, start: str, end: str) -> str:
    """Uses per day across the period, as bars (weeks when the period is long)."""
    first, last = _day(start), _day(end)
    if first is None or last is None or last < first:
        return ""
    span = (last - first).days + 1
    width = 7 if span > 120 else 1
    buckets = [0] * (span // width + 1)
    for day, n in p.days.items():
        when = _day(day)
        if when is not None and first <= when <= last:
            buckets[(when - first).days // width] += n
    peak = max(buckets) or 1
    bar = 560 / len(buckets)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{60 - 56 * n / peak:.1f}" width="{max(bar - 1, 0.5):.1f}" '
        f'height="{56 * n / peak:.1f}">'
        f"<title>{first + timedelta(days=i * width)}: {n}</title></rect>"
        for i, n in enumerate(buckets)
        if n
    )
    unit = "week" if width == 7 else "day"
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="560" height="74" '
        f'role="img" aria-label="uses per {unit}"><g fill="#2a7">{rects}</g>'
        '<line x1="0" y1="60.5" x2="560" y2="60.5" stroke="#999"/>'
        f'<text x="0" y="72" font-size="9">{first}</text>'
        f'<text x="560" y="72" font-size="9" text-anchor="end">{last}</text></svg>'
        f"<figcaption>uses per {unit}, peak {peak}</figcaption></figure>"
    )
