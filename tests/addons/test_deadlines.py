"""ConnectionDeadlines in process, with an injected clock: a client must send promptly."""

import pytest
from mitmproxy.test import taddons, tflow

from helpers.flows import mcp_flow
from holdgate.addons.deadlines import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    ConnectionDeadlines,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watch():
    clock = Clock()
    deadlines = ConnectionDeadlines(clock=clock)
    with taddons.context(deadlines):
        yield deadlines, clock


def late(deadlines) -> list[tuple[str, str]]:
    return [(d.client.id, d.waiting_for) for d in deadlines.expired()]


def test_a_client_that_sends_no_headers_in_time_is_due(watch):
    deadlines, clock = watch
    client = tflow.tclient_conn()
    deadlines.client_connected(client)
    clock.now += HEADER_TIMEOUT - 0.1
    assert late(deadlines) == []
    clock.now += 0.2
    assert late(deadlines) == [(client.id, "request headers")]
    assert late(deadlines) == []  # reported once, then off the watch


def test_headers_start_the_body_clock_and_a_whole_request_stops_it(watch):
    deadlines, clock = watch
    flow = mcp_flow({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    deadlines.client_connected(flow.client_conn)
    clock.now += HEADER_TIMEOUT - 1
    deadlines.requestheaders(flow)
    clock.now += BODY_TIMEOUT - 1  # past the header deadline, within the body's
    assert late(deadlines) == []
    clock.now += 2
    assert late(deadlines) == [(flow.client_conn.id, "request body")]
    deadlines.requestheaders(flow)
    deadlines.request(flow)
    clock.now += 10 * KEEPALIVE_TIMEOUT  # held approvals and streams are never cut
    assert late(deadlines) == []


def test_a_kept_alive_http1_connection_must_send_its_next_request(watch):
    deadlines, clock = watch
    flow = tflow.tflow(resp=True)
    deadlines.response(flow)
    clock.now += KEEPALIVE_TIMEOUT + 1
    assert late(deadlines) == [(flow.client_conn.id, "the next request")]


def test_http2_connections_are_not_rearmed_by_one_response(watch):
    deadlines, clock = watch
    flow = tflow.tflow(resp=True)
    flow.request.http_version = "HTTP/2.0"
    deadlines.response(flow)
    clock.now += KEEPALIVE_TIMEOUT + 1
    assert late(deadlines) == []


def test_a_client_gone_is_off_the_watch(watch):
    deadlines, clock = watch
    client = tflow.tclient_conn()
    deadlines.client_connected(client)
    deadlines.client_disconnected(client)
    clock.now += HEADER_TIMEOUT + 1
    assert late(deadlines) == []
