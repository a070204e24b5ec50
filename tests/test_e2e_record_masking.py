"""The record is always masked: flow files and store rows, through a real mitmdump.

Whatever the caller was exempt from, whatever part of a request or response carried the
data (arguments, `_meta`, a client's answer, a body refused before parsing, a response
header), and whatever an upstream reflects of the credential the gateway injected.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mitmproxy.io import FlowReader

from conftest import free_port, stop
from mcpclient import connect, raw_post

pytestmark = pytest.mark.anyio

CONFIG = """
version: 1
identity:
  api_keys:
    - name: alice
      sha256: 9f7ed98529468ebc54d06a6b8442ca7f7379f470af51ab44b9d9910bb74d0a1c
      groups: [support]
    - name: carol
      sha256: a4daa9961472866ad80f918a49582a773c72ccadb634d7fef495335ecf23655c
      groups: [compliance, support]
upstreams:
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
ALICE = {"X-API-Key": "demo-alice-support"}
CAROL = {"X-API-Key": "demo-carol-compliance"}
TOKEN = "demo-upstream-token-5150-record"
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


@pytest.fixture
def gateway(demo, gateway_factory):
    return gateway_factory(CONFIG.format(url=demo.url, token=TOKEN), demo.url)


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


class Reflector(BaseHTTPRequestHandler):
    """A hostile upstream: hands back the credential it was sent, in its body and a header,
    with a customer's address in a header and a session cookie."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        credential = self.headers.get("Authorization", "")
        token = credential.partition(" ")[2]
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": request.get("id"),
                "result": {
                    "content": [{"type": "text", "text": f"you sent {credential}"}],
                    "token": token,
                    "nested": json.dumps({"auth": credential}),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Customer-Email", "alice@example.com")
        self.send_header("Set-Cookie", "session=s3ss10n-cookie-value; HttpOnly")
        self.send_header("X-Echo-Authorization", credential)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def reflector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Reflector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_reflected_credential_and_response_headers_never_reach_the_record(
    reflector, gateway_factory
):
    gw = gateway_factory(CONFIG.format(url=reflector, token=TOKEN), reflector)
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
