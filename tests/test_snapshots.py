"""Flow snapshots for recording: what mitmproxy's own `get_state()` says, cheaper."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from holdgate.recording.snapshots import Snapshots


def flows() -> list[http.HTTPFlow]:
    plain = tflow.tflow(resp=True)
    failed = tflow.tflow(err=True)
    tls = tflow.tflow(resp=True)
    tls.client_conn.sni = "mcp.example"
    tls.client_conn.tls_version = "TLSv1.3"
    tls.client_conn.alpn = b"http/1.1"
    edited = tflow.tflow(resp=True)
    edited.backup()
    edited.request.path = "/changed"
    edited.metadata["holdgate"] = {"decisions": [{"rule": "r", "action": "allow"}]}
    return [plain, failed, tls, edited]


@pytest.mark.parametrize("flow", flows(), ids=["plain", "error", "tls", "edited"])
def test_a_snapshot_is_what_mitmproxy_serializes(flow: http.HTTPFlow) -> None:
    snapshots = Snapshots()
    assert snapshots.flow_state(flow) == flow.get_state()
    assert snapshots.flow_state(flow) == flow.get_state()  # from the cache, still equal


def test_flows_on_one_connection_share_its_state_until_it_changes() -> None:
    snapshots = Snapshots()
    first = tflow.tflow(resp=True)
    second = tflow.tflow(resp=True)
    second.client_conn, second.server_conn = first.client_conn, first.server_conn
    a, b = snapshots.flow_state(first), snapshots.flow_state(second)
    assert a["client_conn"] is b["client_conn"]
    for conn, change in (
        (first.client_conn, {"sni": "other.example"}),
        (first.client_conn, {"timestamp_end": 1234.5}),
        (first.server_conn, {"peername": ("127.0.0.2", 8443)}),
        (first.server_conn, {"tls_version": "TLSv1.2"}),
    ):
        for name, value in change.items():
            setattr(conn, name, value)
        assert snapshots.flow_state(second) == second.get_state(), change


def test_the_connections_are_put_back_even_when_serializing_fails() -> None:
    flow = tflow.tflow(resp=True)
    client, server = flow.client_conn, flow.server_conn
    flow.metadata["unserializable"] = (n for n in range(1))  # deepcopy refuses a generator
    with pytest.raises(TypeError):
        Snapshots().flow_state(flow)
    assert flow.client_conn is client and flow.server_conn is server


def test_the_cache_is_bounded() -> None:
    snapshots = Snapshots(bound=3)
    for _ in range(10):
        snapshots.flow_state(tflow.tflow(resp=True))
    assert len(snapshots._states) == 3
