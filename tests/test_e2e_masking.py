"""Masking through the real gateway: what the client gets and what the record keeps."""

from __future__ import annotations

import json
import sqlite3
import time

import anyio
import pytest

from helpers.clients import connect, raw_post
from helpers.configs import ALICE, CAROL, identity
from helpers.leaks import assert_nothing_leaked
from helpers.processes import stop
from helpers.upstreams import Reply, json_reply, sse_reply

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "carol")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email, phone, credit_card, iban, us_ssn]
    strategy: partial
    exempt_groups: [compliance]
  - name: secrets
    detectors: [aws_access_key, stripe_key, generic_secret]
    paths: ["$..password", "$..api_key"]
    strategy: redact
"""
)


def customer_one(tmp_path) -> dict:
    """The cleartext record, read from the demo server's own database."""
    db = sqlite3.connect(tmp_path / "demo.sqlite3")
    db.row_factory = sqlite3.Row
    return dict(db.execute("select * from customers where id = 1").fetchone())


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # JSON responses, and SSE responses
async def test_customer_lookup_arrives_masked(gateway, tmp_path, mode):
    clear = customer_one(tmp_path)
    async with connect(gateway.url + "/mcp", ALICE, mode=mode) as client:
        result = await client.call_tool("get_customer", {"customer_id": 1})
    seen = json.dumps(result.model_dump(mode="json"))
    for field in ("email", "phone", "card_number", "iban", "ssn"):
        assert clear[field] not in seen, field
    assert clear["email"].split("@")[1] in seen  # partial keeps the domain
    assert clear["card_number"][-4:] in seen  # and the last four digits


async def test_compliance_sees_cleartext_but_the_record_does_not(gateway, tmp_path):
    clear = customer_one(tmp_path)
    async with connect(gateway.url + "/mcp", CAROL) as client:
        result = await client.call_tool("get_customer", {"customer_id": 1})
    seen = json.dumps(result.model_dump(mode="json"))
    assert clear["email"] in seen
    stored = _store_text(gateway)
    assert clear["email"] not in stored
    assert "exempt for group compliance" in stored


async def test_arguments_are_masked_in_the_record_and_the_flow_file(gateway, tmp_path):
    clear = customer_one(tmp_path)
    async with connect(gateway.url + "/mcp", ALICE) as client:
        found = await client.call_tool("search_customers", {"query": clear["email"]})
    assert not found.is_error  # the upstream got the real argument
    stored = _store_text(gateway)  # stops the gateway: its flow files are complete
    assert clear["email"] not in stored
    recorded = b"".join(p.read_bytes() for p in gateway.recordings.glob("*.mitm"))
    assert b"search_customers" in recorded
    assert clear["email"].encode() not in recorded
    assert clear["email"].split("@")[1].encode() in recorded  # partial: the domain is kept


async def test_secrets_in_config_tool_are_redacted(gateway):
    async with connect(gateway.url + "/mcp", ALICE) as client:
        result = await client.call_tool("get_service_config", {"service": "billing"})
    text = result.content[0].text
    assert "AKIAIOSFODNN7EXAMPLE" not in text
    assert "sk_live_" not in text
    assert "[REDACTED:aws_access_key]" in text


async def test_record_lists_what_was_masked_never_the_values(gateway, tmp_path):
    clear = customer_one(tmp_path)
    async with connect(gateway.url + "/mcp", ALICE) as client:
        await client.call_tool("get_customer", {"customer_id": 1})
    stored = _store_text(gateway)
    for field in ("email", "phone", "card_number", "iban"):
        assert clear[field] not in stored
    findings = [
        json.loads(m)
        for (m,) in sqlite3.connect(gateway.db).execute(
            "select masked from events where masked is not null"
        )
    ]
    assert any(f.get("email", 0) >= 1 and f.get("credit_card", 0) >= 1 for f in findings)
    recordings = b"".join(p.read_bytes() for p in gateway.recordings.glob("*.mitm"))
    assert recordings, "no flow file was written"
    assert clear["email"].encode() not in recordings
    assert b"demo-alice-support" not in recordings
    # nor anywhere else the gateway wrote: log, store files, flow files
    assert_nothing_leaked(
        gateway, *(clear[f] for f in ("email", "card_number", "iban")), ALICE["X-API-Key"]
    )


def _store_text(gateway) -> str:
    """Everything the audit store holds, after the gateway stopped (its writer flushed)."""
    stop(gateway.proc)
    db = sqlite3.connect(gateway.db)
    rows = db.execute("select * from events").fetchall()
    assert rows, "no events were recorded"
    return json.dumps(rows)


async def test_oversized_sse_event_cuts_the_stream_and_nothing_unmasked_passes(
    demo, gateway_factory, tmp_path
):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url, options={"holdgate_max_body": "2k"})
    received: list[str] = []

    async def on_message(message) -> None:
        received.append(repr(message))

    with pytest.raises(BaseException):  # noqa: B017 - the call fails, however the SDK says it
        async with connect(
            gw.url + "/mcp", ALICE, mode="legacy", message_handler=on_message
        ) as client:
            with anyio.fail_after(20):
                result = await client.call_tool("search_customers", {"query": "", "limit": 20})
                received.append(repr(result))
    clear = customer_one(tmp_path)
    assert clear["email"] not in "".join(received)
    assert "cut this stream" in gw.log_text() or "event stream cut" in gw.log_text()


ERROR_PAGE = Reply(  # an upstream whose failure page leaks data: a 500 in text/plain
    500,
    b"lookup failed for ada@example.com (card 4111 1111 1111 1111)\n",
    [("Content-Type", "text/plain; charset=utf-8")],
)


def test_a_non_json_error_page_is_masked_as_text(gateway_factory, fake_upstream):
    upstream = fake_upstream({"/": ERROR_PAGE})
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
    answer = raw_post(gw.url + "/mcp", call, ALICE)
    assert answer.status == 500
    text = answer.body.decode()
    assert "lookup failed for" in text
    assert "ada@example.com" not in text and "4111 1111 1111 1111" not in text
    assert "1111" in text  # partial: the last four digits stay
    deadline = time.monotonic() + 10
    rows: list = []
    while time.monotonic() < deadline and not rows:
        with sqlite3.connect(gw.db) as db:
            rows = db.execute(
                "SELECT masked, args_masked FROM events WHERE direction = "
                "'response' AND masked IS NOT NULL"
            ).fetchall()
        time.sleep(0.1)
    assert rows and json.loads(rows[0][0]) == {"email": 1, "credit_card": 1}
    assert "ada@example.com" not in rows[0][1]


SPLIT_EVENTS = [
    {"jsonrpc": "2.0", "method": "notifications/progress",
     "params": {"progressToken": 1, "progress": 1, "message": "emailing alice.split@exa"}},
    {"jsonrpc": "2.0", "method": "notifications/progress",
     "params": {"progressToken": 1, "progress": 2, "message": "mple.com now"}},
    {"jsonrpc": "2.0", "id": 1,
     "result": {"content": [{"type": "text", "text": "sent"}], "isError": False}},
]  # fmt: skip


def test_an_email_split_across_two_sse_events_is_masked_in_the_second(
    gateway_factory, fake_upstream
):
    # one write and flush per event: separate chunks
    upstream = fake_upstream({"/": sse_reply(SPLIT_EVENTS, pause=0.05)})
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "notify", "arguments": {}, "_meta": {"progressToken": 1}},
    }
    answer = raw_post(gw.url + "/mcp", call, ALICE)
    text = answer.body.decode()
    assert answer.status == 200, text
    assert "emailing alice.split@exa" in text  # the first half was sent before it was whole
    assert "a***@example.com now" in text  # the rest became the (partial) mask of the whole
    assert text.count("mple.com") == text.count("a***@example.com")  # only inside the mask
    assert "sent" in text
    stored = _store_text(gw)
    assert stored.count("mple.com") == stored.count("a***@example.com")
    assert "email(split)" in stored


DISGUISED = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {
        "content": [{"type": "text", "text": "see structuredContent"}],
        "structuredContent": {
            "ada.key@example.com": {"card": 4111111111111111},
            "note": "ping ada.zw\u200b@example.com or ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ",
            "raw": "ada.esc\\u0040example.com",
        },
    },
}


def test_pii_in_keys_numbers_and_disguises_is_masked(gateway_factory, fake_upstream):
    # PII in a key, a number, and behind look-alike characters
    upstream = fake_upstream({"/": json_reply(DISGUISED)})
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
    answer = raw_post(gw.url + "/mcp", call, ALICE)
    assert answer.status == 200, answer.body
    got = json.loads(answer.body)["result"]["structuredContent"]
    assert got == {
        "a***@example.com": {"card": "************1111"},
        "note": "ping a***@example.com or a***@example.com",
        "raw": "a***@example.com",
    }
    stored = _store_text(gw)
    for clear in ("ada.key@", "4111111111111111", "ada.zw", "ａｄａ", "ada.esc"):
        assert clear not in stored and json.dumps(clear)[1:-1] not in stored, clear
