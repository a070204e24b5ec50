"""Where a feed's batch goes. A sink either takes the whole batch or raises `SinkDown`;
the runner advances the feed's cursor only after a batch was taken.

- Webhook: one POST per batch, the body JSON lines (one record per row), signed
  `X-Holdgate-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, with
  `X-Holdgate-Feed`, `X-Holdgate-Seq-First` and `X-Holdgate-Seq-Last`. Taken: any 2xx
  (its body is not read beyond a bound). Redirects are not followed.
- Syslog: one RFC 5424 message per row, the record's JSON as the message. TCP frames each
  with octet counting (RFC 6587) and counts as taken once written; UDP is one datagram
  per row, fire and forget: a datagram lost on the way is lost, and a row too large for
  one datagram is sent as a stub (`seq`, `ts`, `row_hash`, `"truncated": true`) rather
  than stall the feed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Protocol

from holdgate.feeds.feeds_config import FeedConfig
from holdgate.feeds.records import feed_line

SYSLOG_PRI = 13 * 8 + 6  # facility 13 (log audit), severity 6 (informational)
SYSLOG_MSGID = "audit"
RESPONSE_LIMIT = 65536  # bytes of a receiver's answer read (and dropped)
UDP_MAX = 65000  # bytes of one syslog datagram (IPv4's limit is 65507)


class SinkDown(Exception):
    """The receiver did not take the batch (down, refused, timed out): retry it later."""


class Sink(Protocol):
    def send(self, rows: Sequence[dict[str, Any]]) -> None:
        """Deliver every row of the batch, in order, or raise SinkDown."""

    def close(self) -> None: ...


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(self, feed: FeedConfig, context: ssl.SSLContext | None = None) -> None:
        if feed.secret is None:
            raise ValueError(f"feed {feed.name!r} has no secret loaded")
        self.feed = feed
        self.secret = feed.secret
        self.context = context or ssl.create_default_context()
        self.path = _request_path(feed.target)

    def send(self, rows: Sequence[dict[str, Any]]) -> None:
        body = "".join(feed_line(row) + "\n" for row in rows).encode()
        headers = {
            "Content-Type": "application/x-ndjson",
            "X-Holdgate-Feed": self.feed.name,
            "X-Holdgate-Seq-First": str(rows[0]["seq"]),
            "X-Holdgate-Seq-Last": str(rows[-1]["seq"]),
            "X-Holdgate-Signature": sign(self.secret, body),
        }
        conn: http.client.HTTPConnection
        if self.feed.transport == "https":
            conn = http.client.HTTPSConnection(
                self.feed.host, self.feed.port, timeout=self.feed.timeout, context=self.context
            )
        else:
            conn = http.client.HTTPConnection(
                self.feed.host, self.feed.port, timeout=self.feed.timeout
            )
        try:
            conn.request("POST", self.path, body, headers)
            response = conn.getresponse()
            response.read(RESPONSE_LIMIT)
        except (OSError, http.client.HTTPException) as exc:
            raise SinkDown(f"{self.feed.shown_target}: {_describe(exc)}") from None
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise SinkDown(f"{self.feed.shown_target}: HTTP {response.status}")

    def close(self) -> None:
        """Each batch has its own connection: nothing stays open."""


class SyslogSink:
    def __init__(self, feed: FeedConfig) -> None:
        self.feed = feed
        self.hostname = (socket.gethostname() or "-")[:255].replace(" ", "-")
        self._tcp: socket.socket | None = None

    def message(self, row: dict[str, Any]) -> bytes:
        """One RFC 5424 message: the row's time, this host, app `holdgate`, the record."""
        stamp = row.get("ts") or "-"
        return (
            f"<{SYSLOG_PRI}>1 {stamp} {self.hostname} holdgate {os.getpid()} "
            f"{SYSLOG_MSGID} - {feed_line(row)}"
        ).encode()

    def datagram(self, row: dict[str, Any]) -> bytes:
        """The message, or a stub naming the row where the whole one would not fit."""
        message = self.message(row)
        if len(message) <= UDP_MAX:
            return message
        stub = {"seq": row.get("seq"), "ts": row.get("ts"), "row_hash": row.get("row_hash")}
        return self.message({**stub, "truncated": True})

    def send(self, rows: Sequence[dict[str, Any]]) -> None:
        udp = self.feed.transport == "udp"
        messages = [self.datagram(row) if udp else self.message(row) for row in rows]
        try:
            if udp:
                family = socket.getaddrinfo(self.feed.host, self.feed.port, type=socket.SOCK_DGRAM)
                with socket.socket(family[0][0], socket.SOCK_DGRAM) as sock:
                    for message in messages:
                        sock.sendto(message, (self.feed.host, self.feed.port))
                return
            if self._tcp is None:
                self._tcp = socket.create_connection(
                    (self.feed.host, self.feed.port), timeout=self.feed.timeout
                )
            self._tcp.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
        except OSError as exc:
            self.close()
            raise SinkDown(f"{self.feed.shown_target}: {_describe(exc)}") from None

    def close(self) -> None:
        if self._tcp is not None:
            sock, self._tcp = self._tcp, None
            sock.close()


def make_sink(feed: FeedConfig) -> Sink:
    return WebhookSink(feed) if feed.kind == "webhook" else SyslogSink(feed)


def _request_path(url: str) -> str:
    rest = url.split("://", 1)[1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return getattr(exc, "strerror", None) or type(exc).__name__ + (f": {exc}" if str(exc) else "")
