"""Real feed receivers on 127.0.0.1, each in a thread of the test process: a webhook that
checks the HMAC of every body and records the seqs it took, and syslog over TCP (octet
counting, RFC 6587) and UDP that parse each RFC 5424 message. Each is stopped by its test
(`stop()`), and a webhook can come back on the same port (`start()`) for an outage."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from helpers.processes import SERVER_POLL, free_port

Mode = Literal["ok", "fail", "hang", "garbage"]


@dataclass
class Delivery:
    """One body the webhook took: its records and headers."""

    records: list[dict[str, Any]]
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    secret: str
    mode: Mode = "ok"
    port: int = field(default_factory=free_port)
    deliveries: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    refused: int = 0  # bodies answered with an error (mode "fail")
    _server: ThreadingHTTPServer | None = None
    _release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/holdgate"

    @property
    def seqs(self) -> list[int]:
        return [r["seq"] for d in self.deliveries for r in d.records]

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.mode == "hang":
                    receiver._release.wait(30)
                    return
                expected = (
                    "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                )
                signature = self.headers.get("X-Holdgate-Signature", "")
                if not hmac.compare_digest(expected, signature):
                    receiver.bad_signatures += 1
                    self._answer(401, b"bad signature")
                    return
                if receiver.mode == "fail":
                    receiver.refused += 1
                    self._answer(500, b"down for maintenance")
                    return
                records = [json.loads(line) for line in body.decode().splitlines()]
                receiver.deliveries.append(Delivery(records, dict(self.headers.items())))
                if receiver.mode == "garbage":
                    self._answer(200, b"\x00\xff not json {{{" * 100)
                else:
                    self._answer(204, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, args=(SERVER_POLL,), daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server = _stopped(self._server)

    def wait_for(self, seqs: set[int], timeout: float = 60.0) -> None:
        """Until every seq in `seqs` has arrived (bounded)."""
        _wait_for_seqs("the webhook", lambda: self.seqs, seqs, timeout)


_RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>(?P<version>1) (?P<timestamp>\S+) (?P<hostname>\S+) "
    r"(?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|\[.*?\]) (?P<msg>.*)$",
    re.DOTALL,
)


def parse_syslog(message: bytes) -> dict[str, Any]:
    """An RFC 5424 message's header fields, and its message as JSON (`record`)."""
    match = _RFC5424.match(message.decode())
    if match is None:
        raise AssertionError(f"not an RFC 5424 message: {message[:200]!r}")
    fields: dict[str, Any] = match.groupdict()
    fields["record"] = json.loads(fields.pop("msg"))
    return fields


@dataclass
class SyslogReceiver:
    transport: Literal["tcp", "udp"]
    port: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    _server: socketserver.BaseServer | None = None

    @property
    def target(self) -> str:
        return f"{self.transport}://127.0.0.1:{self.port}"

    @property
    def seqs(self) -> list[int]:
        return [m["record"]["seq"] for m in self.messages]

    def start(self) -> SyslogReceiver:
        receiver = self

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:  # octet counting: "LEN SP MSG", until the sender closes
                    length = b""
                    while (char := self.rfile.read(1)) not in (b" ", b""):
                        length += char
                    if not length:
                        return
                    receiver.messages.append(parse_syslog(self.rfile.read(int(length))))

        class Udp(socketserver.DatagramRequestHandler):
            def handle(self) -> None:
                receiver.messages.append(parse_syslog(self.rfile.read()))

        server: socketserver.BaseServer
        if self.transport == "tcp":
            server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Tcp)
            server.daemon_threads = True
        else:
            server = socketserver.UDPServer(("127.0.0.1", self.port), Udp)
            server.max_packet_size = 65535
        self.port = server.server_address[1]  # type: ignore[index]
        self._server = server
        threading.Thread(target=server.serve_forever, args=(SERVER_POLL,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._server = _stopped(self._server)

    def wait_for(self, seqs: set[int], timeout: float = 60.0) -> None:
        _wait_for_seqs("syslog", lambda: self.seqs, seqs, timeout)


def _stopped(server: socketserver.BaseServer | None) -> None:
    """Shut a receiver's server down (if it runs); what its attribute becomes."""
    if server is not None:
        server.shutdown()
        server.server_close()


def _wait_for_seqs(
    who: str, arrived: Callable[[], list[int]], seqs: set[int], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not seqs <= set(arrived()):
        if time.monotonic() > deadline:
            missing = sorted(seqs - set(arrived()))
            raise AssertionError(f"{who} never got seqs {missing[:20]}")
        time.sleep(0.05)
