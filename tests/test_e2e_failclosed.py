"""Fail closed: a fault injected into any hook refuses the flow; nothing passes unchecked."""

from __future__ import annotations

import pytest

from helpers.clients import META, MODERN, raw_post
from helpers.processes import ROOT

CONFIG = """
version: 1
upstreams:
  - name: demo
    url: {url}
rules:
  - name: lookups
    match: {{method: tools/call, tool: ["get_*"]}}
    action: allow
  - name: sql needs a dba
    match: {{tool: run_sql}}
    action: approve
    approvers: [dba]
    timeout: 5s
"""
HEADERS = {**MODERN, "Mcp-Method": "tools/call"}


def start_faulty(gateway_factory, demo, fault):
    return gateway_factory(
        CONFIG.format(url=demo.url),
        demo.url,
        env={"HOLDGATE_FAULT": fault},
        extra_scripts=[str(ROOT / "tests" / "fault_injection.py")],
    )


def call(tool: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"customer_id": 1, "query": "x"}, "_meta": META},
    }


@pytest.mark.parametrize(
    ("fault", "hook", "tool"),
    [
        ("holdgate.addons.router:route", "Router.requestheaders", "get_customer"),
        (
            "holdgate.addons.authentication:strip_credentials",
            "Authentication.requestheaders",
            "get_customer",
        ),
        ("holdgate.addons.enforcement:parse_body", "PolicyEnforcer.request", "get_customer"),
        ("holdgate.addons.approval_core:request_digest", "ApprovalHolds.request", "run_sql"),
        # the hold expires, but the store will not take the decision: refused, not released
        (
            "holdgate.store.sqlite_store:SqliteStore.append_approval_state",
            "ApprovalHolds.request",
            "run_sql",
        ),
        ("holdgate.addons.gate:state", "Gate.request", "get_customer"),
        # the write-ahead, the Gate's last step: the decision rows cannot be built, or queued
        ("holdgate.addons.decision_rows:args_digest", "Gate.request", "get_customer"),
        (
            "holdgate.store.writer:AuditWriter.submit_durable",
            "Gate.request",
            "get_customer",
        ),
    ],
)
def test_fault_in_a_request_hook_refuses_and_forwards_nothing(
    gateway_factory, demo, fault, hook, tool
):
    gw = start_faulty(gateway_factory, demo, fault)
    response = raw_post(gw.url + "/mcp", call(tool), {**HEADERS, "Mcp-Name": tool})
    assert response.status == 502, response.body
    error = response.json()["error"]
    assert error["code"] == -32603
    assert hook in error["message"]
    assert demo.requests() == []


@pytest.mark.parametrize(
    ("fault", "hook"),
    [
        ("holdgate.addons.responses:loads_strict", "Responses.response"),
        ("holdgate.addons.response_masking:mask_json", "Responses.response"),
    ],
)
def test_fault_in_a_response_hook_withholds_the_upstream_answer(gateway_factory, demo, fault, hook):
    gw = start_faulty(gateway_factory, demo, fault)
    response = raw_post(
        gw.url + "/mcp", call("get_customer"), {**HEADERS, "Mcp-Name": "get_customer"}
    )
    assert response.status == 502, response.body
    assert hook in response.json()["error"]["message"]
    assert b"@" not in response.body  # no customer e-mail slipped through
    assert len(demo.requests()) == 1  # it did reach the upstream; the answer was withheld
