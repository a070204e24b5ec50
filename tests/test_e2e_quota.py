"""Rate-limit quota is used only by calls that reach the upstream (issue 13 item 9).

Through a real mitmdump: while the audit store cannot be written (`audit: required`),
calls are refused 503 after Policy decided them; they must not use the caller's quota.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from helpers.clients import META, MODERN, raw_post
from helpers.configs import ALICE as ALICE_KEY
from helpers.configs import identity

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: listing
    match: {{method: tools/list}}
    action: allow
  - name: support reads customers
    match: {{groups: [support], tool: get_customer}}
    action: allow
    limit: 2/min
"""
)
ALICE = {**ALICE_KEY, **MODERN}


def get_customer(gw, msg_id: int):
    params = {"name": "get_customer", "arguments": {"customer_id": 1}, "_meta": META}
    message = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}
    return raw_post(
        gw.url + "/mcp", message, {**ALICE, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
    )


def listing_until(gw, status: int) -> None:
    for _ in range(60):
        message = {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {"_meta": META}}
        response = raw_post(gw.url + "/mcp", message, {**ALICE, "Mcp-Method": "tools/list"})
        if response.status == status:
            return
        time.sleep(0.25)
    pytest.fail(f"the gateway never answered {status}: {response.status} {response.body[:300]!r}")


def test_calls_refused_503_use_no_rate_limit_quota(demo, gateway_factory):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    listing_until(gw, 200)
    holder = sqlite3.connect(gw.db, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")  # the store cannot be written while this holds
    try:
        listing_until(gw, 503)
        refused = [get_customer(gw, i) for i in range(1, 4)]
    finally:
        holder.rollback()
        holder.close()
    assert [r.status for r in refused] == [503, 503, 503]
    assert all("audit store" in r.json()["error"]["message"] for r in refused)
    listing_until(gw, 200)
    served = [get_customer(gw, i) for i in range(4, 7)]
    assert [r.status for r in served] == [200, 200, 200]
    answers = [r.json() for r in served]
    assert "result" in answers[0] and "result" in answers[1], answers  # the whole quota
    assert answers[2]["error"]["code"] == -32005  # and no more than the limit
