"""`subscriptions/listen` in process (MCP 2026-07-28's replacement for the GET stream).

The listen POST is decided by rules like any method; its answer, a long-lived event
stream of notifications, passes the response stages event by event: masked, recorded one
row per event, and a notification naming a resource (or carrying a list of tools) the
caller may not use is dropped (or filtered) like a discovery listing.
"""

import json

import pytest
from mitmproxy import http

from helpers.configs import ALICE, BOB, CAROL, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    finish,
    gateway,
    mcp_flow,
    request_message,
    response_json,
    send,
    store_rows,
)
from helpers.processes import holdgate_cli
from holdgate.store.event_slices import recorded_messages

pytestmark = pytest.mark.anyio

EMAIL = "listen.victim@example.com"
MODERN = {"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "subscriptions/listen"}
CONFIG = (
    "version: 1\n"
    + identity("alice", "bob", "carol")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: compliance may not listen
    match: {{groups: [compliance], method: subscriptions/listen}}
    action: deny
    reason: no live feed for compliance
  - name: support listens
    match: {{groups: [support], method: subscriptions/listen}}
    action: allow
  - name: support reads customers
    match: {{groups: [support], method: resources/read, resource: ["crm://customers/**"]}}
    action: allow
  - name: support tools
    match: {{groups: [support], tool: "get_*"}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
"""
)


def listen(msg_id=1):
    return request_message("subscriptions/listen", msg_id, notifications={"toolsListChanged": True})


def notification(method, **params):
    return {"jsonrpc": "2.0", "method": method, "params": params}


def event(message) -> bytes:
    return f"event: message\ndata: {json.dumps(message)}\n\n".encode()


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:  # every addon: the Recorder is the last stage
        yield tctx


async def test_a_listen_is_allowed_by_its_rule_and_leaves_as_sent(tctx):
    flow = await send(tctx, mcp_flow(listen(), {**ALICE, **MODERN}))
    assert flow.response is None
    assert json.loads(flow.request.content) == listen()
    assert "subscriptions/listen" in flow.comment
    assert "allow (rule 'support listens')" in flow.comment


@pytest.mark.parametrize(
    ("caller", "says"),
    [(BOB, "default-deny"), (CAROL, "denied by rule 'compliance may not listen'")],
)
async def test_a_listen_no_rule_allows_or_a_rule_denies_is_refused(tctx, caller, says):
    flow = await send(tctx, mcp_flow(listen(7), {**caller, **MODERN}))
    body = response_json(flow)
    assert flow.response.status_code == 200  # a JSON-RPC error, as for any method
    assert body["id"] == 7 and body["error"]["code"] == -32003
    assert says in body["error"]["message"]


def test_policy_explain_decides_listen_like_any_method(tmp_path):
    path = tmp_path / "holdgate.yaml"
    path.write_text(CONFIG)
    allowed = holdgate_cli(
        "policy", "explain", str(path), "--user", "alice", "--groups", "support",
        "--method", "subscriptions/listen",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "support listens" in allowed.stdout and "allow" in allowed.stdout
    denied = holdgate_cli(
        "policy", "explain", str(path), "--user", "bob", "--groups", "engineering",
        "--method", "subscriptions/listen",
    )  # fmt: skip
    assert "default-deny" in denied.stdout


async def test_a_listen_stream_is_masked_filtered_and_every_event_recorded(tctx, tmp_path):
    flow = await send(tctx, mcp_flow(listen(), {**ALICE, **MODERN}))
    stream = http.Response.make(200, b"", {"Content-Type": "text/event-stream"})
    await answer(tctx, flow, stream)
    assert callable(flow.response.stream)  # streamed, never buffered
    upstream_events = [
        notification("notifications/tools/list_changed"),
        notification("notifications/message", level="info", data=f"new ticket from {EMAIL}"),
        notification("notifications/resources/updated", uri="crm://customers/42"),
        notification("notifications/resources/updated", uri="crm://payroll/2026"),
        notification(
            "notifications/tools/list_changed",
            tools=[{"name": "get_customer"}, {"name": "exec_shell"}],
        ),
        notification("notifications/resources/updated", uri=["crm://customers/1"]),
    ]
    seen = []
    for message in upstream_events:
        data = event(message)
        # Each event leaves as soon as it is complete (split mid-event: nothing, then it).
        first = b"".join(flow.response.stream(data[:7]))
        assert first == b""
        seen.append(b"".join(flow.response.stream(data[7:])))
    seen.append(b"".join(flow.response.stream(b"")))  # the upstream ends the stream
    sent = b"".join(seen)
    assert EMAIL.encode() not in sent
    out = [json.loads(line[6:]) for line in sent.splitlines() if line.startswith(b"data: ")]
    assert out[0] == upstream_events[0]
    assert out[1]["params"]["data"] == "new ticket from [REDACTED:email]"
    assert out[2] == upstream_events[2]  # a resource alice may read
    assert out[3]["params"]["tools"] == [{"name": "get_customer"}]  # filtered like a listing
    assert len(out) == 4  # payroll and the ambiguous uri never reached alice
    assert seen[3].startswith(b": dropped") and seen[5].startswith(b": dropped")
    finish(tctx)
    rows = store_rows(
        tmp_path,
        "SELECT seq, ts, flow_id, direction, method, decision, reason, args_masked, masked,"
        " extra FROM events WHERE direction IN ('server_notification', 'response') ORDER BY seq",
    )
    # The events that passed are gathered into slices; a dropped one has its own row, after
    # the slice before it.
    assert [r["decision"] for r in rows] == ["pass", "dropped", "pass", "dropped"]
    assert rows[1]["reason"] == rows[3]["reason"] == "names a resource this identity may not read"
    messages = [m for r in rows for m in recorded_messages(r)]
    assert [m.n for m in messages] == [1, 2, 3, 4, 5, 6]  # each findable by its number
    assert [m.method for m in messages] == [e["method"] for e in upstream_events]
    assert messages[1].message["params"]["data"] == "new ticket from [REDACTED:email]"
    assert messages[1].masked == {"email": 1}
    assert all(EMAIL not in (r["args_masked"] or "") for r in rows)
    assert "exec_shell" not in json.dumps(messages[4].message)
