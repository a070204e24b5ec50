"""`subscriptions/listen` through a real mitmdump: a FakeUpstream answers the listen POST
with a long-lived event stream of notifications, written one by one with pauses. Each
event reaches the client masked before the upstream ends the stream, one that names a
resource the caller may not read never does, and each is a row in the store."""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
from typing import Any

from helpers.configs import ALICE, BOB, identity
from helpers.processes import stop
from helpers.upstreams import PII_EMAIL, Request, json_reply, sse_reply

PAUSE = 0.5
CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + """upstreams:
  - name: crm
    url: {url}
rules:
  - name: support listens
    match: {{groups: [support], method: subscriptions/listen}}
    action: allow
  - name: support reads customers
    match: {{groups: [support], method: resources/read, resource: ["crm://customers/**"]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
"""
)
NOTIFICATIONS = [
    {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
    {"jsonrpc": "2.0", "method": "notifications/message",
     "params": {"level": "info", "data": f"ticket from {PII_EMAIL}"}},
    {"jsonrpc": "2.0", "method": "notifications/resources/updated",
     "params": {"uri": "crm://payroll/2026"}},
    {"jsonrpc": "2.0", "method": "notifications/resources/updated",
     "params": {"uri": "crm://customers/42", "title": f"{PII_EMAIL} changed"}},
]  # fmt: skip
LISTEN = {"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {}}
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "Mcp-Protocol-Version": "2026-07-28",
    "Mcp-Method": "subscriptions/listen",
}


def answer(request: Request):
    body = request.json()
    if isinstance(body, dict) and body.get("method") == "subscriptions/listen":
        return sse_reply(NOTIFICATIONS, pause=PAUSE, framing="chunked")
    return json_reply({"jsonrpc": "2.0", "id": None, "error": {"code": -32601, "message": "?"}})


def test_a_listen_stream_arrives_event_by_event_masked_filtered_and_recorded(
    gateway_factory, fake_upstream
):
    upstream = fake_upstream(answer)
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    arrivals: list[tuple[float, Any]] = []
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/mcp", json.dumps(LISTEN), {**HEADERS, **ALICE})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    while line := response.readline():  # read as it arrives, never whole
        if line.startswith(b"data: "):
            arrivals.append((time.monotonic() - start, json.loads(line[6:])))
    conn.close()
    ended = time.monotonic() - start
    messages = [m for _, m in arrivals]
    assert PII_EMAIL not in json.dumps(messages)
    assert [m["method"] for m in messages] == [
        "notifications/tools/list_changed",
        "notifications/message",
        "notifications/resources/updated",
    ]
    assert messages[1]["params"]["data"] == "ticket from [REDACTED:email]"
    assert messages[2]["params"]["uri"] == "crm://customers/42"  # payroll never arrived
    # Not buffered: the first events arrived while the upstream was still writing.
    assert ended >= PAUSE * (len(NOTIFICATIONS) - 1)
    assert arrivals[0][0] < ended - 2 * PAUSE
    assert arrivals[1][0] < ended - PAUSE
    stop(gw.proc)
    with sqlite3.connect(gw.db) as db:
        db.row_factory = sqlite3.Row
        rows = [
            dict(r)
            for r in db.execute(
                "SELECT direction, method, decision, reason, args_masked FROM events"
                " WHERE direction IN ('server_notification', 'response') ORDER BY seq"
            )
        ]
    assert [r["decision"] for r in rows] == ["pass", "pass", "dropped", "pass"]
    assert rows[2]["reason"] == "names a resource this identity may not read"
    # the drop is recorded as what it was: that notification, masked for the record
    assert (rows[2]["direction"], rows[2]["method"]) == (
        "server_notification",
        "notifications/resources/updated",
    )
    assert "crm://payroll/2026" in rows[2]["args_masked"]
    assert all(PII_EMAIL not in (r["args_masked"] or "") for r in rows)
    assert "[REDACTED:email]" in rows[1]["args_masked"]


def test_a_listen_no_rule_allows_never_reaches_the_upstream(gateway_factory, fake_upstream):
    upstream = fake_upstream(answer)
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/mcp", json.dumps(LISTEN), {**HEADERS, **BOB})
    response = conn.getresponse()
    assert response.status == 200
    error = json.loads(response.read())["error"]
    conn.close()
    assert error["code"] == -32003 and "default-deny" in error["message"]
    assert upstream.received == []
