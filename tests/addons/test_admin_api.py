"""AdminApi's route table in process: each path reaches the handler registered for it."""

import pytest

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
