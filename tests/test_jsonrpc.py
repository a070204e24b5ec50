import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.strategies import json_values
from holdgate.protocol.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    BodyError,
    check_routing_headers,
    loads_strict,
    parse_body,
)

LIMIT = 4096


def call(name="get_customer", args=None, msg_id=1):
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": args or {}},
    }


def test_single_tools_call_exposes_tool_and_arguments():
    body = parse_body(json.dumps(call(args={"customer_id": 3})).encode(), max_bytes=LIMIT)
    assert not body.is_batch
    (msg,) = body.messages
    assert (msg.kind, msg.method, msg.id, msg.tool, msg.arguments) == (
        "request",
        "tools/call",
        1,
        "get_customer",
        {"customer_id": 3},
    )


def test_batch_of_request_notification_and_response():
    batch = [
        call(msg_id="a"),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 7, "result": {}},
    ]
    body = parse_body(json.dumps(batch).encode(), max_bytes=LIMIT)
    assert body.is_batch
    assert [m.kind for m in body.messages] == ["request", "notification", "response"]


def test_resource_and_prompt_targets():
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "x://y"}}
    prompt = {"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": {"name": "p"}}
    body = parse_body(json.dumps([read, prompt]).encode(), max_bytes=LIMIT)
    assert [m.target for m in body.messages] == ["x://y", "p"]
    assert [m.tool for m in body.messages] == [None, None]


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"{not json", PARSE_ERROR, "invalid JSON"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}',
            PARSE_ERROR,
            "duplicate",
        ),
        (b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', PARSE_ERROR, "NaN"),
        (b"\xef\xbb\xbf{}", PARSE_ERROR, "byte-order mark"),
        (b'{"jsonrpc":"2.0","id":1,"method":"\xff"}', PARSE_ERROR, "not UTF-8"),
        (b"[]", INVALID_REQUEST, "empty"),
        (b"[1]", INVALID_REQUEST, "batch item 0"),
        (b'{"id":1,"method":"ping"}', INVALID_REQUEST, "jsonrpc"),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', INVALID_REQUEST, "id must be"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}',
            INVALID_REQUEST,
            "params.name",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[]}}',
            INVALID_REQUEST,
            "arguments must be",
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","result":{}}', INVALID_REQUEST, "both"),
        (b'{"jsonrpc":"2.0","result":{}}', INVALID_REQUEST, "needs an id"),
        (b'{"jsonrpc":"2.0","id":1} trailing', PARSE_ERROR, "invalid JSON"),
    ],
)
def test_malformed_bodies_are_refused(raw, code, fragment):
    with pytest.raises(BodyError, match=fragment) as info:
        parse_body(raw, max_bytes=LIMIT)
    assert info.value.code == code


def test_duplicate_key_nested_in_arguments_is_refused():
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_sql",'
    raw += b'"arguments":{"query":"select 1","query":"drop table customers"}}}'
    with pytest.raises(BodyError, match="duplicate key 'query'"):
        parse_body(raw, max_bytes=LIMIT)


def test_oversized_body_is_413():
    with pytest.raises(BodyError) as info:
        parse_body(b" " * (LIMIT + 1), max_bytes=LIMIT)
    assert info.value.status == 413


V = {"mcp-protocol-version": "2026-07-28"}


def test_routing_headers_must_agree_with_body():
    body = parse_body(json.dumps(call("get_customer")).encode(), max_bytes=LIMIT)
    check_routing_headers(body, {**V, "mcp-method": "tools/call", "mcp-name": "get_customer"})
    with pytest.raises(BodyError, match="Mcp-Method"):
        check_routing_headers(body, {**V, "mcp-method": "tools/list"})
    with pytest.raises(BodyError, match="Mcp-Name"):
        check_routing_headers(body, {**V, "mcp-method": "tools/call", "mcp-name": "exec_shell"})
    with pytest.raises(BodyError, match="Mcp-Name"):
        check_routing_headers(body, {**V, "mcp-method": "tools/call"})


def test_base64_wrapped_name_header_is_decoded():
    body = parse_body(json.dumps(call("grüße")).encode(), max_bytes=LIMIT)
    wrapped = "=?base64?Z3LDvMOfZQ==?="
    check_routing_headers(body, {**V, "mcp-method": "tools/call", "mcp-name": wrapped})
    with pytest.raises(BodyError):
        check_routing_headers(body, {**V, "mcp-method": "tools/call", "mcp-name": "=?base64?!!?="})


def test_routing_headers_cannot_describe_a_batch():
    body = parse_body(json.dumps([call(), call(msg_id=2)]).encode(), max_bytes=LIMIT)
    with pytest.raises(BodyError, match="batch"):
        check_routing_headers(body, {**V, "mcp-method": "tools/call"})


def test_param_headers_must_match_an_argument():
    body = parse_body(json.dumps(call(args={"region": "eu"})).encode(), max_bytes=LIMIT)
    check_routing_headers(
        body,
        {**V, "mcp-method": "tools/call", "mcp-name": "get_customer", "mcp-param-region": "eu"},
    )
    with pytest.raises(BodyError, match="mcp-param-region"):
        check_routing_headers(
            body,
            {**V, "mcp-method": "tools/call", "mcp-name": "get_customer", "mcp-param-region": "us"},
        )


@pytest.mark.parametrize("version", [None, "2025-11-25", "2025-06-18", "2026-7-28", "latest"])
def test_routing_headers_under_a_version_that_does_not_define_them_are_refused(version):
    body = parse_body(json.dumps(call("get_customer")).encode(), max_bytes=LIMIT)
    older = {} if version is None else {"mcp-protocol-version": version}
    check_routing_headers(body, older)  # a 2025 client sends none: fine
    for header in ({"mcp-method": "tools/call"}, {"mcp-name": "x"}, {"mcp-param-a": "1"}):
        with pytest.raises(BodyError, match="defined from MCP 2026-07-28") as info:
            check_routing_headers(body, {**older, **header})
        assert (info.value.status, info.value.code) == (400, -32600)


def test_modern_requests_need_their_standard_headers():
    body = parse_body(json.dumps(call("get_customer")).encode(), max_bytes=LIMIT)
    with pytest.raises(BodyError, match="Mcp-Method header is required") as info:
        check_routing_headers(body, V)
    assert info.value.code == -32020
    with pytest.raises(BodyError, match="Mcp-Name header is required for tools/call"):
        check_routing_headers(body, {**V, "mcp-method": "tools/call"})
    listing = parse_body(
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode(), max_bytes=LIMIT
    )
    check_routing_headers(listing, {**V, "mcp-method": "tools/list"})  # no name to mirror
    note = parse_body(b'{"jsonrpc": "2.0", "method": "notifications/x"}', max_bytes=LIMIT)
    check_routing_headers(note, V)  # the revision defines no headers for notifications


def test_the_version_header_must_match_the_body_meta():
    message = call("get_customer")
    message["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-08-01"}
    body = parse_body(json.dumps(message).encode(), max_bytes=LIMIT)
    headers = {**V, "mcp-method": "tools/call", "mcp-name": "get_customer"}
    with pytest.raises(BodyError, match="MCP-Protocol-Version header") as info:
        check_routing_headers(body, headers)
    assert info.value.code == -32020


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5))
def test_batch_parses_each_message_as_it_would_alone(names):
    batch = [call(name, msg_id=i) for i, name in enumerate(names)]
    whole = parse_body(json.dumps(batch).encode(), max_bytes=1 << 20).messages
    alone = [parse_body(json.dumps(m).encode(), max_bytes=1 << 20).messages[0] for m in batch]
    assert whole == tuple(alone)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"\\ud800"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\\udfff":1}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":["x","\\uDC00y"]}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"\\ude00\\ud83d"}}',  # reversed
    ],
)
def test_lone_surrogates_are_refused(raw):
    """Parsers disagree on them (Python keeps them, Go and Rust replace them with U+FFFD,
    others refuse): the rules must never see other text than the upstream reads."""
    with pytest.raises(BodyError, match="lone surrogate") as info:
        parse_body(raw, max_bytes=LIMIT)
    assert info.value.code == PARSE_ERROR


def test_paired_surrogates_and_an_escaped_backslash_are_text():
    raw = b'{"jsonrpc":"2.0","id":1,"method":"ping",'
    raw += b'"params":{"a":"\\ud83d\\ude00","b":"\\\\ud800"}}'
    (message,) = parse_body(raw, max_bytes=LIMIT).messages
    assert message.raw["params"] == {"a": "\U0001f600", "b": "\\ud800"}


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400 + b".0"])
def test_numbers_beyond_a_double_are_refused(number):
    raw = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n":' + number + b"}}"
    with pytest.raises(BodyError, match="out of range"):
        parse_body(raw, max_bytes=LIMIT)


@given(json_values, st.booleans())
def test_any_valid_json_reads_back_as_the_standard_library_reads_it(value, ascii_only):
    """The strictness only refuses: whatever it accepts is what `json.loads` gives."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert loads_strict(text.encode()) == json.loads(text)


@given(st.text(max_size=20), st.integers(0xD800, 0xDFFF), st.text(max_size=20), st.booleans())
def test_a_lone_surrogate_anywhere_in_a_string_is_refused(before, surrogate, after, as_key):
    text = before + chr(surrogate) + after
    value = {text: 1} if as_key else [text]
    encoded = json.dumps(value)  # ensure_ascii: the surrogate travels as a \u escape
    with pytest.raises(BodyError, match="lone surrogate"):
        loads_strict(encoded.encode())
