"""Issue 27 item 4 in a real headless Chromium: the approval inbox behind an auth proxy
(a loopback reverse proxy adding the admin listener's trusted headers, as oauth2-proxy
does), through a real mitmdump with the demo server.

What an approver and a non-approver see (the DOM Chromium built), a hostile argument
inert, a form posted by another site refused and recorded, a form posted from the
inbox's own origin taken, and a screenshot in the test's tmp dir."""

from __future__ import annotations

import json

import anyio
import pytest

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG, sql_calls, wait_for_pending
from helpers.browser import dump_dom, screenshot
from helpers.clients import connect
from helpers.configs import ALICE
from helpers.inbox import AuthProxy, StaticSite, csrf_of, request
from helpers.processes import free_port

DEMO_PER_TEST = True

pytestmark = pytest.mark.anyio

ADMIN_TRUST = """admin:
  trusted_header:
    from: [127.0.0.1/32]
    user: X-Admin-User
    groups: X-Admin-Groups
"""
QUERY = "DELETE FROM orders WHERE id = 1 -- <script>document.title='owned'</script>"
FOLLOW = "--virtual-time-budget=8000"  # let a page that submits a form get to its answer

# A page of another site that posts an approval the moment it loads (a classic CSRF).
ATTACK = """<!doctype html><html><body>
<form id="f" method="post" action="{target}">
<input type="hidden" name="decision" value="approve">
<input type="hidden" name="reason" value="forged">
</form><script>document.getElementById("f").submit()</script></body></html>"""
# The same decision from the inbox's own origin, with the token read off dana's /inbox, as
# her click would send it (the inbox runs no script, so this page of the proxy's stands in;
# Chromium's virtual time never ends with a fetch() pending, so the token is put in here).
SAME_ORIGIN = """<!doctype html><html><head><meta name="referrer" content="no-referrer"></head>
<body><form id="f" method="post" action="/inbox/{approval_id}">
<input type="hidden" name="csrf" value="{token}">
<input type="hidden" name="decision" value="approve">
<input type="hidden" name="reason" value="from the browser">
</form><script>document.getElementById("f").submit()</script></body></html>"""


@pytest.fixture
def proxies():
    started: list[AuthProxy | StaticSite] = []

    def make(thing):
        started.append(thing.start())
        return thing

    yield make
    for thing in started:
        thing.stop()


async def test_the_inbox_in_a_browser(demo, gateway_factory, proxies, tmp_path):
    config = APPROVALS_CONFIG.format(url=demo.url, timeout="60s", grant="0s") + ADMIN_TRUST
    gw = gateway_factory(config, demo.url, options={"holdgate_admin": f"127.0.0.1:{free_port()}"})
    dana = proxies(AuthProxy(gw.admin, "dana", "dba"))
    bob = proxies(AuthProxy(gw.admin, "bob", "engineering"))
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        results = []

        async def call():
            results.append(await client.call_tool("run_sql", {"query": QUERY}))

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        approval_id = pending["approval_id"]

        # the approver sees the call, its masked arguments as text, and a form
        dom = await anyio.to_thread.run_sync(dump_dom, dana.url + "/inbox")
        assert '<b id="user">dana</b>' in dom
        assert f'<article class="approval" id="{approval_id}">' in dom
        assert '<dd class="requester">alice</dd>' in dom
        assert "&lt;script&gt;document.title='owned'&lt;/script&gt;" in dom
        assert "<title>Holdgate approvals</title>" in dom  # the argument's script never ran
        assert dom.count("<script") == 0
        assert dom.count('name="decision"') == 2
        shot = tmp_path / "inbox-dana.png"
        await anyio.to_thread.run_sync(screenshot, dana.url + "/inbox", str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # a non-approver sees nothing to decide, and nothing of the call
        dom = await anyio.to_thread.run_sync(dump_dom, bob.url + "/inbox")
        assert '<b id="user">bob</b>' in dom
        assert "Nothing waits for your decision." in dom
        assert approval_id not in dom and "orders" not in dom

        # another site's page posts a decision as dana (her proxy session rides along)
        attacker = proxies(StaticSite(ATTACK.format(target=f"{dana.url}/inbox/{approval_id}")))
        site = attacker.url.replace("127.0.0.1", "localhost")  # another site altogether
        dom = await anyio.to_thread.run_sync(dump_dom, site, FOLLOW)
        assert "Nothing was decided" in dom, dom
        assert dana.posts and dana.posts[-1][1].get("Sec-Fetch-Site") == "cross-site"
        assert oneshot.approval(gw.db, approval_id)["state"] == "pending"
        refused = oneshot.approval(gw.db, approval_id)["history"][-1]
        assert (refused["state"], refused["decider"]) == ("refused_attempt", "dana")
        assert "another site" in refused["reason"]
        assert sql_calls(demo) == []

        # the same decision from the inbox's own origin is taken and wakes the call
        token = csrf_of(request(f"127.0.0.1:{dana.port}", "GET", "/inbox", {}).body)
        dana.own_pages["/decide"] = SAME_ORIGIN.format(approval_id=approval_id, token=token)
        dom = await anyio.to_thread.run_sync(dump_dom, dana.url + "/decide", FOLLOW)
        sent = dana.posts[-1][1]
        assert sent.get("Sec-Fetch-Site") == "same-origin", sent
        assert f"Your decision on approval {approval_id} is recorded." in dom, dom
    assert not results[0].is_error
    assert sql_calls(demo) == [QUERY]
    record = oneshot.approval(gw.db, approval_id)
    assert (record["state"], record["decider"], record["channel"]) == ("approved", "dana", "inbox")
    assert json.loads(record["decided_as"]) == {
        "via": "trusted_header",
        "header": "x-admin-user",
        "user": "dana",
        "groups": ["dba"],
        "qualified_by": "dba",
    }
