"""Router in process: which upstream a request is for, and what it refuses before routing."""

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from helpers.flows import UPSTREAM_URL, call, error_of, gateway, mcp_flow, send
from holdgate.addons import http_seams
from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.router import Router, failure_category, failure_message
from holdgate.config.gateway_config import Upstream

pytestmark = pytest.mark.anyio

CONFIG = f"""version: 1
upstreams:
  - name: crm
    prefix: /crm
    url: {UPSTREAM_URL}/base
  - name: tickets
    host: tickets.example.test
  - name: default
    url: {UPSTREAM_URL}
rules: []
"""


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG, Router) as tctx:
        yield tctx


async def test_a_prefixed_upstream_gets_the_path_without_its_prefix(tctx):
    flow = await send(tctx, mcp_flow(call("x"), path="/crm/mcp?x=1"))
    assert flow.response is None
    request = flow.request
    assert (request.scheme, request.host, request.port) == ("http", "127.0.0.1", 9)
    assert request.path == "/base/mcp?x=1"
    assert request.host_header == "127.0.0.1:9"
    assert request.stream is False  # policy decides on the whole body


async def test_the_catch_all_upstream_takes_the_rest(tctx):
    flow = await send(tctx, mcp_flow(call("x"), path="/mcp"))
    assert flow.response is None
    assert flow.request.url == f"{UPSTREAM_URL}/mcp"


@pytest.mark.parametrize(
    "path", ["/crm/../admin/mcp", "/%2e%2e/mcp", "/crm/..%2fadmin", "/a//mcp", "/a/./mcp"]
)
async def test_a_non_canonical_path_is_400(tctx, path):
    flow = await send(tctx, mcp_flow(call("x"), path=path))
    status, code, message = error_of(flow)
    assert (status, code) == (400, -32600)
    assert "send the canonical path" in message


async def test_a_get_with_a_body_is_400(tctx):
    flow = await send(tctx, mcp_flow(call("x"), method="GET"))
    status, _, message = error_of(flow)
    assert status == 400 and "carries no MCP message" in message


async def test_no_matching_upstream_is_404(tmp_path):
    only_prefixed = (
        f"version: 1\nupstreams: [{{name: crm, prefix: /crm, url: {UPSTREAM_URL}}}]\nrules: []\n"
    )
    with gateway(tmp_path, only_prefixed, Router) as tctx:
        flow = await send(tctx, mcp_flow(call("x"), path="/other/mcp"))
    status, code, message = error_of(flow)
    assert (status, code) == (404, -32600)
    assert "no upstream is configured for" in message


async def test_regular_mode_routes_on_the_destination_not_the_host_header(tctx):
    flow = mcp_flow(
        call("x"), host="tickets.example.test", port=80, mode="regular", host_header="other.test"
    )
    status, _, message = error_of(await send(tctx, flow))
    assert status == 400
    assert 'names "other.test" but the request goes to "tickets.example.test"' in message


async def test_regular_mode_picks_the_upstream_by_destination_host(tctx):
    flow = mcp_flow(call("x"), host="tickets.example.test", port=80, mode="regular")
    flow.request.host_header = "tickets.example.test"
    await send(tctx, flow)
    assert flow.response is None
    assert flow.request.host == "tickets.example.test"  # a host upstream is not rewritten


async def test_without_a_loaded_config_everything_is_503():
    loader = ConfigLoader()  # never configured: no config
    with taddons.context(loader, Router(loader)) as tctx:
        flow = await send(tctx, mcp_flow(call("x")))
    status, _, message = error_of(flow)
    assert status == 503 and "no valid config" in message


def test_connection_strategy_is_lazy_and_a_later_eager_is_refused(tmp_path):
    router = Router(ConfigLoader())
    with taddons.context(Proxyserver(), router) as tctx:
        tctx.configure(router, connection_strategy="eager")  # as mitmproxy starts: its default
        assert tctx.options.connection_strategy == "lazy"
        with pytest.raises(exceptions.OptionsError, match="`lazy` only"):
            tctx.options.update(connection_strategy="eager")
        assert tctx.options.connection_strategy == "lazy"


async def test_a_flow_whose_client_host_was_not_kept_is_refused_not_passed(tctx):
    flow = mcp_flow(call("x"), path="/mcp")
    http_seams._client_hosts.pop(flow)
    await send(tctx, flow)
    assert flow.response is not None and flow.response.status_code == 502


async def test_a_rebound_host_is_403_in_reverse_mode(tctx):
    flow = await send(tctx, mcp_flow(call("x"), path="/mcp", client_host="evil.example.com"))
    assert flow.response is not None and flow.response.status_code == 403
    assert "DNS rebinding" in error_of(flow)[2]


def test_a_failed_upstream_is_named_to_the_client_by_name_and_kind_only():
    """The client learns which upstream and what kind of failure; the address and the
    network layer's words (a map of the internal network) stay in the record."""
    crm = Upstream(name="crm", url="http://10.0.0.5:9000")
    told, recorded = failure_message(crm, "Connect call failed\n('10.0.0.5', 9000)", reached=False)
    assert told == (
        "upstream 'crm' could not be reached (the connection failed); the request was not forwarded"
    )
    assert "10.0.0.5" not in told
    assert recorded == (
        f"{told} [upstream 'crm' at http://10.0.0.5:9000: Connect call failed ('10.0.0.5', 9000)]"
    )
    told, recorded = failure_message(crm, "peer reset", reached=True)
    assert "may have run" in told and "(the connection was reset)" in told
    assert "(" + "x" * 300 + ")" not in failure_message(crm, "x" * 1000, reached=True)[0]
    assert ": " + "x" * 300 + "]" in failure_message(crm, "x" * 1000, reached=True)[1]


@pytest.mark.parametrize(
    ("error", "category"),
    [
        ("[Errno 111] Connection refused", "the connection was refused"),
        ("TimeoutError: timed out", "it timed out"),
        ("TLS handshake failed: certificate verify failed", "the TLS handshake failed"),
        ("[Errno -2] Name or service not known", "its name did not resolve"),
        ("Connection reset by peer", "the connection was reset"),
        ("something else entirely", "the connection failed"),
    ],
)
def test_failure_categories(error: str, category: str) -> None:
    assert failure_category(error) == category
