"""Responses in process: every message an upstream sends passes the response stages, in
JSON, event streams, 202 bodies and error pages alike; nothing unchecked gets through."""

import json

import pytest
from mitmproxy import http

from helpers.configs import ALICE, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    finish,
    gateway,
    json_response,
    mcp_flow,
    response_json,
    result,
    send,
    store_rows,
)

pytestmark = pytest.mark.anyio

TOKEN = "responses-test-token-8d2c"
EMAIL = "mallory.victim@example.com"
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
    inject:
      headers: {{Authorization: "Bearer {TOKEN}"}}
rules:
  - name: reads
    match: {{tool: "get_*"}}
    action: allow
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
masking:
  - name: pii
    detectors: [email, credit_card]
    strategy: redact
response_headers:
  drop: [x-internal]
"""
)


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG) as tctx:  # every addon: Recorder is the last stage
        yield tctx


async def called(tctx, response, body=None):
    flow = await send(tctx, mcp_flow(body or call("get_customer"), ALICE))
    assert flow.response is None, flow.response
    await answer(tctx, flow, response)
    return flow


def text_of(flow) -> str:
    return flow.response.content.decode()


async def test_a_json_answer_is_masked_and_recorded_as_the_client_saw_it(tctx, tmp_path):
    flow = await called(tctx, json_response(result(1, {"text": f"mail {EMAIL}"})))
    assert response_json(flow) == result(1, {"text": "mail [REDACTED:email]"})
    finish(tctx)
    sql = "select masked, args_masked from events where direction = 'response'"
    (row,) = store_rows(tmp_path, sql)
    assert json.loads(row["masked"]) == {"email": 1}
    assert EMAIL not in row["args_masked"] and "[REDACTED:email]" in row["args_masked"]


async def test_a_202_with_a_body_is_masked_like_any_answer(tctx):
    accepted = json_response(result(1, {"text": f"card 4111 1111 1111 1111 of {EMAIL}"}), 202)
    flow = await called(tctx, accepted)
    assert flow.response.status_code == 202
    assert EMAIL not in text_of(flow) and "4111" not in text_of(flow)


async def test_cookies_and_dropped_headers_never_reach_the_client(tctx):
    headers = {"Set-Cookie": "sid=upstream-cookie", "X-Internal": "a", "X-Customer": EMAIL}
    flow = await called(tctx, json_response(result(1, {}), headers=headers))
    assert "set-cookie" not in flow.response.headers
    assert "x-internal" not in flow.response.headers
    assert flow.response.headers["x-customer"] == "[REDACTED:email]"


async def test_a_reflected_injected_credential_is_replaced(tctx):
    echo = json_response(result(1, {"seen": f"Bearer {TOKEN}"}), headers={"X-Echo": TOKEN})
    flow = await called(tctx, echo)
    assert TOKEN not in text_of(flow) and TOKEN not in str(flow.response.headers)
    assert "[REDACTED:injected_credential]" in response_json(flow)["result"]["seen"]


def escaped(text: str) -> str:
    """Every character as a JSON unicode escape: what a byte scan for the text cannot see."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def raw_json_response(body: bytes) -> http.Response:
    return http.Response.make(200, body, {"Content-Type": "application/json"})


async def test_an_unchanged_answer_goes_out_as_the_upstreams_bytes(tctx):
    body = b'{"jsonrpc": "2.0",  "id": 1, "result": {"n": 1.50, "text": "nothing \\"here\\""}}'
    flow = await called(tctx, raw_json_response(body))
    assert flow.response.content == body


async def test_a_changed_answer_is_written_anew(tctx):
    body = b'{"jsonrpc": "2.0",  "id": 1, "result": {"text": "mail ' + EMAIL.encode() + b'"}}'
    flow = await called(tctx, raw_json_response(body))
    assert response_json(flow) == result(1, {"text": "mail [REDACTED:email]"})


@pytest.mark.parametrize(
    "number", [b"4111111111111111.0", b"41111111111111111.0", b"4.1111111111111111e15"]
)
async def test_a_number_with_more_digits_than_a_float_is_written_anew(tctx, number):
    # The gateway read it rounded; a client reading exact decimals must not see more.
    body = b'{"jsonrpc": "2.0", "id": 1, "result": {"n": ' + number + b"}}"
    flow = await called(tctx, raw_json_response(body))
    assert number not in flow.response.content


async def test_an_injected_credential_spelled_in_unicode_escapes_is_replaced(tctx):
    body = '{"jsonrpc": "2.0", "id": 1, "result": {"seen": "' + escaped(f"Bearer {TOKEN}") + '"}}'
    flow = await called(tctx, raw_json_response(body.encode()))
    assert TOKEN not in text_of(flow) and TOKEN not in str(response_json(flow))
    assert "[REDACTED:injected_credential]" in response_json(flow)["result"]["seen"]


async def test_an_event_stream_event_unchanged_goes_out_as_sent(tctx):
    data = '{"jsonrpc":"2.0", "id":1, "result":{"text":"nothing here"}}'
    streamed = http.Response.make(200, b"", {"Content-Type": "text/event-stream"})
    flow = await called(tctx, streamed)
    sent = b"".join(flow.response.stream(f"event: message\ndata: {data}\n\n".encode()))
    assert f"data: {data}\n".encode() in sent


async def test_an_event_stream_echo_in_unicode_escapes_is_replaced(tctx):
    data = '{"jsonrpc":"2.0","id":1,"result":{"seen":"' + escaped(f"Bearer {TOKEN}") + '"}}'
    streamed = http.Response.make(200, b"", {"Content-Type": "text/event-stream"})
    flow = await called(tctx, streamed)
    sent = b"".join(flow.response.stream(f"event: message\ndata: {data}\n\n".encode()))
    assert escaped(TOKEN).encode() not in sent and TOKEN.encode() not in sent
    assert b"[REDACTED:injected_credential]" in sent


async def test_a_denied_messages_error_joins_the_upstreams_batch_answer(tctx):
    batch = [call("get_customer", msg_id=1), call("exec_shell", msg_id=2)]
    flow = await called(tctx, json_response([result(1, {"ok": True})]), batch)
    answers = {m["id"]: m for m in response_json(flow)}
    assert answers[1]["result"] == {"ok": True}
    assert answers[2]["error"]["code"] == -32003


async def test_an_error_page_is_masked_as_text(tctx):
    page = http.Response.make(
        500, f"lookup failed for {EMAIL}".encode(), {"Content-Type": "text/plain"}
    )
    flow = await called(tctx, page)
    assert flow.response.status_code == 500
    assert text_of(flow) == "lookup failed for [REDACTED:email]"


def weird_encoding() -> http.Response:
    response = http.Response.make(200, b"{}", {"Content-Type": "application/json"})
    response.headers["Content-Encoding"] = "x-weird"  # make() would drop an unknown one
    return response


@pytest.mark.parametrize(
    ("response", "says"),
    [
        (
            http.Response.make(200, b"hi", {"Content-Type": "text/html"}),
            "answered an MCP call with",
        ),
        (
            weird_encoding(),
            "unknown Content-Encoding",
        ),
        (http.Response.make(200, b"{bad", {"Content-Type": "application/json"}), "invalid JSON"),
        (
            http.Response.make(200, b"\xff\xfe", {"Content-Type": "application/octet-stream"}),
            "answered an MCP call with",
        ),
    ],
)
async def test_an_answer_that_cannot_be_checked_is_withheld(tctx, response, says):
    flow = await called(tctx, response)
    status, _, message = error_of(flow)
    assert status == 502 and says in message


async def test_an_event_stream_is_reframed_and_masked_event_by_event(tctx):
    stream = http.Response.make(
        200, b"", {"Content-Type": "text/event-stream", "Content-Length": "999"}
    )
    flow = await called(tctx, stream)
    assert "content-length" not in flow.response.headers
    assert flow.response.headers["transfer-encoding"] == "chunked"
    message = json.dumps(result(1, {"text": f"mail {EMAIL}"}))
    upstream = f": about {EMAIL}\n\nevent: message\nid: {EMAIL}\ndata: {message}\n\n".encode()
    sent = b"".join(
        b"".join(flow.response.stream(upstream[i : i + 10])) for i in range(0, len(upstream), 10)
    )
    sent += b"".join(flow.response.stream(b""))  # end of stream
    assert EMAIL.encode() not in sent
    assert b"about" not in sent  # comments are not passed on
    assert b"[REDACTED:email]" in sent and b"id: [REDACTED:email]" in sent
