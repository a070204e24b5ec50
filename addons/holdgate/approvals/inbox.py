"""The approval inbox: the page on the admin listener where people decide approvals.

Pure parts, free of the listener: who may decide what (`to_decide`, `own_requests`), the
page (`inbox_page`, everything shown passed through `html.escape`), and the two checks a
form post must pass before it decides anything:

- a CSRF token bound to the person as authenticated (`csrf_token`: an HMAC, with the
  store's digest key, of how they authenticated, who they are and an expiry), so a form
  made on another site, or for another person, is refused;
- a same-origin check (`cross_origin_problem`): `Sec-Fetch-Site: same-origin`, or an
  `Origin` naming the inbox's own origin. The page is sent with `Referrer-Policy:
  no-referrer`, under which a browser sends `Origin: null` with a form post; browsers send
  `Sec-Fetch-Site` to https and loopback origins, which is why the inbox is served there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from holdgate.escapes import inert
from holdgate.identity import Identity
from holdgate.store.approval_records import approver_groups
from holdgate.store.rows import parse_iso

# A form stays good for a working session; a person whose page is older reloads it.
CSRF_SECONDS = 4 * 3600
MAX_REASON = 1000
MAX_OWN_REQUESTS = 50
APPROVAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
DECISIONS = {"approve": "approved", "deny": "denied"}
FETCH_SITES = ("cross-site", "same-site", "same-origin", "none")  # echoed only from this list

_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;"
    "color:#1b1b1b}"
    "h1{font-size:1.5rem}h2{font-size:1.2rem;border-bottom:1px solid #ccc;padding-bottom:.2rem}"
    "article{border:1px solid #ccc;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.5rem 0}"
    "dt{font-weight:600}dd{margin:0}"
    "pre{background:#f4f4f4;padding:.6rem;overflow:auto;white-space:pre-wrap}"
    "textarea{width:100%;box-sizing:border-box;min-height:3rem}"
    "button{margin:.5rem .5rem 0 0;padding:.3rem 1rem}"
    "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;"
    "padding:.3rem;text-align:left;vertical-align:top}"
    ".notice{background:#eef6ee;border:1px solid #9c9;padding:.5rem 1rem}"
    ".problem{background:#fbeeee;border:1px solid #c99;padding:.5rem 1rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

# Nothing from elsewhere, no script at all, the one stylesheet by its hash; never framed,
# cached or named as a referrer.
PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "Content-Security-Policy",
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


@dataclass(frozen=True)
class Viewer:
    """The person looking at the inbox, as authenticated, and how (`decided_as`'s keys)."""

    user: str
    groups: tuple[str, ...]
    how: Mapping[str, str]

    @property
    def subject(self) -> str:
        """What a CSRF token is bound to: the person and the way they authenticated."""
        return json.dumps([self.user, dict(sorted(self.how.items()))], ensure_ascii=True)


def viewer_of(identity: Identity, trusted_header: str | None) -> Viewer:
    """The viewer of an authenticated admin caller; `trusted_header` names the admin
    listener's trusted user header (the `decided_as` of a decision through a proxy)."""
    how: dict[str, str]
    if identity.method == "oidc":
        how = {"via": "jwt", "issuer": identity.issuer or ""}
    elif identity.method == "api_key":
        how = {"via": "api_key", "key": identity.name or identity.user}
    elif identity.method == "trusted_header":
        how = {"via": "trusted_header", "header": trusted_header or ""}
    else:
        how = {"via": identity.method}
    return Viewer(identity.user, identity.groups, how)


def csrf_token(key: bytes, viewer: Viewer, now: float) -> str:
    """A form's token: its expiry and an HMAC of the viewer's subject and that expiry."""
    expires = int(now) + CSRF_SECONDS
    return f"{expires}.{_csrf_mac(key, viewer, expires)}"


def csrf_problem(key: bytes, viewer: Viewer, token: str | None, now: float) -> str | None:
    """Why a form's token does not hold for this viewer now; None when it does."""
    if not token:
        return "the form carried no CSRF token"
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or not mac:
        return "the form's CSRF token is malformed"
    expected = _csrf_mac(key, viewer, int(expires_text))
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return "the form's CSRF token was not made for you"
    if now >= int(expires_text):
        return "the form is older than 4 hours; reload the inbox and decide again"
    return None


def _csrf_mac(key: bytes, viewer: Viewer, expires: int) -> str:
    material = f"inbox-csrf\n{viewer.subject}\n{expires}".encode()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def cross_origin_problem(
    headers: Mapping[str, Sequence[str]], public_url: str | None
) -> str | None:
    """Why a form post may come from another site; None when the browser says it came from
    the inbox's own origin (the Host it was sent to, or `approvals.public_url`)."""
    fetch_site = _one(headers, "sec-fetch-site")
    if fetch_site is not None:
        if fetch_site == "same-origin":
            return None
        said = fetch_site if fetch_site in FETCH_SITES else "an unknown value"
        return f"the browser says the form came from another site (Sec-Fetch-Site: {said})"
    origin = _one(headers, "origin")
    if origin is None or origin == "null":
        return (
            "the post names no origin (no Sec-Fetch-Site, Origin missing or null): open the "
            "inbox over https or on a loopback address, through the auth proxy; scripts "
            "decide through POST /approvals/ID/approve|deny"
        )
    allowed = {
        f"{scheme}://{host}" for host in headers.get("host", [])[:1] for scheme in ("http", "https")
    }
    if public_url:
        parts = urlsplit(public_url)
        allowed.add(f"{parts.scheme}://{parts.netloc}")
    if origin.rstrip("/") in allowed:
        return None
    return "the form came from another origin"


def _one(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = headers.get(name, [])
    return values[0].strip() if len(values) == 1 else None


@dataclass(frozen=True)
class DecisionForm:
    """A decision posted from the inbox."""

    decision: str  # "approved" or "denied"
    reason: str | None
    csrf: str | None


class FormError(ValueError):
    """A form post the inbox cannot read; the message says what was wrong."""


def parse_decision_form(content_type: str | None, body: bytes) -> DecisionForm:
    """The fields of a decision form; FormError for anything else."""
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise FormError("expected a form post (application/x-www-form-urlencoded)")
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise FormError("the form is not valid UTF-8 form encoding") from None
    if any(len(values) != 1 for values in fields.values()):
        raise FormError("each form field may appear once")
    if set(fields) - {"csrf", "decision", "reason"}:
        raise FormError("the form has fields other than csrf, decision and reason")
    decision = DECISIONS.get(fields.get("decision", [""])[0])
    if decision is None:
        raise FormError("decision must be approve or deny")
    reason = fields.get("reason", [""])[0].strip()
    if len(reason) > MAX_REASON:
        raise FormError(f"the reason is longer than {MAX_REASON} characters")
    return DecisionForm(decision, reason or None, fields.get("csrf", [None])[0])


def decidable_by(row: Mapping[str, Any], viewer: Viewer, now: float) -> bool:
    """A pending approval this viewer may decide now: in its approver groups, not its
    requester (separation of duties), not past its expiry."""
    if row.get("state") != "pending" or row.get("requester") == viewer.user:
        return False
    if not approver_groups(row) & set(viewer.groups):
        return False
    expires = row.get("expires")
    return not (expires and now >= parse_iso(str(expires)))


def to_decide(
    rows: Iterable[Mapping[str, Any]], viewer: Viewer, now: float
) -> list[Mapping[str, Any]]:
    """The pending approvals the viewer may decide, the soonest to expire first."""
    mine = [row for row in rows if decidable_by(row, viewer, now)]
    return sorted(mine, key=lambda row: str(row.get("expires") or ""))


def own_requests(rows: Iterable[Mapping[str, Any]], viewer: Viewer) -> list[Mapping[str, Any]]:
    """The viewer's own requests, newest first, at most MAX_OWN_REQUESTS."""
    mine = [row for row in rows if row.get("requester") == viewer.user]
    return list(reversed(mine))[:MAX_OWN_REQUESTS]


def _e(value: Any) -> str:
    """A value on the page as text: no markup, and no bidi override or invisible format
    character reordering or hiding what the approver reads (`escapes.inert`)."""
    return html.escape(inert("" if value is None else str(value)), quote=True)


def _arguments(row: Mapping[str, Any]) -> str:
    """The masked arguments as stored (the store never holds them unmasked), indented."""
    try:
        value = json.loads(row.get("args_masked") or "null")
    except (TypeError, json.JSONDecodeError):
        return "(unreadable)"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _changes(row: Mapping[str, Any]) -> str:
    raw = row.get("changes")
    if raw is None:
        return "no earlier approved call of this tool to compare with"
    try:
        changes = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return "(unreadable)"
    if not isinstance(changes, list) or not changes:
        return "nothing: the same arguments as the last approved call"
    return ", ".join(str(c) for c in changes)


def _entry(row: Mapping[str, Any], token: str) -> str:
    approval_id = _e(row["approval_id"])
    groups = ", ".join(sorted(approver_groups(row)))
    target = row.get("tool") or row.get("method")
    return f"""<article class="approval" id="{approval_id}">
<h3>{_e(target)} on {_e(row.get("upstream"))}</h3>
<dl>
<dt>Approval</dt><dd>{approval_id}</dd>
<dt>Requested by</dt><dd class="requester">{_e(row.get("requester"))}</dd>
<dt>Method</dt><dd>{_e(row.get("method"))}</dd>
<dt>Rule</dt><dd>{_e(row.get("rule"))}</dd>
<dt>Approver groups</dt><dd>{_e(groups)}</dd>
<dt>Asked</dt><dd>{_e(row.get("created"))}</dd>
<dt>Expires</dt><dd>{_e(row.get("expires"))}</dd>
<dt>Changed since the last approved call</dt><dd>{_e(_changes(row))}</dd>
</dl>
<p>Arguments (masked):</p>
<pre class="arguments">{_e(_arguments(row))}</pre>
<form method="post" action="inbox/{approval_id}">
<input type="hidden" name="csrf" value="{_e(token)}">
<label>Reason <textarea name="reason" maxlength="{MAX_REASON}"></textarea></label>
<button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>
</article>"""


def _own_row(row: Mapping[str, Any]) -> str:
    return (
        f'<tr id="own-{_e(row["approval_id"])}"><td>{_e(row["approval_id"])}</td>'
        f"<td>{_e(row.get('tool') or row.get('method'))} on {_e(row.get('upstream'))}</td>"
        f'<td class="state">{_e(row.get("state"))}</td><td>{_e(row.get("decider"))}</td>'
        f"<td>{_e(row.get('reason'))}</td><td>{_e(row.get('expires'))}</td></tr>"
    )


def _document(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="referrer" content="no-referrer">
<style>{_STYLE}</style></head>
<body>
{body}
</body></html>
"""


def inbox_page(
    pending: Sequence[Mapping[str, Any]],
    own: Sequence[Mapping[str, Any]],
    viewer: Viewer,
    token: str,
    notice: str | None = None,
) -> str:
    """The inbox: what the viewer may decide, with a form each, and their own requests."""
    groups = ", ".join(viewer.groups) or "none"
    parts = [
        "<h1>Holdgate approvals</h1>",
        f'<p class="viewer">Signed in as <b id="user">{_e(viewer.user)}</b> '
        f"(groups: {_e(groups)}).</p>",
    ]
    if notice:
        parts.append(f'<p class="notice" id="notice">{_e(notice)}</p>')
    parts.append(f'<section id="to-decide"><h2>Waiting for you ({len(pending)})</h2>')
    if pending:
        parts.extend(_entry(row, token) for row in pending)
    else:
        parts.append("<p>Nothing waits for your decision.</p>")
    parts.append("</section>")
    parts.append(f'<section id="own"><h2>Your requests ({len(own)})</h2>')
    if own:
        parts.append(
            "<table><thead><tr><th>Approval</th><th>Call</th><th>State</th><th>Decided by</th>"
            "<th>Reason</th><th>Expires</th></tr></thead><tbody>"
        )
        parts.extend(_own_row(row) for row in own)
        parts.append("</tbody></table>")
    else:
        parts.append("<p>You have asked for no approval.</p>")
    parts.append("</section>")
    return _document("Holdgate approvals", "\n".join(parts))


def problem_page(title: str, message: str, back: str = "../inbox") -> str:
    """A refusal a person reads: what was wrong, and the way back to the inbox."""
    body = (
        f'<h1>{_e(title)}</h1>\n<p class="problem" id="problem">{_e(message)}</p>\n'
        f'<p><a href="{_e(back)}">Back to the inbox</a></p>'
    )
    return _document(title, body)
