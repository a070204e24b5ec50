"""The glue every addon shares: `header_lists` reads the raw header fields once and must
say exactly what mitmproxy's own `Headers` API says of them (duplicates and all)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from holdgate.addons.flowstate import header_lists

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
