"""An upstream that is down or fails: a JSON-RPC 502 naming it and a row saying why; and no
upstream connection before a request is decided (connection_strategy=lazy)."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from helpers.clients import raw_post
from helpers.configs import ALICE, BOB, identity
from helpers.processes import Gateway, free_port
from helpers.raw_upstreams import RawUpstream, reset

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + """
upstreams:
  - name: crm
    url: {url}
rules:
  - name: no sql
    match: {{tool: run_sql}}
    action: deny
  - name: lookups
    match: {{groups: [support], method: [initialize, tools/call]}}
    action: allow
"""
)


def call(tool: str = "get_customer", msg_id: Any = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"customer_id": 1}},
    }


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def outcome_rows(gw: Gateway, expected: int = 1) -> list[dict[str, Any]]:
    """The outcome rows, once `expected` of them are written (the writer is asynchronous)."""
    deadline = time.monotonic() + 10
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if gw.db.exists():
            with sqlite3.connect(gw.db) as db:
                db.row_factory = sqlite3.Row
                found = [
                    dict(r) for r in db.execute("SELECT * FROM events WHERE direction = 'outcome'")
                ]
            if len(found) >= expected:
                return found
        time.sleep(0.1)
    return found


def refused_connection_url() -> str:
    """A loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def test_a_down_upstream_is_401_for_the_unknown_and_a_json_rpc_502_naming_it(gateway_factory):
    down = refused_connection_url()
    gw = gateway_factory(CONFIG.format(url=down), down)
    anonymous = raw_post(gw.url + "/mcp", INITIALIZE)
    assert anonymous.status == 401, anonymous.body  # not an empty reply
    answer = raw_post(gw.url + "/mcp", call(), ALICE)
    assert answer.status == 502
    assert answer.headers["Content-Type"] == "application/json"
    error = answer.json()
    assert error["id"] == 7 and error["error"]["code"] == -32603
    message = error["error"]["message"]
    assert "upstream 'crm' could not be reached (the connection" in message
    assert "was not forwarded" in message
    # the address is the operator's: in the record, never in the client's answer
    assert down.split("//")[1] not in answer.body.decode()
    (row,) = [r for r in outcome_rows(gw) if r["user"] == "alice"]
    assert row["status"] == 502 and row["target"] == "get_customer"
    assert "could not be reached" in row["reason"] and down in row["reason"]
    assert json.loads(row["extra"])["refused"]["kind"] == "upstream-failed"


def test_an_upstream_that_resets_mid_body_is_a_502_that_says_the_call_may_have_run(
    gateway_factory,
):
    def cut(conn: socket.socket, request: bytes) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
            b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"half'
        )
        time.sleep(0.2)
        reset(conn)

    with RawUpstream(cut) as upstream:
        gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
        answer = raw_post(gw.url + "/mcp", call(), ALICE)
    assert answer.status == 502, answer.body
    assert b"half" not in answer.body and b"<html" not in answer.body.lower()
    message = answer.json()["error"]["message"]
    assert "upstream 'crm'" in message and "may have run" in message
    (row,) = outcome_rows(gw)
    assert row["status"] == 502 and "may have run" in row["reason"]


def test_an_upstream_that_resets_before_answering_is_a_502_too(gateway_factory):
    with RawUpstream(lambda conn, request: reset(conn)) as upstream:
        gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
        answer = raw_post(gw.url + "/mcp", call(msg_id="abc"), ALICE)
    assert answer.status == 502 and answer.json()["id"] == "abc"
    assert "upstream 'crm'" in answer.json()["error"]["message"]


def test_a_refusal_on_the_upstreams_headers_never_carries_its_body(gateway_factory):
    """Refused on its headers (an encoding the gateway cannot read, so it cannot be masked):
    the client gets the refusal, not the upstream's unread body under the refusal's status."""
    secret = b'{"jsonrpc":"2.0","id":7,"result":{"secret":"SECRET-UPSTREAM-BODY"}}'

    def weird(conn: socket.socket, request: bytes) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: x-weird\r\nContent-Length: %d\r\n\r\n" % len(secret) + secret
        )

    with RawUpstream(weird) as upstream:
        gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
        answer = raw_post(gw.url + "/mcp", call(), ALICE)
    assert answer.status == 502, answer.body
    assert b"SECRET-UPSTREAM-BODY" not in answer.body
    assert answer.json()["error"]["code"] == -32600


def test_a_tls_failure_is_a_502_naming_the_upstream(gateway_factory):
    def plain(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with RawUpstream(plain) as upstream:
        url = f"https://127.0.0.1:{upstream.port}"
        gw = gateway_factory(CONFIG.format(url=url), url)
        answer = raw_post(gw.url + "/mcp", call(), ALICE)
    assert answer.status == 502, answer.body
    message = answer.json()["error"]["message"]
    assert "upstream 'crm' could not be reached" in message
    assert url.rsplit(":", 1)[1] not in answer.body.decode()


def test_a_stream_that_fails_midway_ends_with_an_error_for_the_pending_call(gateway_factory):
    def stream_then_reset(conn: socket.socket, request: bytes) -> None:
        progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"p": 1}}
        event = f"event: message\ndata: {json.dumps(progress)}\n\n".encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(event):x}\r\n".encode() + event + b"\r\n"
        )
        time.sleep(0.3)
        reset(conn)

    with RawUpstream(stream_then_reset) as upstream:
        gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
        with httpx.Client(timeout=20) as client:
            response = client.post(
                gw.url + "/mcp",
                json=call(msg_id=11),
                headers={**ALICE, "Accept": "application/json, text/event-stream"},
            )
    assert response.status_code == 200  # the headers had gone out before the failure
    events = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[0]["method"] == "notifications/progress"
    assert events[-1]["id"] == 11 and "upstream 'crm'" in events[-1]["error"]["message"]
    (row,) = outcome_rows(gw)
    assert row["status"] == 200 and "may have run" in row["reason"]
    assert json.loads(row["extra"])["refused"]["kind"] == "upstream-failed"


@pytest.mark.parametrize("strategy", [None, "eager"])
def test_no_upstream_connection_before_a_request_is_decided(gateway_factory, strategy):
    def answer(conn: socket.socket, request: bytes) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": []}}).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    with RawUpstream(answer) as upstream:
        options = {"connection_strategy": strategy} if strategy else {}
        gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url, options=options)
        assert raw_post(gw.url + "/mcp", INITIALIZE).status == 401  # unauthenticated
        denied = raw_post(gw.url + "/mcp", call("run_sql"), ALICE).json()
        assert denied["error"]["code"] == -32003
        not_his = raw_post(gw.url + "/mcp", call(), BOB).json()  # default-deny
        assert not_his["error"]["code"] == -32003
        assert raw_post(gw.url + "/nowhere/../mcp", call(), ALICE).status == 400  # malformed
        assert upstream.connections == 0
        assert raw_post(gw.url + "/mcp", call(), ALICE).status == 200  # decided: it goes
        assert upstream.connections == 1


class SlowToAcceptUpstream(ThreadingHTTPServer):
    """Takes its first connection at once and every later one only after ACCEPT_DELAY, as a
    server across a network (or a busy one) does: a request on a kept-alive connection then
    gets there before one that needed a new connection."""

    ACCEPT_DELAY = 0.4

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OrderHandler)
        self.daemon_threads = True
        self.seen: list[str] = []
        self.accepted = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        found = super().get_request()
        self.accepted += 1
        if self.accepted > 1:
            time.sleep(self.ACCEPT_DELAY)
        return found


class _OrderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowToAcceptUpstream

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append("GET stream")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"d\r\n: stream open\n\r\n")
        self.wfile.flush()
        time.sleep(0.5)
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(message["method"])
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Mcp-Session-Id", "session-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_call_never_overtakes_the_get_stream_its_client_opened_first(gateway_factory):
    upstream = SlowToAcceptUpstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    try:
        gw = gateway_factory(CONFIG.format(url=url), url)
        accept = {"Accept": "application/json, text/event-stream"}
        with httpx.Client(timeout=20, headers={**ALICE, **accept}) as client:
            opened = client.post(gw.url + "/mcp", json=INITIALIZE)
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}

            def stream() -> None:
                with httpx.Client(timeout=20, headers={**ALICE, **accept}) as other:
                    with other.stream("GET", gw.url + "/mcp", headers=session) as response:
                        response.read()

            opener = threading.Thread(target=stream)
            opener.start()
            deadline = time.monotonic() + 10
            while upstream.accepted < 2 and time.monotonic() < deadline:
                time.sleep(0.005)  # the GET is on its way to the upstream: now call a tool
            called = client.post(gw.url + "/mcp", json=call(), headers=session)
            opener.join(timeout=20)
        assert called.status_code == 200
        assert upstream.seen == ["initialize", "GET stream", "tools/call"]
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_a_get_stream_whose_upstream_fails_ends_cleanly_with_a_comment(gateway_factory):
    def stream_then_reset(conn: socket.socket, request: bytes) -> None:
        ping = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"x": 1}}
        event = f"event: message\ndata: {json.dumps(ping)}\n\n".encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: s1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(event):x}\r\n".encode() + event + b"\r\n"
        )
        time.sleep(0.3)
        reset(conn)

    with RawUpstream(stream_then_reset) as upstream:
        gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
        with httpx.Client(timeout=20) as client:
            response = client.get(  # read to its end: no "incomplete chunked read"
                gw.url + "/mcp", headers={**ALICE, "Accept": "text/event-stream"}
            )
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert any(line.startswith("data: ") and "notifications/message" in line for line in lines)
    assert lines[-1].startswith(": upstream 'crm'") and "may have run" in lines[-1]


def test_an_unframed_answer_over_the_size_limit_is_a_json_rpc_502(gateway_factory):
    def big(conn: socket.socket, request: bytes) -> None:
        piece = b'{"jsonrpc":"2.0","id":7,"result":{"text":"' + b"x" * 4096 + b'"}}'
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            + piece
        )

    with RawUpstream(big) as upstream:
        gw = gateway_factory(
            CONFIG.format(url=upstream.url), upstream.url, options={"holdgate_max_body": "1k"}
        )
        answer = raw_post(gw.url + "/mcp", call(), ALICE)
    assert answer.status == 502 and b"xxxx" not in answer.body
    assert "response is over holdgate_max_body" in answer.json()["error"]["message"]
    (row,) = outcome_rows(gw)
    assert row["status"] == 502
