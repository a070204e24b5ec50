"""The glue every addon shares: `header_lists` reads the raw header fields once and must
say exactly what mitmproxy's own `Headers` API says of them (duplicates and all); the
Route and Identity a flow carries are set once and read through accessors that say which
stage did not run."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from holdgate.addons.flowstate import FlowState, Route, StageSkipped, header_lists
from holdgate.config.gateway_config import parse_config_text
from holdgate.identity import ANONYMOUS

CONFIG = "version: 1\nupstreams:\n  - name: crm\n    url: http://127.0.0.1:9/mcp\n"

NAMES = st.sampled_from(
    [b"Host", b"host", b"HOST", b"Mcp-Method", b"mcp-method", b"X-API-Key", b"\xc3\x84-x", b"\xff"]
)
VALUES = st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(st.lists(st.tuples(NAMES, VALUES), max_size=10))
def test_header_lists_says_what_the_headers_api_says(fields):
    headers = http.Headers(fields)
    expected: dict[str, list[str]] = {}
    for name in headers.keys():  # the slow way: a get_all per name, as it was written
        expected.setdefault(name.lower(), headers.get_all(name))
    found = header_lists(headers)
    assert {k: v for k, v in found.items() if k.isascii()} == {
        k: v for k, v in expected.items() if k.isascii()
    }
    assert sum(len(v) for v in found.values()) == len(fields)  # no value lost or merged


def test_a_stage_reading_the_route_or_identity_before_they_are_set_is_told_which_stage_skipped():
    st_ = FlowState()
    assert not st_.routed and not st_.authenticated
    with pytest.raises(StageSkipped, match="after the Router on a flow it did not route"):
        st_.route  # noqa: B018 - the read is what raises
    with pytest.raises(StageSkipped, match="after Authentication on a flow it did not"):
        st_.identity  # noqa: B018


def test_the_route_and_identity_are_set_once_and_the_route_is_frozen():
    config = parse_config_text(CONFIG)
    route = Route(config, config.upstreams[0], "127.0.0.1")
    st_ = FlowState()
    st_.route = route
    st_.identity = ANONYMOUS
    assert st_.route is route and st_.identity is ANONYMOUS
    with pytest.raises(StageSkipped, match="routed twice"):
        st_.route = Route(config, config.upstreams[0], "10.0.0.9")
    with pytest.raises(StageSkipped, match="authenticated twice"):
        st_.identity = ANONYMOUS
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.client_addr = "10.0.0.9"  # type: ignore[misc]
    assert st_.route.client_addr == "127.0.0.1"
    shown = st_.to_json()
    assert (shown["upstream"], shown["client_addr"]) == ("crm", "127.0.0.1")
    assert shown["identity"] == ANONYMOUS.to_json()
