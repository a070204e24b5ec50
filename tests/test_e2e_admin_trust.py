"""Issue 25 item 8: the admin listener trusts auth-proxy headers only by its own config.

With the MCP listener's `identity.trusted_header` (from loopback), any local process could
decide approvals as any approver by sending `X-Forwarded-User` to the admin port, where no
auth proxy stands. Trust there is `admin.trusted_header`, off unless configured.
"""

from __future__ import annotations

import anyio
import pytest

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls, wait_for_pending
from helpers.clients import connect
from helpers.configs import ALICE, DANA
from helpers.processes import free_port
from holdgate.config.gateway_config import parse_config_text
from holdgate.configfile import ConfigErrors
from test_e2e_approvals import api

pytestmark = pytest.mark.anyio

TRUSTED = """  trusted_header:
    from: [127.0.0.1/32]
    user: X-Forwarded-User
    groups: X-Forwarded-Groups
"""
ADMIN_TRUST = """admin:
  trusted_header:
    from: ["{network}"]
    user: X-Admin-User
    groups: X-Admin-Groups
"""
# The MCP listener trusts an auth proxy on loopback; the admin listener trusts nobody's headers.
MCP_TRUST_ONLY = APPROVALS_CONFIG.replace("upstreams:\n", TRUSTED + "upstreams:\n", 1)
BOTH = MCP_TRUST_ONLY + ADMIN_TRUST.format(network="127.0.0.1/32")
AS_DANA = {"X-Forwarded-User": "dana", "X-Forwarded-Groups": "dba"}
AS_DANA_ADMIN = {"X-Admin-User": "dana", "X-Admin-Groups": "dba"}


def _start(gateway_factory, demo, config: str):
    return gateway_factory(
        config.format(url=demo.url, timeout="20s", grant="0s"),
        demo.url,
        options={"holdgate_admin": f"127.0.0.1:{free_port()}"},
    )


async def test_mcp_listener_trust_never_decides_on_the_admin_port(demo, gateway_factory):
    gw = _start(gateway_factory, demo, MCP_TRUST_ONLY)
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        results = []

        async def call():
            results.append(await client.call_tool("run_sql", DELETE))

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        path = f"/approvals/{pending['approval_id']}"
        assert api(gw.admin, "/approvals", AS_DANA)[0] == 401
        assert api(gw.admin, path, AS_DANA)[0] == 401
        status, body = api(gw.admin, path + "/approve", AS_DANA, {"reason": "forged"})
        assert status == 401, body
        assert "admin.trusted_header" in body["error"]  # how to configure it, if meant
        assert api(gw.admin, path + "/approve", AS_DANA_ADMIN, {})[0] == 401
        # nothing was decided, not even recorded as an attempt by "dana"
        history = oneshot.approval(gw.db, pending["approval_id"])["history"]
        assert [h["state"] for h in history] == ["pending"]
        assert sql_calls(demo) == []
        # an approver with an API key still decides
        status, body = api(gw.admin, path + "/approve", DANA, {"reason": "ok"})
        assert status == 200, body
    assert not results[0].is_error
    assert sql_calls(demo) == [DELETE["query"]]
    record = oneshot.approval(gw.db, pending["approval_id"])
    assert (record["state"], record["decider"]) == ("approved", "dana")


async def test_admin_trusted_header_from_loopback_decides(demo, gateway_factory):
    gw = _start(gateway_factory, demo, BOTH)
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        results = []

        async def call():
            results.append(await client.call_tool("run_sql", DELETE))

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        path = f"/approvals/{pending['approval_id']}"
        # the MCP listener's header names are not the admin listener's
        assert api(gw.admin, path + "/approve", AS_DANA, {})[0] == 401
        status, listing = api(gw.admin, "/approvals", AS_DANA_ADMIN)
        assert status == 200 and listing[0]["approval_id"] == pending["approval_id"]
        status, body = api(gw.admin, path + "/approve", AS_DANA_ADMIN, {"reason": "proxy"})
        assert status == 200, body
    assert not results[0].is_error
    record = oneshot.approval(gw.db, pending["approval_id"])
    assert (record["state"], record["decider"], record["reason"]) == ("approved", "dana", "proxy")


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0"])
def test_admin_trust_from_everywhere_is_refused(network):
    text = APPROVALS_CONFIG.format(url="http://127.0.0.1:9", timeout="20s", grant="0s")
    text += ADMIN_TRUST.format(network=network)
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text, "gw.yaml")
    message = str(info.value)
    assert "admin.trusted_header.from" in message and "gw.yaml:" in message
    assert "127.0.0.1/32" in message  # the fix


def test_admin_trust_without_from_is_refused():
    text = APPROVALS_CONFIG.format(url="http://127.0.0.1:9", timeout="20s", grant="0s")
    text += "admin:\n  trusted_header:\n    user: X-Admin-User\n"
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text, "gw.yaml")
    assert "from" in str(info.value) and "admin.trusted_header" in str(info.value)


def test_admin_trust_is_off_by_default():
    text = MCP_TRUST_ONLY.format(url="http://127.0.0.1:9", timeout="20s", grant="0s")
    config = parse_config_text(text)
    assert config.identity is not None and config.identity.trusted_header is not None
    assert config.admin.trusted_header is None
