"""AdminApi's route table in process: each path reaches the handler registered for it."""

import asyncio

import pytest
from mitmproxy.test import taddons

from helpers.processes import free_port
from holdgate.addons.admin_api import AdminApi
from holdgate.approvals.adminhttp import AdminRequest, AdminResponse

pytestmark = pytest.mark.anyio


def answering(name: str):
    async def handler(request: AdminRequest) -> AdminResponse:
        return AdminResponse(200, {"route": name, "path": request.path})

    return handler


@pytest.fixture
def api() -> AdminApi:
    api = AdminApi()
    api.route("/approvals/*", answering("approvals"))
    api.route("/metrics", answering("metrics"))
    return api


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/approvals", "approvals"),
        ("/approvals?x=1", "approvals"),
        ("/approvals/abc/status?t=1", "approvals"),
        ("/metrics", "metrics"),
        ("/metrics?name[]=x", "metrics"),
    ],
)
async def test_a_registered_path_reaches_its_route(api, path, route):
    answer = await api.handle(AdminRequest("GET", path, {}, b"", "127.0.0.1"))
    assert (answer.status, answer.payload) == (200, {"route": route, "path": path})


@pytest.mark.parametrize("path", ["/", "/approvalsX", "/metrics/more", "/campaigns"])
async def test_an_unknown_path_is_a_404(api, path):
    answer = await api.handle(AdminRequest("GET", path, {}, b"", "127.0.0.1"))
    assert answer.status == 404
    assert answer.payload == {"error": "see GET /approvals or GET /campaigns"}


def test_a_path_registered_twice_is_refused(api):
    with pytest.raises(ValueError, match="/metrics is registered twice"):
        api.route("/metrics", answering("again"))


async def test_a_route_that_raises_answers_500_without_its_message(api):
    async def broken(request: AdminRequest) -> AdminResponse:
        raise RuntimeError("secret detail")

    api.route("/broken", broken)
    port = free_port()
    with taddons.context(api) as tctx:
        tctx.configure(api, holdgate_admin=f"127.0.0.1:{port}")
        await api._start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /broken HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            first = await asyncio.wait_for(reader.readuntil(b"}"), 10)
            second = await asyncio.wait_for(reader.readuntil(b"}"), 10)
            writer.close()
        finally:
            api.done()
    assert first.startswith(b"HTTP/1.1 500 ")
    assert b'"error": "internal error: RuntimeError"' in first
    assert b"secret detail" not in first
    # the connection outlived the failure: the pipelined request behind it was answered
    assert second.startswith(b"HTTP/1.1 200 ") and b'"route": "metrics"' in second
