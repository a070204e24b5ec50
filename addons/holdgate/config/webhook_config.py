"""`approvals.webhook`: where a new approval is announced, and in which format.

    approvals:
      webhook: https://hooks.internal.example/holdgate       # generic JSON
      webhook:                                               # or a mapping
        url: "${env:HOLDGATE_SLACK_WEBHOOK}"
        format: slack                                        # json (default) or slack

A Slack incoming-webhook URL is itself the credential (whoever holds it posts to the
channel), and the config's text is stored with each version: a `slack` webhook's URL must
be a `${env:}`/`${file:}` reference, and a literal `hooks.slack.com` URL is refused in
either form. Errors about a referenced URL never quote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from holdgate.configfile import Node, is_loopback

WebhookFormat = Literal["json", "slack"]
FORMATS: tuple[WebhookFormat, ...] = ("json", "slack")
SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
NAME_IT = (
    'name it instead: url: "${env:HOLDGATE_SLACK_WEBHOOK}" or "${file:slack-webhook.txt}" '
    "(the config's text is stored with each version)"
)


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    format: WebhookFormat = "json"
    referenced: bool = False  # the URL came from ${env:}/${file:}: a secret, never recorded


def parse_webhook(node: Node, secrets: bool) -> WebhookConfig | None:
    """The webhook of `approvals.webhook` (a URL, or `{url, format}`), None when absent."""
    if node.missing:
        return None
    if isinstance(node.value, dict):
        node.mapping({"url", "format"}, required={"url"})
        url_node = node.child("url")
        form = node.child("format").choice(FORMATS, "json")
    else:
        url_node, form = node, "json"
    written = url_node.string()
    referenced = "${" in written
    if not referenced and _slack_host(written):
        raise url_node.error(
            "a Slack incoming-webhook URL is a secret (whoever holds it posts to your "
            f"channel); {NAME_IT}"
        )
    if form == "slack" and not referenced:
        raise url_node.error(f"a Slack webhook's URL is a secret; {NAME_IT}")
    url = url_node.secret(resolve=secrets) if referenced else written
    if secrets or not referenced:
        problem = _url_problem(url)
        if problem is not None:
            shown = "the URL it names" if referenced else repr(written)
            raise url_node.error(f"{problem} ({shown})")
    return WebhookConfig(url, form, referenced)  # type: ignore[arg-type]


def _slack_host(url: str) -> bool:
    host = (urlsplit(url.strip()).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in SLACK_HOSTS)


def _url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL, without quoting it (it may be a secret)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "not a URL with a valid port"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "expected an https:// URL, e.g. https://hooks.internal.example/holdgate"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return (
            "http:// would send approval requests unencrypted; use https:// (http:// is "
            "accepted only to a loopback address, for tests and development)"
        )
    if parts.username or parts.password:
        return "no user info in the URL"
    return None
