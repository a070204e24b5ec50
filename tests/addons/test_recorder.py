"""Recorder in process: every message, both directions, reaches the store, masked; a
call's decision is in the store before it leaves, or it does not leave; a refusal gets its
row and nothing more; a store that cannot be opened stops the gateway."""

import asyncio
import hashlib
import json
import sqlite3
from typing import Any

import pytest
from mitmproxy.exceptions import OptionsError

from helpers.configs import ALICE, CAROL, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    find,
    finish,
    gateway,
    json_response,
    mcp_flow,
    request_message,
    result,
    send,
    store_rows,
)
from holdgate.addons.audit_store import AuditStore
from holdgate.masking.masker import MaskingError
from holdgate.store import AuditWriter, SqliteStore, Writer

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
    in_order = store_rows(tmp_path, EVENTS)
    assert [row["direction"] for row in in_order] == ["request", "response", "outcome"]
    rows = {row["direction"]: row for row in in_order}
    request, response, outcome = rows["request"], rows["response"], rows["outcome"]
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
    assert EMAIL not in json.dumps(in_order)
    assert json.loads(response["masked"]) == {"email": 1}
    # the outcome follows the decision, on the same flow: status, latency, what was masked
    assert outcome["flow_id"] == request["flow_id"] == flow.id
    assert (outcome["target"], outcome["status"], request["status"]) == ("search", 200, None)
    assert outcome["latency_ms"] is not None and outcome["masked"] is None
    assert json.loads(outcome["extra"])["masked"] == {"email": 1}
    (session,) = store_rows(tmp_path, "select * from sessions")
    assert (session["session_id"], session["user"]) == ("s-9", "alice")


async def test_an_exempt_callers_cleartext_is_masked_in_the_record(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(call("search", {"q": EMAIL}), CAROL))
    await answer(tctx, flow, json_response(result(1, {"found": EMAIL})))
    assert EMAIL in flow.response.text  # carol may see it
    finish(tctx)
    rows = {row["direction"]: row for row in store_rows(tmp_path, EVENTS)}
    assert set(rows) == {"request", "response", "outcome"} and EMAIL not in json.dumps(rows)
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
    assert len(rows) == 3 and TOKEN not in json.dumps(rows)


def test_a_store_that_cannot_be_opened_stops_the_gateway(tctx, tmp_path):
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(OptionsError, match="holdgate_store: cannot open the audit store"):
        tctx.configure(find(tctx, AuditStore), holdgate_store=str(tmp_path / "a-folder"))


# --- write-ahead: the decision is on record before the call leaves ---------------------


def left(flow) -> bool:
    """Whether the request would go to the upstream (no answer of the gateway's own, and
    the upstream's credential in it)."""
    return flow.response is None and flow.request.headers.get("Authorization") == f"Bearer {TOKEN}"


def rows_now(tmp_path) -> list[dict[str, Any]]:
    """The store's events as another process sees them right now (nothing flushed)."""
    with sqlite3.connect(tmp_path / "audit.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(EVENTS)]


def replace_writer(tctx, writer: Writer) -> Writer:
    audit = find(tctx, AuditStore)
    assert audit.writer is not None
    audit.writer.close()
    audit.writer = writer
    return writer


class BrokenTarget:
    """A store that opens but cannot take a batch (a full disk)."""

    def append_batch(self, rows: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def probe(self) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        pass


async def test_the_decision_is_durable_before_the_call_leaves(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(call("search", {"q": "wal-1"}), ALICE))
    assert left(flow)
    (row,) = rows_now(tmp_path)  # committed: the upstream has not even been asked yet
    assert (row["direction"], row["decision"], row["rule"], row["flow_id"]) == (
        "request",
        "allow",
        "support",
        flow.id,
    )
    assert json.loads(row["args_masked"]) == {"q": "wal-1"} and row["status"] is None


async def test_every_message_of_a_batch_is_on_record_in_one_commit(tctx, tmp_path):
    batch = [call("search", {"q": n}, msg_id=n) for n in range(3)] + [call("exec_x", msg_id=9)]
    flow = await send(tctx, mcp_flow(batch, ALICE))
    assert left(flow)
    rows = rows_now(tmp_path)
    assert [r["decision"] for r in rows] == ["allow", "allow", "allow", "deny"]
    assert [r["seq"] for r in rows] == list(range(rows[0]["seq"], rows[0]["seq"] + 4))


async def test_a_full_store_refuses_the_call_and_does_not_forward_it(tctx, tmp_path):
    replace_writer(tctx, AuditWriter(lambda create: BrokenTarget(), "full disk"))
    flow = await send(tctx, mcp_flow(call("search", {"q": "never"}), ALICE))
    status, code, message = error_of(flow)
    assert (status, code) == (503, -32603) and "was not forwarded" in message
    assert "Authorization" not in flow.request.headers
    # the next call is refused at once: the writer knows the store fails
    again = await send(tctx, mcp_flow(call("search"), ALICE))
    assert error_of(again)[0] == 503 and "cannot be written" in error_of(again)[2]


async def test_a_locked_store_refuses_the_call_and_does_not_forward_it(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:
        db = SqliteStore(tmp_path / "audit.sqlite3")
        replace_writer(tctx, db.writer(busy_timeout=0.2, retry_interval=0.05))
        lock = sqlite3.connect(tmp_path / "audit.sqlite3", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        flow = await send(tctx, mcp_flow(call("search", {"q": "locked-out"}), ALICE))
        status, _, message = error_of(flow)
        assert status == 503 and "was not forwarded" in message and not left(flow)
        lock.execute("ROLLBACK")
        lock.close()
        db.close()
    # its decision row was never written, not even once the store was free again
    assert not [r for r in store_rows(tmp_path, EVENTS) if "locked-out" in r["args_masked"]]


async def test_a_batch_larger_than_the_audit_queue_is_refused_whole(tctx, tmp_path):
    db = SqliteStore(tmp_path / "audit.sqlite3")
    writer = replace_writer(tctx, db.writer(queue_size=3))
    batch = [call("search", {"q": n}, msg_id=n) for n in range(4)]
    flow = await send(tctx, mcp_flow(batch, ALICE))
    status, _, message = error_of(flow)
    assert status == 503 and "not forwarded" in message and not left(flow)
    finish(tctx)
    db.close()
    # no part of it is on record (its refusal rows do not fit either: counted lost)
    assert store_rows(tmp_path, EVENTS) == [] and writer.lost == 4


async def test_arguments_that_cannot_be_masked_are_refused_not_forwarded(
    tctx, tmp_path, monkeypatch
):
    """Whatever makes the record's masking fail (it refuses what it cannot mask safely),
    the call is refused on record, never forwarded with its arguments unrecorded."""

    def cannot_mask(*args: Any, **kwargs: Any) -> Any:
        raise MaskingError("the value is nested too deeply to mask")

    monkeypatch.setattr("holdgate.addons.decision_rows.mask_for_record", cannot_mask)
    flow = await send(tctx, mcp_flow(call("search", {"sql": EMAIL}), ALICE))
    status, code, message = error_of(flow)
    assert (status, code) == (502, -32603) and "cannot be masked for the audit record" in message
    assert not left(flow)
    finish(tctx)
    (row,) = store_rows(tmp_path, EVENTS)
    assert json.loads(row["extra"])["refused"]["kind"] == "unrecordable"
    assert EMAIL not in json.dumps(row)


async def test_text_that_is_json_but_for_an_out_of_range_number_is_masked_as_text(tctx, tmp_path):
    """1e999 is no JSON number the strict parser takes (it would be read as infinity), so
    the embedded text is masked as text: the record holds no email, the call goes on."""
    arguments = {"sql": '{"limit": 1e999, "who": "' + EMAIL + '"}'}
    flow = await send(tctx, mcp_flow(call("search", arguments), ALICE))
    assert left(flow)
    finish(tctx)
    (row,) = store_rows(tmp_path, EVENTS)
    assert EMAIL not in json.dumps(row) and "1e999" in row["args_masked"]


async def test_best_effort_forwards_when_the_store_fails_and_counts_the_loss(tmp_path):
    with gateway(tmp_path, CONFIG.replace("masking:", "audit: best_effort\nmasking:")) as tctx:
        writer = replace_writer(tctx, AuditWriter(lambda create: BrokenTarget(), "full disk"))
        first = await send(tctx, mcp_flow(call("search"), ALICE))  # queued, fails later
        assert left(first)
        for _ in range(100):
            if not writer.healthy:
                break
            await asyncio.sleep(0.01)
        second = await send(tctx, mcp_flow(call("search"), ALICE))
        assert left(second) and writer.lost >= 1


# --- sessions without a session id (MCP 2026-07-28), and trace context -------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SESSIONS = "select * from sessions order by seq"


def modern(message: dict[str, Any], client: Any = None, **meta: Any) -> dict[str, Any]:
    """`message` as a 2026-07-28 client sends it: version and client in `_meta`."""
    info = {"io.modelcontextprotocol/clientInfo": client} if client is not None else {}
    message["params"]["_meta"] = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        **info,
        **meta,
    }
    return message


async def modern_call(tctx, headers, client: Any = None, **meta: Any):
    flow = await send(tctx, mcp_flow(modern(call("search"), client, **meta), headers))
    await answer(tctx, flow, json_response(result(1, {"ok": True})))
    return flow


async def test_calls_without_a_session_id_are_grouped_per_identity_and_client(tctx, tmp_path):
    cli = {"name": "cli", "version": "1.0"}
    await modern_call(tctx, ALICE, cli)
    await modern_call(tctx, ALICE, cli)
    await modern_call(tctx, ALICE, {"name": "ide", "version": "2"})
    await modern_call(tctx, CAROL, cli)
    finish(tctx)
    events = store_rows(tmp_path, EVENTS)
    assert all(row["session_id"] for row in events)
    sessions = store_rows(tmp_path, SESSIONS)
    assert [(s["user"], s["client"], s["kind"]) for s in sessions] == [
        ("alice", "cli/1.0", "grouped"),
        ("alice", "ide/2", "grouped"),
        ("carol", "cli/1.0", "grouped"),
    ]
    assert {s["protocol_version"] for s in sessions} == {"2026-07-28"}
    by_session = {
        s["session_id"]: [e["user"] for e in events if e["session_id"] == s["session_id"]]
        for s in sessions
    }
    assert [len(rows) for rows in by_session.values()] == [6, 3, 3]  # request, response, outcome
    assert all(
        set(users) == {s["user"]} for s, users in zip(sessions, by_session.values(), strict=True)
    )


async def test_without_client_info_the_user_agent_groups(tctx, tmp_path):
    await modern_call(tctx, {**ALICE, "User-Agent": "agent/3\x1b[2J"})
    await modern_call(tctx, ALICE)
    finish(tctx)
    assert [s["client"] for s in store_rows(tmp_path, SESSIONS)] == [
        "agent/3[2J",
        "unknown client",
    ]


async def test_a_traceparent_is_on_the_calls_rows_and_a_forged_one_only_flagged(tctx, tmp_path):
    await modern_call(tctx, ALICE, traceparent=TRACEPARENT)
    await modern_call(tctx, ALICE, traceparent="00-" + "0" * 32 + "-00f067aa0ba902b7-01\n")
    finish(tctx)
    rows = store_rows(tmp_path, EVENTS)
    assert [r["traceparent"] for r in rows] == [TRACEPARENT] * 3 + [None] * 3
    flagged = [json.loads(r["extra"]).get("traceparent_invalid") for r in rows]
    assert flagged == [None] * 3 + [True, None, None]


def initialize() -> dict[str, Any]:
    return request_message(
        "initialize",
        protocolVersion="2025-11-25",
        capabilities={},
        clientInfo={"name": "legacy-client", "version": "0.9"},
    )


async def test_a_legacy_initialize_takes_the_session_its_response_opens(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(initialize(), ALICE))
    opened = {"Mcp-Session-Id": "s-opened"}
    await answer(
        tctx, flow, json_response(result(1, {"protocolVersion": "2025-11-25"}), 200, opened)
    )
    call_flow = await send(tctx, mcp_flow(call("search", msg_id=2), {**ALICE, **opened}))
    await answer(tctx, call_flow, json_response(result(2, {})))
    finish(tctx)
    rows = store_rows(tmp_path, EVENTS)
    assert [(r["method"], r["direction"], r["session_id"]) for r in rows] == [
        ("initialize", "request", None),  # before its response, the id is not known
        ("initialize", "response", "s-opened"),
        ("initialize", "outcome", "s-opened"),
        ("tools/call", "request", "s-opened"),
        ("tools/call", "response", "s-opened"),
        ("tools/call", "outcome", "s-opened"),
    ]
    (session,) = store_rows(tmp_path, SESSIONS)
    assert (session["session_id"], session["kind"], session["client"]) == (
        "s-opened",
        "mcp",
        "legacy-client/0.9",
    )


async def test_a_stateless_servers_initialize_is_grouped_with_what_follows(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(initialize(), ALICE))
    await answer(tctx, flow, json_response(result(1, {"protocolVersion": "2025-11-25"})))
    await modern_call(tctx, ALICE)
    finish(tctx)
    rows = store_rows(tmp_path, EVENTS)
    assert rows[0]["session_id"] is None
    assert len({r["session_id"] for r in rows[1:]}) == 1
    (session,) = store_rows(tmp_path, SESSIONS)
    assert (session["kind"], session["client"]) == ("grouped", "legacy-client/0.9")
