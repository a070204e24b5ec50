"""Issue 27 item 5 through a real mitmdump with the demo server: a Slack-format approval
webhook to a loopback receiver, its URL a `${env:}` reference. The message names the
requester, the tool, the masked arguments, the expiry and the inbox entry; a receiver that
hangs never holds up the gateway (the call is decided from the inbox and runs while the
webhook's POST still waits); a failing receiver is logged without the URL's secret."""

from __future__ import annotations

import threading

import anyio
import pytest

from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls, wait_for_pending
from helpers.clients import connect
from helpers.configs import ALICE, DANA, DEMO_KEYS
from helpers.inbox import csrf_of, page, post
from helpers.leaks import assert_nothing_leaked
from helpers.processes import free_port
from helpers.upstreams import Reply, Request

DEMO_PER_TEST = True

pytestmark = pytest.mark.anyio

SECRET_PATH = "/services/T0HOLD/B0GATE/s3cr3tSlackPath"
WEBHOOK = """approvals:
  public_url: https://gw.example
  webhook:
    url: "${{env:HOLDGATE_TEST_SLACK}}"
    format: slack
"""


def start(gateway_factory, demo, hook_url: str):
    config = APPROVALS_CONFIG.format(url=demo.url, timeout="30s", grant="0s") + WEBHOOK.format()
    return gateway_factory(
        config,
        demo.url,
        options={"holdgate_admin": f"127.0.0.1:{free_port()}"},
        env={"HOLDGATE_TEST_SLACK": hook_url + SECRET_PATH},
    )


async def test_a_slack_notice_links_the_inbox_and_never_holds_the_gateway(
    demo, gateway_factory, fake_upstream
):
    release = threading.Event()

    def hanging(request: Request) -> Reply:
        release.wait(30)  # until the test has decided the call
        return Reply(200, b"ok")

    hook = fake_upstream(hanging)
    gw = start(gateway_factory, demo, hook.url)
    try:
        async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
            results = []

            async def call():
                results.append(await client.call_tool("run_sql", DELETE))

            tg.start_soon(call)
            pending = await wait_for_pending(gw.db)
            approval_id = pending["approval_id"]
            with anyio.fail_after(10):
                while not hook.received:
                    await anyio.sleep(0.05)
            # the webhook's POST is stuck at the receiver; the gateway decides and forwards
            token = csrf_of(page(gw.admin, DANA).body)
            answer = post(gw.admin, approval_id, DANA, {"csrf": token, "decision": "approve"})
            assert answer.status == 303
        assert not results[0].is_error
        assert sql_calls(demo) == [DELETE["query"]]
        assert not release.is_set()  # all of that happened while the webhook still hung
    finally:
        release.set()
    sent = hook.received[0]
    assert sent.path == SECRET_PATH and sent.headers["content-type"] == "application/json"
    text = sent.json()["text"]
    assert "*Approval requested* by alice: run_sql on demo" in text
    assert '"query": "DELETE FROM orders WHERE id = 1"' in text
    assert f"Expires: {pending['expires']}" in text
    assert f"<https://gw.example/inbox#{approval_id}|Decide in the inbox>" in text
    assert_nothing_leaked(gw, SECRET_PATH, DEMO_KEYS["dana"].key)


async def test_a_failing_receiver_is_logged_without_the_url(demo, gateway_factory, fake_upstream):
    hook = fake_upstream({"/": Reply(500, b"down")})
    gw = start(gateway_factory, demo, hook.url)
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, "run_sql", DELETE)
        pending = await wait_for_pending(gw.db)
        with anyio.fail_after(15):
            while len(hook.received) < 2:
                await anyio.sleep(0.1)
        token = csrf_of(page(gw.admin, DANA).body)
        post(gw.admin, pending["approval_id"], DANA, {"csrf": token, "decision": "approve"})
    assert "approval webhook to 127.0.0.1, attempt 1 failed: HTTP 500" in gw.log_text()
    assert_nothing_leaked(gw, SECRET_PATH)
