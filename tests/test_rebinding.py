"""The DNS-rebinding check as a pure function: which Host and Origin name this gateway."""

from __future__ import annotations

import pytest

from holdgate.config.configfile import ConfigErrors
from holdgate.config.gateway_config import parse_config_text
from holdgate.protocol.rebinding import (
    FrontNames,
    front_problem,
    parse_host_pattern,
    parse_origin_pattern,
)

UPSTREAMS = "version: 1\nupstreams: [{name: a, url: 'http://127.0.0.1:9'}]\n"

NAMES = FrontNames.build(
    [("127.0.0.1", 8080)],
    tls=False,
    check_host=True,
    public_url="https://approvals.example.com/holdgate",
    allowed_hosts=[parse_host_pattern("mcp.example.com"), parse_host_pattern("gw.internal:*")],
    allowed_origins=[parse_origin_pattern("https://app.example.com")],
)


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:8080", None),
        ("localhost:8080", "http://localhost:8080"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("mcp.example.com", "https://app.example.com"),
        ("MCP.example.com:80", None),  # case, and the default port of plain HTTP
        ("gw.internal:1234", "https://gw.internal:1234"),
        ("approvals.example.com:443", None),
        ("approvals.example.com:443", "https://approvals.example.com"),
    ],
)
def test_the_gateways_names_pass(host, origin):
    assert front_problem([host], [origin] if origin else [], NAMES) is None


@pytest.mark.parametrize(
    ("hosts", "origins", "says"),
    [
        (["evil.example.com"], [], "is not a name of this gateway"),
        (["evil.example.com"], ["http://evil.example.com"], "allowed_hosts"),
        (["127.0.0.1:8081"], [], "is not a name"),
        (["mcp.example.com:8443"], [], "is not a name"),
        (["approvals.example.com"], [], "is not a name"),  # port 80, public_url says 443
        ([], [], "0 Host headers"),
        (["127.0.0.1:8080", "evil.example.com"], [], "2 Host headers"),
        (["127.0.0.1:8080/x"], [], "malformed"),
        (["127.0.0.1:99999"], [], "malformed"),
        (["127.0.0.1:8080"], ["http://evil.example.com"], "allowed_origins"),
        (["127.0.0.1:8080"], ["null"], "allowed_origins"),
        (["127.0.0.1:8080"], ["http://127.0.0.1:8080/path"], "allowed_origins"),
        (["127.0.0.1:8080"], ["https://app.example.com:8443"], "allowed_origins"),
        (["127.0.0.1:8080"], ["http://app.example.com"], "allowed_origins"),  # scheme
        (["127.0.0.1:8080"], ["http://127.0.0.1:8080", "http://x"], "2 Origin headers"),
    ],
)
def test_anything_else_is_refused_saying_why(hosts, origins, says):
    problem = front_problem(hosts, origins, NAMES)
    assert problem is not None and says in problem


def test_as_a_regular_proxy_the_host_is_the_upstreams_and_only_the_origin_is_checked():
    names = FrontNames.build(
        [("upstream.example", 443)],
        tls=False,
        check_host=False,
        public_url=None,
        allowed_hosts=(),
        allowed_origins=(),
    )
    assert front_problem(["upstream.example"], [], names) is None
    assert front_problem(["upstream.example"], ["https://upstream.example"], names) is None
    assert front_problem(["upstream.example"], ["https://evil.example"], names) is not None


def test_a_null_origin_passes_only_when_listed():
    names = FrontNames.build(
        [("127.0.0.1", 80)],
        tls=False,
        check_host=True,
        public_url=None,
        allowed_hosts=(),
        allowed_origins=[parse_origin_pattern("null")],
    )
    assert front_problem(["127.0.0.1"], ["null"], names) is None


def test_the_allowlists_are_read_from_the_config_and_every_bad_entry_is_named():
    config = parse_config_text(
        UPSTREAMS + "allowed_hosts: [a.example, '[::1]:8080', 'b.example:*']\n"
        "allowed_origins: https://app.example\n"
    )
    assert [h.name for h in config.allowed_hosts] == ["a.example", "::1", "b.example"]
    assert config.allowed_origins[0].scheme == "https"
    with pytest.raises(ConfigErrors) as caught:
        parse_config_text(
            UPSTREAMS + "allowed_hosts:\n  - 'a.example:http'\n  - 'x/y'\n  - '[nothost]:1'\n"
            "allowed_origins:\n  - app.example\n  - https://app.example/path\n  - 3\n"
        )
    report = caught.value.report()
    for line, says in [
        (4, "'http' is not a port"),
        (5, "write a host name or address"),
        (6, "[nothost] is not an IPv6 address"),
        (8, "scheme://host[:port]"),
        (9, "an origin has no path"),
        (10, "expected a non-empty string"),
    ]:
        assert f":{line}:" in report and says in report, (line, says, report)
