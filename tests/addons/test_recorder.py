"""Recorder in process: every message, both directions, reaches the store, masked; a
refusal gets its row and nothing more; a store that cannot be opened stops the gateway."""

import hashlib
import json

import pytest
from mitmproxy.exceptions import OptionsError

from helpers.configs import ALICE, CAROL, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    find,
    finish,
    gateway,
    json_response,
    mcp_flow,
    result,
    send,
    store_rows,
)
from holdgate.addons.recorder import Recorder

pytestmark = pytest.mark.anyio

TOKEN = "recorder-test-token-66aa"
EMAIL = "ada.lovelace@example.com"
CONFIG = (
    "version: 1\n"
    + identity("alice", "carol")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
    inject:
      headers: {{Authorization: "Bearer {TOKEN}"}}
rules:
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
    exempt_groups: [compliance]
"""
)
EVENTS = "select * from events order by seq"


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:
        yield tctx


async def test_a_call_and_its_answer_are_recorded_under_the_deciding_config(tctx, tmp_path):
    flow = await send(
        tctx, mcp_flow(call("search", {"q": EMAIL}), {**ALICE, "Mcp-Session-Id": "s-9"})
    )
    await answer(tctx, flow, json_response(result(1, {"found": EMAIL})))
    finish(tctx)
    rows = {row["direction"]: row for row in store_rows(tmp_path, EVENTS)}
    request, response = rows["request"], rows["response"]
    digest = hashlib.sha256(CONFIG.encode()).hexdigest()
    assert (request["direction"], request["target"], request["decision"], request["rule"]) == (
        "request",
        "search",
        "allow",
        "support",
    )
    assert (request["user"], request["session_id"], request["config_hash"]) == (
        "alice",
        "s-9",
        digest,
    )
    assert response["direction"] == "response" and response["target"] == "search"
    assert EMAIL not in json.dumps([request, response])
    assert json.loads(response["masked"]) == {"email": 1}
    (session,) = store_rows(tmp_path, "select * from sessions")
    assert (session["session_id"], session["user"]) == ("s-9", "alice")


async def test_an_exempt_callers_cleartext_is_masked_in_the_record(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(call("search", {"q": EMAIL}), CAROL))
    await answer(tctx, flow, json_response(result(1, {"found": EMAIL})))
    assert EMAIL in flow.response.text  # carol may see it
    finish(tctx)
    rows = {row["direction"]: row for row in store_rows(tmp_path, EVENTS)}
    assert set(rows) == {"request", "response"} and EMAIL not in json.dumps(rows)
    assert "[REDACTED:email]" in rows["response"]["args_masked"]


async def test_a_denied_call_is_recorded_with_its_rule(tctx, tmp_path):
    await send(tctx, mcp_flow(call("exec_shell", {"command": "id"}), ALICE))
    finish(tctx)
    (row,) = store_rows(tmp_path, EVENTS)
    assert (row["decision"], row["rule"], row["status"]) == ("deny", "no shell", 200)


async def test_an_unauthenticated_request_gets_a_refusal_row_and_nothing_else(tctx, tmp_path):
    await send(tctx, mcp_flow(call("search"), {"X-API-Key": "nope", "Mcp-Session-Id": "s-x"}))
    finish(tctx)
    (row,) = store_rows(tmp_path, EVENTS)
    assert (row["decision"], row["status"], row["session_id"]) == ("unauthenticated", 401, None)
    assert "nope" not in json.dumps(row)
    assert store_rows(tmp_path, "select * from sessions") == []


async def test_a_malformed_body_is_recorded_as_refused(tctx, tmp_path):
    await send(tctx, mcp_flow(b"{bad", ALICE))
    finish(tctx)
    (row,) = store_rows(tmp_path, EVENTS)
    assert (row["decision"], row["status"], row["user"]) == ("malformed", 400, "alice")


async def test_a_reflected_injected_credential_never_reaches_a_row(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(call("search"), ALICE))
    await answer(tctx, flow, json_response(result(1, {"you sent": f"Bearer {TOKEN}"})))
    finish(tctx)
    rows = store_rows(tmp_path, EVENTS)
    assert len(rows) == 2 and TOKEN not in json.dumps(rows)


def test_a_store_that_cannot_be_opened_stops_the_gateway(tctx, tmp_path):
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(OptionsError, match="holdgate_db: cannot open the audit store"):
        tctx.configure(find(tctx, Recorder), holdgate_db=str(tmp_path / "a-folder"))
