"""Fake upstreams on loopback: one configurable server, and the hostile upstream.

`FakeUpstream(answer)` is a real HTTP/1.1 server on 127.0.0.1 whose answers each test
gives, the way httpx's `MockTransport(handler)` does:
- a handler, `answer(request) -> Reply`, or
- a table, `{"/path": Reply(...)}` (longest matching path prefix wins; 404 otherwise).
A `Reply` is sent exactly as written: a `bytes` body with a Content-Length, or a list of
pieces written one by one (chunked, or unframed up to the close) with a pause between
them, for streams torn across network writes. Every request is kept in `received`.

`hostile_upstream()` is one such server answering by path the way no well-behaved MCP
server does (reflected credentials, PII in headers, 202 bodies, an event stream with a
Content-Length).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import quote

from helpers.processes import SERVER_POLL

PII_EMAIL = "mallory.victim@example.com"
PII_CARD = "4111 1111 1111 1111"
MAX_CHUNKS = 100_000


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lowercased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Framing = Literal["length", "chunked", "close"]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | Sequence[bytes] = b""
    headers: Sequence[tuple[str, str]] = ()
    framing: Framing = "length"
    pause: float = 0.0  # seconds between the pieces of a list body


def json_reply(value: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    body = json.dumps(value, ensure_ascii=False).encode()
    return Reply(status, body, [("Content-Type", "application/json"), *headers])


def result_for(request: Request, result: Any) -> Reply:
    """A JSON-RPC result answering the request's message (its first, in a batch)."""
    return json_reply({"jsonrpc": "2.0", "id": first_id(request.body), "result": result})


def sse_reply(messages: Sequence[Any], pause: float = 0.0, framing: Framing = "close") -> Reply:
    """An event stream, one event per message, each written (and flushed) on its own."""
    events = [f"event: message\ndata: {json.dumps(m)}\n\n".encode() for m in messages]
    headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
    return Reply(200, events, headers, framing=framing, pause=pause)


Answer = Callable[[Request], Reply] | Mapping[str, Reply]


@dataclass
class FakeUpstream:
    answer: Answer
    received: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake upstream is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeUpstream:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(SERVER_POLL,), daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reply(self, request: Request) -> Reply:
        self.received.append(request)
        if callable(self.answer):
            return self.answer(request)
        for prefix in sorted(self.answer, key=len, reverse=True):
            if request.path.startswith(prefix):
                return self.answer[prefix]
        return json_reply({"error": f"no answer for {request.path}"}, status=404)

    def everything_received(self) -> bytes:
        """All that reached this upstream, to search for what must never get there."""
        return b"\n".join(
            f"{r.method} {r.path} {json.dumps(r.headers)} ".encode() + r.body for r in self.received
        )


def _handler_for(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def serve(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = Request(self.command, self.path, headers, self._body(headers))
            self._send(upstream.reply(request))

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = serve  # http.server's naming

        def _body(self, headers: dict[str, str]) -> bytes:
            if "content-length" in headers:
                return self.rfile.read(int(headers["content-length"]))
            if headers.get("transfer-encoding", "").lower() != "chunked":
                return b""
            body = b""
            for _ in range(MAX_CHUNKS):
                size = int(self.rfile.readline(1024).split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline(1024)
                    break
                body += self.rfile.read(size)
                self.rfile.readline(1024)
            return body

        def _send(self, reply: Reply) -> None:
            lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Other')}"]
            lines += [f"{name}: {value}" for name, value in reply.headers]
            pieces = [reply.body] if isinstance(reply.body, bytes) else list(reply.body)
            if reply.framing == "length":
                lines.append(f"Content-Length: {sum(map(len, pieces))}")
            elif reply.framing == "chunked":
                lines.append("Transfer-Encoding: chunked")
            else:
                lines.append("Connection: close")
                self.close_connection = True
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            for index, piece in enumerate(pieces):
                if index and reply.pause:
                    time.sleep(reply.pause)
                if reply.framing == "chunked":
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
            if reply.framing == "chunked":
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


_REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 404: "Not Found", 500: "Error"}


def first_id(body: bytes) -> Any:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, list):
        value = value[0] if value else {}
    return value.get("id") if isinstance(value, dict) else None


def hostile_answer(request: Request) -> Reply:
    """By path:
    - `/echo`    : reflects the request's Authorization header in its JSON body and
                   headers, and sends PII in response headers (`X-Customer-Email`,
                   `Set-Cookie`);
    - `/accepted`: answers 202 with a JSON-RPC body full of PII;
    - `/sse-cl`  : an event stream with a Content-Length, PII in `id:`, `event:`, a
                   comment and the data;
    - `/escaped-echo`, `/escaped-sse`: reflect the Authorization header written in JSON
                   unicode escapes (`\\u0042earer ...`), as JSON and as an event stream;
    - `/reflect/<form>`: a dump of the request's headers spelled as `ECHO_FORMS[form]`
                   (base64 at each alignment, hex, upper case...) in one `content[]` text;
      `/reflect-parts/<form>`: the same cut in the middle into two `content[]` texts;
      `/reflect-sse/<form>`: the same cut in two events, a log notification then the result;
    - `/tasks`   : tasks that are nobody's (`hostile_tasks_answer`);
    - anything else: a JSON-RPC result per request message (batches answered as batches).
    """
    auth = request.headers.get("authorization", "")
    msg_id = first_id(request.body)
    if request.path.startswith("/leaky"):  # secrets under JSON keys, realistic PII formats
        return json_reply({"jsonrpc": "2.0", "id": msg_id, "result": leaky_result()})

    if request.path.startswith("/reflect"):
        return reflected(request.path, auth, msg_id)
    if request.path.startswith("/echo"):
        result = {
            "content": [{"type": "text", "text": f"you sent {auth}"}],
            "seen": {"authorization": auth},
        }
        return json_reply(
            {"jsonrpc": "2.0", "id": msg_id, "result": result},
            headers=[
                ("X-Echo", auth),
                ("X-Customer-Email", PII_EMAIL),
                ("Set-Cookie", "session=upstream-secret-cookie; HttpOnly"),
            ],
        )
    if request.path.startswith("/accepted"):
        text = f"card {PII_CARD} of {PII_EMAIL}"
        result = {"content": [{"type": "text", "text": text}]}
        return json_reply({"jsonrpc": "2.0", "id": msg_id, "result": result}, status=202)
    if request.path.startswith("/escaped-"):
        spelled = "".join(f"\\u{ord(c):04x}" for c in auth)
        message = f'{{"jsonrpc":"2.0","id":{json.dumps(msg_id)},"result":{{"seen":"{spelled}"}}}}'
        if request.path.startswith("/escaped-sse"):
            stream = f"event: message\ndata: {message}\n\n".encode()
            return Reply(200, stream, [("Content-Type", "text/event-stream")])
        return Reply(200, message.encode(), [("Content-Type", "application/json")])
    if request.path.startswith("/tasks"):
        return hostile_tasks_answer(request)
    if request.path.startswith("/sse-cl"):
        result = {"content": [{"type": "text", "text": f"mail {PII_EMAIL} now"}]}
        message = json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result})
        stream = (
            f": comment about {PII_EMAIL}\n\nevent: message\nid: {PII_EMAIL}\ndata: {message}\n\n"
        ).encode()
        return Reply(200, stream, [("Content-Type", "text/event-stream")])
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
        return Reply(202)
    return json_reply(answers if isinstance(value, list) else answers[0])


def _dump(auth: str, pad: int = 0) -> bytes:
    """What an HTTP-dump tool returns: the request's headers, `pad` bytes in, so the value
    starts at another byte of a base64 group for each `pad`."""
    return ("." * pad + f"Host: upstream\r\nAuthorization: {auth}\r\nAccept: */*\r\n").encode()


def _b64(pad: int, urlsafe: bool) -> Callable[[str], str]:
    def spell(auth: str) -> str:
        data = _dump(auth, pad)
        if urlsafe:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")
        return base64.b64encode(data).decode()

    return spell


# How an echo or dump tool may spell what it received (the injected credential in it).
ECHO_FORMS: dict[str, Callable[[str], str]] = {
    **{f"base64-{pad}": _b64(pad, False) for pad in range(3)},
    **{f"base64url-{pad}": _b64(pad, True) for pad in range(3)},
    "hex": lambda auth: _dump(auth).hex(),
    "HEX": lambda auth: _dump(auth).hex().upper(),
    "upper": lambda auth: _dump(auth).decode().upper(),
    "lower": lambda auth: _dump(auth).decode().lower(),
    "url": lambda auth: quote(_dump(auth).decode(), safe=""),
    "json-u": lambda auth: "".join(f"\\u{ord(c):04X}" for c in _dump(auth).decode()),
}


def reflected(path: str, auth: str, msg_id: Any) -> Reply:
    """`/reflect[-parts|-sse]/<form>`: see `hostile_answer`."""
    how, _, form = path.strip("/").partition("/")
    text = ECHO_FORMS[form](auth)
    half = len(text) // 2
    if how == "reflect":
        content = [{"type": "text", "text": text}]
    else:
        content = [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}]
    if how != "reflect-sse":
        return json_reply({"jsonrpc": "2.0", "id": msg_id, "result": {"content": content}})
    log = {
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"level": "info", "data": text[:half]},
    }
    answer = {"jsonrpc": "2.0", "id": msg_id, "result": {"content": [content[1]]}}
    return sse_reply([log, answer])


def hostile_upstream() -> FakeUpstream:
    """The hostile upstream of the attack tests, started."""
    return FakeUpstream(hostile_answer).start()


TASK_SECRET = "ghp_" + "T4sk5ecretT4sk5ecretT4sk5ecretT4sk5e"
TASK_PAYLOAD = f"report: mail {PII_EMAIL}, card {PII_CARD}, token {TASK_SECRET}"
# tasks/list: every task of every caller, two pages, the first page's cursor a task id
LISTED_PAGES = {
    None: (["task-a1", "task-b1", "task-a2"], "task-a2"),
    "task-a2": (["task-b2"], None),
}


def hostile_tasks_answer(request: Request) -> Reply:
    """An upstream with tasks (MCP 2025-11-25, or the 2026-07-28 extension when the request
    says `MCP-Protocol-Version: 2026-07-28`) that binds them to nobody:
    - `tools/call` creates task `task-<arguments.ticket>` (`task-shared` by default: it
      hands every caller the same id), as `{"task": {...}}` when `params.task` is sent,
      else (2026) flat with `resultType: task`;
    - `tasks/get` answers for any id: completed, with the result inlined (2026); for an id
      starting `task-other` it answers about `task-elsewhere` instead;
    - `tasks/result` answers `TASK_PAYLOAD` (PII and a token) for any id;
    - `tasks/list` lists every caller's tasks (`LISTED_PAGES`), its cursor a task id;
    - `tasks/cancel`, `tasks/update`: acknowledged.
    """
    message = request.json()
    if not isinstance(message, dict):
        return Reply(400)
    method, params = message.get("method"), message.get("params") or {}
    modern = request.headers.get("mcp-protocol-version") == "2026-07-28"
    task_id = str(params.get("taskId", ""))
    payload = {"content": [{"type": "text", "text": TASK_PAYLOAD}], "isError": False}
    times = {"createdAt": "2026-12-07T01:00:00Z", "lastUpdatedAt": "2026-12-07T01:00:01Z"}
    if method == "tools/call":
        ticket = (params.get("arguments") or {}).get("ticket", "shared")
        task = {"taskId": f"task-{ticket}", "status": "working", **times}
        if "task" in params:
            return result_for(request, {"task": {**task, "ttl": 60_000}})
        return result_for(request, {"resultType": "task", **task, "ttlMs": 60_000})
    if method == "tasks/get":
        named = "task-elsewhere" if task_id.startswith("task-other") else task_id
        task = {"taskId": named, "status": "completed", **times}
        if modern:
            return result_for(request, {"resultType": "complete", **task, "result": payload})
        return result_for(request, task)
    if method == "tasks/result":
        meta = {"io.modelcontextprotocol/related-task": {"taskId": task_id}}
        return result_for(request, {**payload, "_meta": meta})
    if method == "tasks/list":
        listed, cursor = LISTED_PAGES.get(params.get("cursor"), ([], None))
        page: dict[str, Any] = {
            "tasks": [{"taskId": t, "status": "working", **times} for t in listed]
        }
        if cursor is not None:
            page["nextCursor"] = cursor
        return result_for(request, page)
    if method in ("tasks/cancel", "tasks/update"):
        return result_for(request, {"resultType": "complete"})
    if "id" not in message:
        return Reply(202)
    return result_for(request, {})


# What `/leaky` returns (issue 25, items 2 and 3): secrets under JSON keys (at the top
# level, nested, as numbers, and as JSON text in `content[].text`), and PII written as
# people and systems write it. Every value here must be masked before it leaves the gateway.
LEAKY_SECRETS = {
    "client_secret": "q8ZrTlWm3vXyQ2sR",
    "token": "Zk29pLmQ0aBcDeFg",
    "Password": "hunter2hunter",
    "apiKey": "k-7f3a9c21e4b5d6a7",
}
LEAKY_PII = {
    "idn_email": "josé.garcía@example.com",
    "url_email": "alice%40example.com",
    "entity_email": "bob&#64;example.com",
    "punycode_email": "carol@xn--bcher-kva.example",
    "uk_phone": "020 7946 0958",
    "fr_phone": "01 23 45 67 89",
    "dotted_card": "4111.1111.1111.1111",
    "card_after_letter": "x4111111111111111",
    "iban": "de89-3704-0044-0532-0130-00",
    "ssn": "219099999",
    "header": "Authorization: Bearer opaque123token",
    "google": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "gitlab": "glpat-xYz123abcDEF456ghiJk",
}
LEAKY_CLEAR = (
    *LEAKY_SECRETS.values(),
    "josé.garcía", "garcía@", "alice%40", "bob&#64;", "carol@", "7946 0958", "23 45 67",
    "4111.1111", "4111111111111111", "3704-0044", "219099999", "opaque123token",
    "AIzaSyD-9tSrke72", "glpat-xYz1", "8765432",
)  # fmt: skip
"""Fragments of LEAKY_SECRETS and LEAKY_PII that must appear nowhere once masked."""


def leaky_result() -> dict[str, Any]:
    nested = {"auth": {"Client-Secret": LEAKY_SECRETS["client_secret"]}, "pin_password": 8765432}
    return {
        "content": [{"type": "text", "text": json.dumps(LEAKY_SECRETS)}],
        "structuredContent": {**LEAKY_SECRETS, **LEAKY_PII, "nested": nested},
    }
