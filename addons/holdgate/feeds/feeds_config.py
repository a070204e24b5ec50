"""The `feeds:` section: live audit feeds the gateway sends the store's rows to.

    feeds:
      - name: siem
        webhook: https://siem.example/holdgate    # http:// only to a loopback address
        secret: "${env:HOLDGATE_FEED_SECRET}"     # HMAC-SHA256 key of each body
        batch: 100                                # rows per POST (default 100)
        timeout: 5s                               # per POST (default 5s)
      - name: syslog
        syslog: tcp://127.0.0.1:6514              # or udp://HOST:PORT; RFC 5424

The secret must be a `${env:…}` or `${file:…}` reference: the config text is stored with
each config version, so a secret written into it would reach the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from holdgate.configfile import Node, Problems, is_loopback, keys_then

FEED_KEYS = {"name", "webhook", "syslog", "secret", "batch", "timeout"}
MAX_BATCH = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class FeedConfig:
    """One feed. `secret` is None for syslog, or when the config was read without secrets."""

    name: str
    kind: Literal["webhook", "syslog"]
    target: str  # the webhook URL, or "tcp://host:port" / "udp://host:port"
    host: str = ""
    port: int = 0
    transport: Literal["http", "https", "tcp", "udp"] = "https"
    batch: int = 100
    timeout: float = 5.0
    secret: str | None = field(default=None, repr=False)

    @property
    def shown_target(self) -> str:
        """The target as logs and messages show it (no user info, query or fragment)."""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = urlsplit(self.target).path if self.kind == "webhook" else ""
        return f"{self.transport}://{host}{port}{path}"


def parse_feeds(node: Node, problems: Problems, secrets: bool = True) -> tuple[FeedConfig, ...]:
    """Every feed that parsed; each one's mistakes are recorded in `problems`."""
    if node.missing:
        return ()
    feeds: list[FeedConfig] = []
    names: set[str] = set()
    for item in problems.elements(node):
        feed = problems.attempt(_parse_feed, item, secrets)
        if feed is None:
            continue
        if feed.name in names:
            problems.add(item.child("name").error(f"a second feed named {feed.name!r}"))
            continue
        names.add(feed.name)
        feeds.append(feed)
    return tuple(feeds)


def _parse_feed(node: Node, secrets: bool) -> FeedConfig:
    return keys_then(node, FEED_KEYS, {"name"}, lambda: _feed_fields(node, secrets))


def _feed_fields(node: Node, secrets: bool) -> FeedConfig:
    name_node = node.child("name")
    name = name_node.string()
    if not _NAME.match(name):
        raise name_node.error(
            "letters, digits, '.', '_' and '-' (at most 64), e.g. siem: the name keys the "
            "feed's cursor in the store"
        )
    has_webhook, has_syslog = node.has("webhook"), node.has("syslog")
    if has_webhook == has_syslog:
        raise node.error(
            "give each feed exactly one of `webhook: URL` or `syslog: tcp://HOST:PORT`"
        )
    batch_node = node.child("batch")
    batch = 100 if batch_node.missing else batch_node.value
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise batch_node.error(f"expected a number of rows from 1 to {MAX_BATCH}, e.g. 100")
    timeout = node.child("timeout").duration(default=5.0)
    if not 0 < timeout <= 300:
        raise node.child("timeout").error("expected a duration from 1ms to 300s, e.g. 5s")
    if has_syslog:
        if node.has("secret"):
            raise node.child("secret").error("syslog feeds are not signed; remove `secret`")
        transport, host, port = _parse_syslog(node.child("syslog"))
        return FeedConfig(
            name, "syslog", f"{transport}://{host}:{port}", host, port, transport, batch, timeout
        )
    url_node = node.child("webhook")
    url = url_node.string()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise url_node.error(
            f"expected an https:// URL, e.g. https://siem.example/holdgate; got {url!r}"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise url_node.error("the URL's port is not a number from 1 to 65535") from None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise url_node.error(
            f"http:// sends the audit trail unencrypted; use https:// for {parts.hostname} "
            "(http:// is accepted only to a loopback address, for tests and development)"
        )
    if parts.username or parts.password:
        raise url_node.error("no user info in the URL: the body is signed with `secret`")
    secret_node = node.child("secret")
    if secret_node.missing:
        raise node.error(
            "missing required key 'secret': the HMAC-SHA256 key the receiver checks each "
            'body with, e.g. secret: "${env:HOLDGATE_FEED_SECRET}"'
        )
    if "${" not in secret_node.string():
        raise secret_node.error(
            'name the secret, do not write it here: secret: "${env:HOLDGATE_FEED_SECRET}" or '
            '"${file:feed-secret.txt}" (the config text is stored with each version)'
        )
    secret = secret_node.secret() if secrets else None
    if secret is not None and len(secret) < 16:
        raise secret_node.error("the secret has fewer than 16 characters; use a random one")
    return FeedConfig(
        name,
        "webhook",
        url,
        parts.hostname,
        port,
        "https" if parts.scheme == "https" else "http",
        batch,
        timeout,
        secret,
    )


def _parse_syslog(node: Node) -> tuple[Literal["tcp", "udp"], str, int]:
    text = node.string()
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "udp") or not parts.hostname or port is None or port == 0:
        raise node.error(
            f"expected tcp://HOST:PORT or udp://HOST:PORT, e.g. tcp://127.0.0.1:6514; got {text!r}"
        )
    return ("tcp" if parts.scheme == "tcp" else "udp"), parts.hostname, port
