"""Mcp-Param-* headers carry the argument the tool's schema maps, never "any argument".

Issue 13 item 9. MCP 2026-07-28: a tool's inputSchema property with `x-mcp-header: Name`
is mirrored in the header `Mcp-Param-Name`; a header that disagrees is HeaderMismatch
(-32020, HTTP 400). Pure tests here; the e2e through mitmdump is at the end.
"""

from __future__ import annotations

import json

import pytest

from helpers.clients import MODERN, raw_post
from helpers.upstreams import Reply, Request, result_for
from holdgate.policy.tool_pins import PinBook, header_params
from holdgate.protocol.jsonrpc import HEADER_MISMATCH, BodyError, check_routing_headers, parse_body

SCHEMA = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "x-mcp-header": "Region"},
        "query": {"type": "string"},
        "options": {
            "type": "object",
            "properties": {"limit": {"type": "integer", "x-mcp-header": "Limit"}},
        },
        "dry_run": {"type": "boolean", "x-mcp-header": "Dry-Run"},
    },
}
TOOL = {"name": "execute_sql", "description": "Run SQL in a region", "inputSchema": SCHEMA}
DECLARED = header_params(TOOL)
ARGS = {
    "location": "eu-west1",
    "query": "us-east1",
    "options": {"limit": 10},
    "dry_run": True,
}


def body(args):
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "execute_sql", "arguments": args},
    }
    return parse_body(json.dumps(message).encode(), max_bytes=1 << 16)


def headers(**params):
    out = {
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "execute_sql",
    }
    out.update({f"mcp-param-{k.replace('_', '-')}": v for k, v in params.items()})
    return out


def refused(args, hdrs, declared):
    with pytest.raises(BodyError) as info:
        check_routing_headers(body(args), hdrs, declared)
    assert info.value.code == HEADER_MISMATCH and info.value.status == 400
    return info.value.message


def test_the_schema_mapping_is_read_from_x_mcp_header():
    assert DECLARED == {
        "region": ("location",),
        "limit": ("options", "limit"),
        "dry-run": ("dry_run",),
    }
    assert header_params({"name": "t"}) is None  # no schema: unknown, not "none declared"
    assert header_params(None) is None
    assert header_params({"name": "t", "inputSchema": {"type": "object"}}) == {}


def test_a_name_declared_twice_or_not_a_token_maps_to_nothing():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "x-mcp-header": "Tenant"},
            "b": {"type": "string", "x-mcp-header": "tenant"},
            "c": {"type": "string", "x-mcp-header": "bad name:x"},
            "d": {"type": "string", "x-mcp-header": "Ok"},
        },
    }
    assert header_params({"inputSchema": schema}) == {"ok": ("d",)}


@pytest.mark.parametrize(
    "hdrs",
    [
        headers(region="eu-west1"),
        headers(Region="eu-west1"),
        headers(region="eu-west1", limit="10", dry_run="true"),
        headers(limit="10.0"),
        headers(limit="1e1"),
        headers(region="=?base64?ZXUtd2VzdDE=?="),
        headers(),
    ],
)
def test_headers_that_mirror_the_mapped_argument_pass(hdrs):
    check_routing_headers(body(ARGS), {k.lower(): v for k, v in hdrs.items()}, DECLARED)


def test_a_header_matching_another_argument_is_refused():
    """The bug: `us-east1` is the value of `query`, so "matches any argument" let it pass
    while an upstream routing on Mcp-Param-Region sent the call to another region."""
    message = refused(ARGS, headers(region="us-east1"), DECLARED)
    assert "mcp-param-region" in message and "$.location" in message


@pytest.mark.parametrize(
    ("hdrs", "fragment"),
    [
        (headers(location="eu-west1"), "declares no x-mcp-header 'location'"),
        (headers(query="us-east1"), "declares no x-mcp-header 'query'"),
        (headers(limit="ten"), "$.options.limit"),
        (headers(limit="11"), "$.options.limit"),
        (headers(dry_run="True"), "$.dry_run"),
        (headers(dry_run="1"), "$.dry_run"),
        (headers(region="=?base64?!!?="), "base64"),
        (headers(region=" eu-west1"), "$.location"),
    ],
)
def test_headers_the_schema_does_not_map_to_that_value_are_refused(hdrs, fragment):
    assert fragment in refused(ARGS, hdrs, DECLARED)


def test_a_header_for_an_absent_argument_is_refused():
    message = refused({"query": "x"}, headers(region="eu-west1"), DECLARED)
    assert "no argument $.location" in message


def test_an_object_argument_cannot_be_mirrored():
    args = {**ARGS, "location": {"zone": "eu-west1"}}
    refused(args, headers(region="eu-west1"), DECLARED)


class TestSchemaUnknown:
    """Without a seen schema, Mcp-Param-<X> must name an argument X and carry its value."""

    def test_the_named_argument_passes(self):
        check_routing_headers(body(ARGS), headers(location="eu-west1"), None)
        check_routing_headers(body({"Region": "eu"}), headers(region="eu"), None)

    def test_the_value_of_another_argument_is_refused(self):
        message = refused(ARGS, headers(location="us-east1"), None)
        assert "$.location" in message

    def test_a_header_naming_no_argument_is_refused(self):
        message = refused(ARGS, headers(region="eu-west1"), None)
        assert "has not seen this tool's schema" in message

    def test_two_arguments_differing_only_in_case_are_ambiguous(self):
        refused({"region": "eu", "Region": "eu"}, headers(region="eu"), None)

    def test_nested_values_are_not_found_by_name(self):
        refused(ARGS, headers(limit="10"), None)


def test_header_errors_are_header_mismatch():
    modern = {"mcp-protocol-version": "2026-07-28"}
    assert refused(ARGS, {**modern, "mcp-method": "tools/list"}, None).startswith("Mcp-Method")
    long_name = "mcp-param-" + "x" * 5000
    assert len(refused(ARGS, {**headers(), long_name: "1"}, DECLARED)) < 400


def test_the_pin_book_maps_the_tool_as_listed_now():
    book = PinBook()
    assert book.header_params("db", "execute_sql") is None
    book.observe("db", TOOL, "2026-01-01T00:00:00Z")
    assert book.header_params("db", "execute_sql") == DECLARED
    moved = json.loads(json.dumps(TOOL))
    moved["inputSchema"]["properties"]["query"]["x-mcp-header"] = "Region"
    del moved["inputSchema"]["properties"]["location"]["x-mcp-header"]
    book.observe("db", moved, "2026-01-01T00:01:00Z")
    assert book.header_params("db", "execute_sql")["region"] == ("query",)
    assert book.header_params("other", "execute_sql") is None


# --- through a real mitmdump ------------------------------------------------------------


class SchemaUpstream:
    """A minimal MCP server (the answer of a `FakeUpstream`): lists `execute_sql` with
    x-mcp-header, answers calls, and keeps what it received (arguments and Mcp-Param-*
    headers)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.url = ""  # set once served

    def __call__(self, request: Request) -> Reply:
        message = request.json()
        if message.get("method") == "tools/list":
            return result_for(request, {"tools": [TOOL]})
        params = {k: v for k, v in request.headers.items() if k.startswith("mcp-param-")}
        self.calls.append({"arguments": message["params"]["arguments"], "headers": params})
        return result_for(request, {"content": [{"type": "text", "text": "ok"}]})


CONFIG = """
version: 1
upstreams:
  - name: db
    url: {url}
rules:
  - name: all
    match: {{method: [tools/list, tools/call]}}
    action: allow
"""


@pytest.fixture
def upstream(fake_upstream):
    schema = SchemaUpstream()
    schema.url = fake_upstream(schema).url
    return schema


def _call(gw, args, params):
    message = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "execute_sql", "arguments": args},
    }
    hdrs = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "execute_sql", **params}
    return raw_post(gw.url + "/mcp", message, hdrs)


def test_e2e_mcp_param_header_must_carry_the_schema_mapped_argument(upstream, gateway_factory):
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    args = {"location": "eu-west1", "query": "us-east1"}
    # Before the schema is seen: the header must name the argument it mirrors.
    unseen = _call(gw, args, {"Mcp-Param-Region": "us-east1"})
    assert unseen.status == 400 and unseen.json()["error"]["code"] == HEADER_MISMATCH
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    listed = raw_post(gw.url + "/mcp", listing, {**MODERN, "Mcp-Method": "tools/list"})
    assert listed.status == 200, listed.body
    # Now known: Region is `location`; the value of `query` is refused, not forwarded.
    wrong = _call(gw, args, {"Mcp-Param-Region": "us-east1"})
    assert wrong.status == 400, wrong.body
    assert wrong.json()["error"]["code"] == HEADER_MISMATCH
    assert "$.location" in wrong.json()["error"]["message"]
    undeclared = _call(gw, args, {"Mcp-Param-Query": "us-east1"})
    assert undeclared.status == 400
    right = _call(gw, args, {"Mcp-Param-Region": "eu-west1"})
    assert right.status == 200, right.body
    assert upstream.calls == [{"arguments": args, "headers": {"mcp-param-region": "eu-west1"}}]
