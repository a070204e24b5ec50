"""Masking for the record: every profile, no exemption, no injected value, whole bodies."""

from __future__ import annotations

import base64
import json
import pickle

import pytest

from holdgate.config.gateway_config import parse_config_text
from holdgate.masking.injected import SECRET_MARK, secret_forms
from holdgate.masking.record_masking import (
    CREDENTIAL_MARK,
    INJECTED_MARK,
    UNKNOWN_TOOL,
    RecordMasking,
    mask_for_record,
    record_body,
    record_headers,
    scrub_row,
    tools_by_id,
)

TOKEN = "upstream-token-7f3a9c21e4"
CONFIG = f"""
version: 1
upstreams:
  - name: crm
    url: http://127.0.0.1:9
    inject:
      headers:
        Authorization: "Bearer {TOKEN}"
        X-Basic: "Basic {base64.b64encode(b"svc:basic-password-42").decode()}"
rules: []
masking:
  - name: pii
    detectors: [email, credit_card]
    strategy: partial
    exempt_groups: [compliance]
  - name: get-only
    detectors: [phone]
    tools: ["get_*"]
    strategy: redact
  - name: passwords
    paths: ["$..password"]
    strategy: redact
"""
EMAIL = "alice.johnson@example.com"
PHONE = "+44 20 7946 0958"


@pytest.fixture(scope="module")
def record() -> RecordMasking:
    return RecordMasking.from_config(parse_config_text(CONFIG), b"k" * 32)


def test_an_exempt_profile_still_masks_the_record(record) -> None:
    out = mask_for_record({"email": EMAIL}, record, "crm", None)
    assert out.value == {"email": "a***@example.com"}
    assert out.findings == {"email": 1}


def test_tool_scoped_profiles_follow_the_tool_and_apply_when_it_is_unknown(record) -> None:
    value = {"phone": PHONE}
    assert mask_for_record(value, record, "crm", "search_customers").value == value
    assert mask_for_record(value, record, "crm", "get_customer").value != value
    assert mask_for_record(value, record, "crm", UNKNOWN_TOOL).value != value


@pytest.mark.parametrize(
    "reflected",
    [
        f"Bearer {TOKEN}",
        TOKEN,
        base64.b64encode(TOKEN.encode()).decode(),
        "basic-password-42",
        "svc:basic-password-42",
    ],
)
def test_injected_values_are_scrubbed_from_strings_and_keys(record, reflected) -> None:
    value = {"echo": f"got {reflected}!", reflected: 1, "list": [reflected]}
    out = mask_for_record(value, record, "crm")
    text = json.dumps(out.value)
    assert reflected not in text
    assert text.count(SECRET_MARK) == 3
    assert out.findings["injected_credential"] == 3


def test_text_is_masked_as_text_and_the_input_is_not_changed(record) -> None:
    value = {"q": f"mail {EMAIL} token {TOKEN}"}
    out = mask_for_record(value, record, "crm")
    assert out.value == {"q": f"mail a***@example.com token {SECRET_MARK}"}
    assert value == {"q": f"mail {EMAIL} token {TOKEN}"}
    assert mask_for_record(f"x {EMAIL}", record, "crm").value == "x a***@example.com"


def test_short_derived_forms_are_not_scrubbed_but_the_raw_value_is() -> None:
    forms = [form.text for form in secret_forms(["Bearer ab"])]
    assert "Bearer ab" in forms and "ab" not in forms


def test_audit_rows_are_scrubbed_even_inside_serialised_json(record) -> None:
    row = {"args_masked": json.dumps({"a": f'"{TOKEN}"'}), "seq": 3}
    out = scrub_row(row, record)
    assert TOKEN not in out["args_masked"] and out["seq"] == 3


def call(msg_id, tool, arguments, **params) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, **params},
    }


def test_a_request_body_is_masked_whole_meta_and_client_answers_included(record) -> None:
    body = [
        call(1, "search", {"q": "x"}, _meta={"user": EMAIL}, inputResponses={"a": PHONE}),
        {"jsonrpc": "2.0", "id": "srv-1", "result": {"content": {"email": EMAIL, "tel": PHONE}}},
    ]
    out = record_body(json.dumps(body).encode(), record, "crm")
    text = out.content.decode()
    assert EMAIL not in text
    recorded = json.loads(text)
    assert recorded[0]["params"]["inputResponses"] == {"a": PHONE}  # search: no phone profile
    # the client's answer has no known tool: every profile applies
    assert recorded[1]["result"]["content"]["tel"] == "[REDACTED:phone]"
    assert out.findings == {"email": 2, "phone": 1} and out.dropped is None


def test_an_unchanged_body_is_kept_byte_for_byte(record) -> None:
    raw = b'{"jsonrpc": "2.0",  "id": 1, "method": "ping"}'
    assert record_body(raw, record, "crm").content == raw


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc":"2.0","id":1,"params":{"q":"' + EMAIL.encode() + b'"',  # truncated
        b'{"a": 1, "a": "' + EMAIL.encode() + b'"}',  # duplicate keys: masked as text
        b"email=" + EMAIL.encode(),
    ],
)
def test_a_body_that_is_not_json_is_masked_as_text(record, raw) -> None:
    out = record_body(raw, record, "crm")
    assert EMAIL.encode() not in out.content and b"example.com" in out.content


def test_a_body_that_is_not_text_is_left_out_with_its_size_and_digest(record) -> None:
    raw = b"\xff\xfe" + EMAIL.encode()
    out = record_body(raw, record, "crm")
    assert EMAIL.encode() not in out.content
    assert out.dropped == "not UTF-8 text"
    assert (
        f"{len(raw)} bytes".encode() in out.content and record.digest(raw).encode() in out.content
    )


def test_a_body_too_deep_to_mask_is_left_out(record) -> None:
    raw = ("[" * 5000 + json.dumps(EMAIL) + "]" * 5000).encode()
    out = record_body(raw, record, "crm")
    assert EMAIL.encode() not in out.content and out.dropped


def test_response_messages_are_masked_with_the_tool_they_answer(record) -> None:
    request = json.dumps([call(1, "get_customer", {}), call(2, "search", {})]).encode()
    answers = tools_by_id(request)
    response = [
        {"jsonrpc": "2.0", "id": 1, "result": {"phone": PHONE}},
        {"jsonrpc": "2.0", "id": 2, "result": {"phone": PHONE}},
    ]
    out = json.loads(
        record_body(json.dumps(response).encode(), record, "crm", answers=answers).content
    )
    assert out[0]["result"]["phone"] != PHONE and out[1]["result"]["phone"] == PHONE


def test_an_id_used_twice_is_not_guessed(record) -> None:
    request = json.dumps([call(1, "search", {}), call(1, "get_customer", {})]).encode()
    assert tools_by_id(request) == {"1": UNKNOWN_TOOL}


def test_an_event_stream_is_masked_event_by_event(record) -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {"email": EMAIL, "password": "hunter2"}}
    stream = (
        f": note {EMAIL}\nevent: message\nid: {TOKEN}\ndata: {json.dumps(message)}\n\n"
        f"data: plain {EMAIL}\n\ndata: cut {EMAIL}"
    ).encode()
    out = record_body(stream, record, "crm", event_stream=True)
    text = out.content.decode()
    assert EMAIL not in text and TOKEN not in text and "hunter2" not in text
    assert "[REDACTED:$..password]" in text and "plain a***@example.com" in text
    assert "cut" not in text  # the unterminated last event is left out


def test_headers_for_the_record(record) -> None:
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"12"),
        (b"X-Customer-Email", EMAIL.encode()),
        (b"Set-Cookie", b"session=abc"),
        (b"X-Auth-Token", b"t"),
        (b"Authorization", b"Bearer caller"),
        (b"X-Upstream", b"gw"),
        (b"X-Reflected", f"Bearer {TOKEN}".encode()),
        (b"X-Odd", b"\xff" + EMAIL.encode()),
    ]
    out = dict(
        record_headers(
            headers,
            record,
            "crm",
            injected=frozenset({b"x-upstream"}),
            drop=frozenset({b"authorization"}),
        )
    )
    assert out[b"Content-Type"] == b"application/json" and out[b"Content-Length"] == b"12"
    assert out[b"X-Customer-Email"] == b"a***@example.com"
    assert out[b"Set-Cookie"] == out[b"X-Auth-Token"] == CREDENTIAL_MARK
    assert b"Authorization" not in out
    assert out[b"X-Upstream"] == INJECTED_MARK
    assert out[b"X-Reflected"] == SECRET_MARK.encode()
    assert out[b"X-Odd"] == b"\xffa***@example.com"


def test_the_portable_form_pickles_and_rebuilds_the_same_masking(record) -> None:
    copy = pickle.loads(pickle.dumps(record.portable())).build()
    value = {"email": EMAIL, "phone": PHONE, "t": TOKEN}
    assert mask_for_record(value, copy, "crm").value == mask_for_record(value, record, "crm").value


def test_a_request_state_is_never_kept_in_a_flow_file(record: RecordMasking) -> None:
    """MCP 2026-07-28: the opaque state is recorded as a digest on the row, never as is."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "result": {"resultType": "input_required", "requestState": "opaque-state-4711"},
        }
    ).encode()
    recorded = record_body(body, record, "crm")
    assert b"opaque-state-4711" not in recorded.content
    assert b"requestState" in recorded.content
