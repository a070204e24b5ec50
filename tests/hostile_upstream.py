"""A hostile (or buggy) MCP upstream for attack tests: a raw HTTP/1.1 server on loopback.

It answers by path, the way no well-behaved MCP server does:
- `/echo`    : reflects the request's Authorization header in its JSON body and headers,
               and sends PII in response headers (`X-Customer-Email`, `Set-Cookie`);
- `/accepted`: answers 202 with a JSON-RPC body full of PII;
- `/sse-cl`  : an event stream with a Content-Length, PII in `id:`, `event:`, a comment
               and the data;
- anything else: a JSON-RPC result per request message (batches answered as batches).
Every request it receives is kept in `received` (method, path, headers, body).
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

PII_EMAIL = "mallory.victim@example.com"
PII_CARD = "4111 1111 1111 1111"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HostileUpstream:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _server: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileUpstream:
        server = socket.create_server(("127.0.0.1", self.port))
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def everything_received(self) -> bytes:
        return b"\n".join(
            r.method.encode()
            + b" "
            + r.path.encode()
            + b" "
            + json.dumps(r.headers).encode()
            + b" "
            + r.body
            for r in self.received
        )

    def _serve(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            reader = conn.makefile("rb")
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                self.received.append(request)
                conn.sendall(self._answer(request))

    def _answer(self, request: Received) -> bytes:
        auth = request.headers.get("authorization", "")
        if request.path.startswith("/echo"):
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": _first_id(request.body),
                    "result": {
                        "content": [{"type": "text", "text": f"you sent {auth}"}],
                        "seen": {"authorization": auth},
                    },
                }
            ).encode()
            return _response(
                200,
                body,
                [
                    ("Content-Type", "application/json"),
                    ("X-Echo", auth),
                    ("X-Customer-Email", PII_EMAIL),
                    ("Set-Cookie", "session=upstream-secret-cookie; HttpOnly"),
                ],
            )
        if request.path.startswith("/accepted"):
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": _first_id(request.body),
                    "result": {
                        "content": [{"type": "text", "text": f"card {PII_CARD} of {PII_EMAIL}"}]
                    },
                }
            ).encode()
            return _response(202, body, [("Content-Type", "application/json")])
        if request.path.startswith("/sse-cl"):
            message = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": _first_id(request.body),
                    "result": {"content": [{"type": "text", "text": f"mail {PII_EMAIL} now"}]},
                }
            )
            stream = (
                f": comment about {PII_EMAIL}\n\n"
                f"event: message\nid: {PII_EMAIL}\ndata: {message}\n\n"
            ).encode()
            return _response(200, stream, [("Content-Type", "text/event-stream")])
        try:
            value = json.loads(request.body) if request.body else None
        except ValueError:
            value = None
        messages = value if isinstance(value, list) else [value]
        answers = [
            {"jsonrpc": "2.0", "id": m["id"], "result": {"ok": True}}
            for m in messages
            if isinstance(m, dict) and "id" in m and "method" in m
        ]
        if not answers:
            return _response(202, b"", [])
        payload = answers if isinstance(value, list) else answers[0]
        return _response(200, json.dumps(payload).encode(), [("Content-Type", "application/json")])


def _first_id(body: bytes) -> Any:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, list):
        value = value[0] if value else {}
    return value.get("id") if isinstance(value, dict) else None


def _response(status: int, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    reason = {200: "OK", 202: "Accepted"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_request(reader: Any) -> Received | None:
    try:
        line = reader.readline(65536)
    except OSError:
        return None
    if not line.strip():
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    for _ in range(200):
        raw = reader.readline(65536)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        for _ in range(100_000):
            size = int(reader.readline(1024).split(b";")[0], 16)
            if size == 0:
                reader.readline(1024)
                break
            body += reader.read(size)
            reader.readline(1024)
    return Received(method, path, headers, body)
