"""The record is always masked: flow files and store rows, through a real mitmdump.

Whatever the caller was exempt from, whatever part of a request or response carried the
data (arguments, `_meta`, a client's answer, a body refused before parsing, a response
header), and whatever an upstream reflects of the credential the gateway injected.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from mitmproxy.io import FlowReader

from helpers.clients import connect, raw_post
from helpers.configs import ALICE, CAROL, identity
from helpers.leaks import assert_nothing_leaked
from helpers.processes import stop
from helpers.upstreams import Reply, Request, json_reply

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "carol")
    + """upstreams:
  - name: demo
    url: {url}
    inject:
      headers:
        Authorization: "Bearer {token}"
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email, phone, credit_card, iban, us_ssn]
    strategy: partial
    exempt_groups: [compliance]
"""
)
TOKEN = "demo-upstream-token-5150-record"
CONFIG_VALUES = {"token": TOKEN}  # for the `gateway` fixture
PII_FIELDS = ("email", "phone", "card_number", "iban", "ssn")


def customers(tmp_path: Path) -> list[dict]:
    """The cleartext records, read from the demo server's own database."""
    db = sqlite3.connect(tmp_path / "demo.sqlite3")
    db.row_factory = sqlite3.Row
    return [dict(row) for row in db.execute("select * from customers order by id")]


def recorded(gateway) -> tuple[str, list]:
    """Everything the record holds once the gateway stopped (its writers flushed): the store's
    rows, the flow files (raw and decoded) and the gateway's log, as one text; and the flows."""
    stop(gateway.proc)
    db = sqlite3.connect(gateway.db)
    tables = [name for (name,) in db.execute("select name from sqlite_master where type='table'")]
    parts = [json.dumps(db.execute(f"select * from {t}").fetchall()) for t in tables]  # noqa: S608
    flows = []
    for path in sorted(gateway.recordings.glob("*.mitm")):
        raw = path.read_bytes()
        parts.append(raw.decode("utf-8", "replace"))
        with path.open("rb") as fh:
            flows.extend(FlowReader(fh).stream())
    for flow in flows:
        for message in (flow.request, flow.response):
            if message is not None:
                parts.append(repr(message.headers.fields))
                parts.append((message.get_content(strict=False) or b"").decode("utf-8", "replace"))
    parts.append(gateway.log_text())
    return "\n".join(parts), flows


def assert_clear_of(text: str, values) -> None:
    leaked = [value for value in values if value in text]
    assert not leaked, f"in the record: {leaked}"


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # JSON responses, and SSE responses
async def test_an_exempt_callers_answers_are_masked_in_the_record(gateway, tmp_path, mode):
    everyone = customers(tmp_path)
    async with connect(gateway.url + "/mcp", CAROL, mode=mode) as client:
        result = await client.call_tool("search_customers", {"query": "", "limit": 20})
    assert everyone[0]["email"] in json.dumps(result.model_dump(mode="json"))  # exempt
    text, flows = recorded(gateway)
    assert any(b"search_customers" in (f.request.content or b"") for f in flows)
    assert_clear_of(text, [c[name] for c in everyone for name in PII_FIELDS])
    assert "***@example.com" in text  # masked, not left out
    assert_clear_of(text, [TOKEN, CAROL["X-API-Key"]])  # injected, and the caller's own


async def test_meta_client_answers_and_refused_bodies_are_masked_in_the_flow_file(
    gateway, tmp_path
):
    first, second, third, fourth = customers(tmp_path)[:4]
    url = gateway.url + "/mcp"
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "search_customers",
            "arguments": {"query": "nobody"},
            "_meta": {"contact": first["email"], "progressToken": first["phone"]},
        },
    }
    raw_post(url, call, ALICE)
    answer = {  # the client's answer to a server request (an elicitation)
        "jsonrpc": "2.0",
        "id": "elicit-1",
        "result": {"action": "accept", "content": {"email": second["email"]}},
    }
    raw_post(url, answer, ALICE)
    malformed = ('{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x",'
                 f'"arguments":{{"query":"{third["email"]}"}}}}').encode()  # fmt: skip
    assert raw_post(url, malformed, ALICE).status == 400
    unauthenticated = dict(call, params={"name": "x", "arguments": {"q": fourth["email"]}})
    assert raw_post(url, unauthenticated, {"X-API-Key": "demo-bad-key-9917"}).status == 401
    text, flows = recorded(gateway)
    assert_clear_of(text, [c[name] for c in (first, second, third, fourth) for name in PII_FIELDS])
    assert_clear_of(text, [TOKEN, ALICE["X-API-Key"], "demo-bad-key-9917"])
    (malformed_flow,) = [f for f in flows if b'"id":3,' in (f.request.content or b"")]
    assert malformed_flow.response.status_code == 400
    body = malformed_flow.request.get_content()
    assert b'"query":"' in body and third["email"].split("@")[1].encode() in body  # partial
    for flow in flows:
        if flow.response is not None and flow.response.status_code == 401:  # if kept at all
            assert fourth["email"].split("@")[1].encode() in flow.request.get_content()


def reflect(request: Request) -> Reply:
    """A hostile upstream: hands back the credential it was sent, in its body and a header,
    with a customer's address in a header and a session cookie."""
    credential = request.headers.get("authorization", "")
    token = credential.partition(" ")[2]
    result = {
        "content": [{"type": "text", "text": f"you sent {credential}"}],
        "token": token,
        "nested": json.dumps({"auth": credential}),
    }
    return json_reply(
        {"jsonrpc": "2.0", "id": request.json().get("id"), "result": result},
        headers=[
            ("X-Customer-Email", "alice@example.com"),
            ("Set-Cookie", "session=s3ss10n-cookie-value; HttpOnly"),
            ("X-Echo-Authorization", credential),
        ],
    )


def test_a_reflected_credential_and_response_headers_never_reach_the_record(
    fake_upstream, gateway_factory
):
    reflector = fake_upstream(reflect)
    gw = gateway_factory(CONFIG.format(url=reflector.url, token=TOKEN), reflector.url)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "t"}}
    answer = raw_post(gw.url + "/mcp", call, ALICE)
    assert answer.status == 200
    text, flows = recorded(gw)
    assert_clear_of(text, [TOKEN, "alice@example.com", "s3ss10n-cookie-value"])
    response = next(f.response for f in flows if f.response is not None)
    assert response.headers["x-customer-email"] == "a***@example.com"
    # kept as a placeholder, unless the gateway already stopped it on the way to the client
    assert response.headers.get("set-cookie") in (None, "[credential removed by holdgate]")
    assert response.headers["x-echo-authorization"] == "[credential removed by holdgate]"
    assert "[REDACTED:injected_credential]" in response.get_text()
    assert reflector.received[-1].headers["authorization"] == f"Bearer {TOKEN}"  # it was sent
    assert_nothing_leaked(gw, TOKEN, "s3ss10n-cookie-value", ALICE["X-API-Key"])
