"""The admin listener through a real mitmdump: HTTP/1.1 as clients speak it (keep-alive,
chunked request bodies), and every kind of bad request answered cleanly, never a hang or
a dropped connection, with the listener still serving afterwards."""

from __future__ import annotations

import http.client
import json
import socket
import time

import anyio
import pytest

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls, wait_for_pending
from helpers.clients import connect
from helpers.configs import ALICE, DANA
from helpers.processes import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def gw(demo, gateway_factory):
    gw = gateway_factory(
        APPROVALS_CONFIG.format(url=demo.url, timeout="20s", grant="0s"),
        demo.url,
        options={"holdgate_admin": f"127.0.0.1:{free_port()}"},
    )
    wait_listening(gw.admin)
    return gw


def wait_listening(address: str) -> None:
    host, _, port = address.rpartition(":")
    for _ in range(200):  # the listener opens once the previous run's holds are closed
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the admin listener on {address} never opened")


def connection(address: str) -> http.client.HTTPConnection:
    host, _, port = address.rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | list[bytes] | None = None,
) -> tuple[int, str, bytes]:
    """One request on `conn` (a list body is sent chunked): status, content type, body."""
    if isinstance(body, list):
        conn.request(method, path, body=iter(body), headers=headers, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type", ""), response.read()


async def test_a_decision_over_one_kept_alive_connection_with_a_chunked_body(demo, gw):
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        results = []

        async def call():
            results.append(await client.call_tool("run_sql", DELETE))

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        approval = pending["approval_id"]
        conn = connection(gw.admin)
        status, _, listed = exchange(conn, "GET", "/approvals", DANA)
        assert status == 200 and [a["approval_id"] for a in json.loads(listed)] == [approval]
        kept = conn.sock
        assert kept is not None  # the listener did not close the connection after answering
        # a malformed body is refused; nothing is decided and the connection stays usable
        status, kind, body = exchange(conn, "POST", f"/approvals/{approval}/approve", DANA, b"{no")
        assert (status, kind) == (400, "application/json")
        assert json.loads(body) == {"error": "the body must be a JSON object"}
        chunks = [b'{"reason": ', b'"checked the ', b'ticket"}']
        status, _, decided = exchange(conn, "POST", f"/approvals/{approval}/approve", DANA, chunks)
        assert status == 200, decided
        assert json.loads(decided) == {
            "approval_id": approval,
            "state": "approved",
            "decider": "dana",
            "channel": "api",
            "decided_as": {
                "via": "api_key",
                "key": "dana",
                "user": "dana",
                "groups": ["dba", "engineering"],
                "qualified_by": "dba",
            },
        }
        assert conn.sock is kept  # three answers, one connection
        conn.close()
    assert not results[0].is_error
    assert sql_calls(demo) == [DELETE["query"]]
    record = oneshot.approval(gw.db, approval)
    assert (record["state"], record["reason"]) == ("approved", "checked the ticket")


BAD_REQUESTS = [
    ("GET", "/nothing/here", None, 404, "see GET /approvals or GET /campaigns"),
    ("GET", "/approvalsX", None, 404, "see GET /approvals or GET /campaigns"),
    ("DELETE", "/approvals", None, 405, "GET /approvals"),
    ("PUT", "/metrics", b"", 405, "GET /metrics"),
    ("BREW", "/approvals", None, 405, "Method Not Allowed"),
    ("POST", "/campaigns/c1/items/c1.i1/certify", b"[1,", 400, "must be a JSON object"),
]
# Bodies over the cap, refused on their declared size before a byte of them is read.
OVERSIZED = [
    b"Content-Length: 65537\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n10001\r\n",
]


def raw_exchange(address: str, head: bytes) -> bytes:
    """What the listener answers to `head` sent as is, up to its closing the connection."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        for _ in range(100):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


async def test_bad_requests_are_answered_cleanly_and_the_listener_lives_on(demo, gw):
    conn = connection(gw.admin)
    for method, path, body, status, error in BAD_REQUESTS:
        answered, kind, content = exchange(conn, method, path, DANA, body)
        assert (answered, kind) == (status, "application/json"), (method, path, content)
        assert error in json.loads(content)["error"]
    assert exchange(conn, "GET", "/approvals", DANA)[0] == 200  # the same connection serves
    conn.close()
    key = DANA["X-API-Key"].encode()
    for oversized in OVERSIZED:
        head = b"POST /approvals/abc/approve HTTP/1.1\r\nHost: a\r\nX-API-Key: " + key
        answer = raw_exchange(gw.admin, head + b"\r\n" + oversized)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert raw_exchange(gw.admin, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    conn = connection(gw.admin)
    assert exchange(conn, "GET", "/approvals", DANA)[0] == 200
    conn.close()
    assert sql_calls(demo) == []
