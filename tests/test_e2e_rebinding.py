"""DNS rebinding through a real gateway: a hostile Host or Origin is 403 with a JSON-RPC
error and a row, as the official conformance suite's `dns-rebinding-protection` tests it;
the gateway's own names, `allowed_hosts` and `allowed_origins` pass."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from helpers.clients import raw_post
from helpers.configs import ALICE, identity
from helpers.processes import Gateway

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """
upstreams:
  - name: demo
    url: {url}
allowed_hosts: [mcp.example.com, "gw.internal:*"]
allowed_origins: [https://app.example.com]
approvals:
  public_url: https://approvals.example.com/holdgate
rules:
  - name: everything
    match: {{}}
    action: allow
"""
)

# What the conformance suite sends (scenario dns-rebinding-protection, v0.1.16).
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "conformance-dns-rebinding-test", "version": "1.0.0"},
    },
}


def refusal_rows(gw: Gateway) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if gw.db.exists():
            with sqlite3.connect(gw.db) as db:
                db.row_factory = sqlite3.Row
                found = [
                    dict(r)
                    for r in db.execute("SELECT * FROM events WHERE decision = 'host-refused'")
                ]
            if found:
                return found
        time.sleep(0.1)
    return []


def test_a_rebound_host_and_origin_are_refused_before_anything_else(gateway, demo):
    hostile = {"Host": "evil.example.com", "Origin": "http://evil.example.com"}
    answer = raw_post(gateway.url + "/mcp", INITIALIZE, {**ALICE, **hostile})
    assert answer.status == 403
    error = answer.json()["error"]
    assert (
        error["code"] == -32600
        and "'evil.example.com' is not a name of this gateway" in (error["message"])
    )
    assert "allowed_hosts" in error["message"]
    assert demo.requests() == []  # never forwarded
    (row,) = refusal_rows(gateway)
    assert "evil.example.com" in row["reason"] and row["method"] == "HTTP POST"


def test_the_unauthenticated_rebinding_attempt_is_403_not_401(gateway):
    hostile = {"Host": "evil.example.com", "Origin": "http://evil.example.com"}
    assert raw_post(gateway.url + "/mcp", INITIALIZE, hostile).status == 403


HOSTILE_ORIGINS = ["http://evil.example.com", "null", "https://app.example.com.evil.example", "x"]
OTHER_PORTS = ["mcp.example.com:8443", "127.0.0.1:1", "approvals.example.com:8443", "[::1]:80"]


def test_a_hostile_origin_or_a_listed_name_on_another_port_is_refused(gateway, demo):
    for origin in HOSTILE_ORIGINS:
        answer = raw_post(gateway.url + "/mcp", INITIALIZE, {**ALICE, "Origin": origin})
        assert answer.status == 403, origin
        assert "allowed_origins" in answer.json()["error"]["message"]
    for host in OTHER_PORTS:
        answer = raw_post(gateway.url + "/mcp", INITIALIZE, {**ALICE, "Host": host})
        assert answer.status == 403, host
    assert demo.requests() == []


PASSING = [
    {},  # no Origin: a client that is not a browser
    {"Origin": "http://127.0.0.1:{port}"},  # what the conformance suite sends as valid
    {"Host": "localhost:{port}", "Origin": "http://localhost:{port}"},
    {"Host": "mcp.example.com", "Origin": "https://app.example.com"},
    {"Host": "gw.internal:9443", "Origin": "https://gw.internal:9443"},
    {"Host": "approvals.example.com:443"},  # approvals.public_url's host
]


def test_the_gateways_own_names_and_the_allowlists_pass_and_the_origin_stays_here(gateway, demo):
    for headers in PASSING:
        filled = {k: v.format(port=gateway.port) for k, v in headers.items()}
        answer = raw_post(gateway.url + "/mcp", INITIALIZE, {**ALICE, **filled})
        assert answer.status == 200 and b"serverInfo" in answer.body, (filled, answer.body)
    # The upstream sees its own address and no Origin: the browser-facing check is done.
    for request in demo.requests():
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert "origin" not in headers and headers["host"] == f"127.0.0.1:{demo.port}"


def test_the_refusal_row_never_carries_the_callers_key(gateway):
    raw_post(gateway.url + "/mcp", INITIALIZE, {**ALICE, "Host": "evil.example.com"})
    (row,) = refusal_rows(gateway)
    assert ALICE["X-API-Key"] not in json.dumps(row)
