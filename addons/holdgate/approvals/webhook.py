"""The webhook notice of a new approval (`approvals.webhook`): built from the approval's
row as generic JSON or as a Slack incoming-webhook message, POSTed with retries and
backoff, off the event loop; it never holds up the call.

The URL may be a secret (a Slack webhook's is): it is never logged, a failure names only
the host, and redirects are not followed (a 3xx is a failure).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from holdgate.config.webhook_config import WebhookFormat
from holdgate.escapes import inert

logger = logging.getLogger("holdgate")

WEBHOOK_ATTEMPTS = 4
MAX_SLACK_ARGUMENTS = 2500  # characters of masked arguments in a Slack message


def inbox_link(base: str, approval_id: str) -> str:
    """Where a person decides this approval: its entry in the inbox."""
    return f"{base.rstrip('/')}/inbox#{approval_id}"


def approval_notice(row: dict[str, Any], base: str) -> dict[str, Any]:
    """What the webhook is told of a pending approval; `base` is where the API answers."""
    return {
        "type": "approval_requested",
        "approval_id": row["approval_id"],
        "requester": row["requester"],
        "upstream": row["upstream"],
        "tool": row["tool"],
        "rule": row["rule"],
        "approvers": json.loads(row["approvers"]),
        "arguments": json.loads(row["args_masked"]),
        "expires": row["expires"],
        "link": f"{base.rstrip('/')}/approvals/{row['approval_id']}",
        "inbox": inbox_link(base, row["approval_id"]),
    }


def mrkdwn(text: str) -> str:
    """Text inert in Slack's mrkdwn: `&`, `<` and `>` escaped as Slack asks, so no value
    becomes a link, a mention (`<!channel>`) or a user reference; no character that drives
    a screen (`escapes.inert`: a newline in a single-line value could forge a line of the
    message, a bidi override reverse it); and a backtick as its JSON escape, so no value
    ends the arguments' code block or opens one over the rest of the message."""
    text = inert(text).replace("`", "\\u0060")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn_line(text: str) -> str:
    """A value shown within a line (a name): `mrkdwn`, its tabs and newlines escaped too."""
    return mrkdwn(inert(text, layout=frozenset()))


def slack_message(row: dict[str, Any], base: str) -> dict[str, Any]:
    """A Slack incoming-webhook message: who asks for what, the masked arguments, when it
    expires, and a link to the inbox entry."""
    arguments = json.dumps(json.loads(row["args_masked"]), indent=2, ensure_ascii=False)
    if len(arguments) > MAX_SLACK_ARGUMENTS:
        arguments = arguments[:MAX_SLACK_ARGUMENTS] + "\n… (cut; the inbox shows them all)"
    approvers = ", ".join(json.loads(row["approvers"]))
    target = row.get("tool") or row.get("method") or ""
    link = inbox_link(base, row["approval_id"])
    text = (
        f"*Approval requested* by {mrkdwn_line(str(row['requester']))}: "
        f"{mrkdwn_line(str(target))} on {mrkdwn_line(str(row['upstream']))}\n"
        f"Rule: {mrkdwn_line(str(row['rule']))} (approvers: {mrkdwn_line(approvers)})\n"
        f"Expires: {mrkdwn_line(str(row['expires']))}\n"
        f"Arguments (masked):\n```{mrkdwn(arguments)}```\n"
        f"<{mrkdwn(link)}|Decide in the inbox>"
    )
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in the inbox"},
                        "url": link,
                    }
                ],
            },
        ],
    }


def webhook_body(form: WebhookFormat, row: dict[str, Any], base: str) -> dict[str, Any]:
    """The body the configured format asks for."""
    return slack_message(row, base) if form == "slack" else approval_notice(row, base)


async def notify(url: str, body: dict[str, Any], approval_id: str) -> None:
    """POST the body, retrying with backoff; a failure is logged (host only), never raised."""
    data = json.dumps(body).encode()
    host = urlsplit(url).hostname or "?"
    for attempt in range(WEBHOOK_ATTEMPTS):
        try:
            await asyncio.to_thread(_post_json, url, data)
            return
        except (OSError, ValueError, http.client.HTTPException) as exc:
            logger.warning(
                "holdgate: approval webhook to %s, attempt %d failed: %s",
                host,
                attempt + 1,
                _failure(exc, url),
            )
            await asyncio.sleep(0.5 * 2**attempt)
    logger.error("holdgate: approval webhook to %s gave up on approval %s", host, approval_id)


def _failure(exc: BaseException, url: str) -> str:
    """The failure without the URL (its path may be the secret)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = f"{type(exc).__name__}: {exc}"
    path = urlsplit(url).path
    for secret in (url, path if len(path) > 1 else ""):
        if secret:
            text = text.replace(secret, "[webhook URL]")
    return text


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _post_json(url: str, data: bytes) -> None:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with _OPENER.open(req, timeout=5) as response:
        response.read()
