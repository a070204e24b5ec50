"""Issue 27 item 4: the approval inbox on the admin listener, through a real mitmdump with
the demo server. A DBA decides from the page and the held call goes on at once, its row
naming the channel and the qualifying group; a non-approver, the requester, a post
without a CSRF token, with someone else's token, or from another site are refused,
recorded, and the call stays held."""

from __future__ import annotations

import contextlib
import json
import time

import anyio
import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls, wait_for_pending
from helpers.clients import connect
from helpers.configs import ALICE, BOB, DANA, DEMO_KEYS
from helpers.inbox import csrf_of, page, post, request
from helpers.leaks import assert_nothing_leaked
from helpers.processes import free_port
from holdgate.approvals import inbox

DEMO_PER_TEST = True  # approved calls change the demo's data

pytestmark = pytest.mark.anyio

HASH_KEY = "inbox-test-digest-key-0123456789"
HOSTILE_QUERY = "DELETE FROM orders WHERE id = 1 -- <script>alert(1)</script>"


def start(gateway_factory, demo, extra: str = ""):
    config = APPROVALS_CONFIG.format(url=demo.url, timeout="30s", grant="0s")
    config += f"hash_key: {HASH_KEY}\n" + extra
    return gateway_factory(config, demo.url, options={"holdgate_admin": f"127.0.0.1:{free_port()}"})


def history(gw, approval_id: str) -> list[dict]:
    return oneshot.approval(gw.db, approval_id)["history"]


async def test_a_dba_approves_from_the_inbox_and_the_held_call_runs(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        results = []

        async def call():
            results.append(await client.call_tool("run_sql", {"query": HOSTILE_QUERY}))

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        approval_id = pending["approval_id"]
        shown = page(gw.admin, DANA)
        assert shown.status == 200, shown.body
        for name, value in {
            "cache-control": "no-store",
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
            "x-content-type-options": "nosniff",
        }.items():
            assert shown.headers[name] == value
        policy = shown.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert f'id="{approval_id}"' in shown.body
        # the argument is text on the page, never markup; the key is never shown
        assert "<script>" not in shown.body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.body
        assert DEMO_KEYS["dana"].key not in shown.body
        answer = post(
            gw.admin,
            approval_id,
            DANA,
            {"csrf": csrf_of(shown.body), "decision": "approve", "reason": "checked the ticket"},
        )
        assert answer.status == 303, answer.body
        assert answer.headers["location"] == f"../inbox?decided={approval_id}#{approval_id}"
    assert not results[0].is_error
    assert sql_calls(demo) == [HOSTILE_QUERY]
    record = oneshot.approval(gw.db, approval_id)
    assert (record["state"], record["decider"], record["reason"]) == (
        "approved",
        "dana",
        "checked the ticket",
    )
    assert record["channel"] == "inbox"
    assert json.loads(record["decided_as"]) == {
        "via": "api_key",
        "key": "dana",
        "user": "dana",
        "groups": ["dba", "engineering"],
        "qualified_by": "dba",
    }
    after = request(gw.admin, "GET", f"/inbox?decided={approval_id}", DANA)
    assert f"Your decision on approval {approval_id} is recorded." in after.body
    assert f'id="{approval_id}"' not in after.body  # nothing left to decide
    assert_nothing_leaked(gw, *(k.key for k in DEMO_KEYS.values()), HASH_KEY)


async def test_refused_posts_are_recorded_and_leave_the_call_held(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:
        results = []

        async def call():
            try:
                await client.call_tool("run_sql", DELETE)
            except MCPError as exc:
                results.append(str(exc))

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        approval_id = pending["approval_id"]
        dana_token = csrf_of(page(gw.admin, DANA).body)

        # bob (engineering) sees nothing to decide, and his post with his own token is refused
        bobs = page(gw.admin, BOB)
        assert bobs.status == 200 and approval_id not in bobs.body
        assert "Nothing waits for your decision." in bobs.body
        bob_token = token_for("bob")
        refused = post(gw.admin, approval_id, BOB, {"csrf": bob_token, "decision": "approve"})
        assert refused.status == 403
        assert "not among its approvers" in refused.body
        # alice (a dba too) sees her own request, never a form to decide it
        alices = page(gw.admin, ALICE)
        assert f'id="own-{approval_id}"' in alices.body and f'id="{approval_id}"' not in alices.body
        alice_token = token_for("alice")
        refused = post(gw.admin, approval_id, ALICE, {"csrf": alice_token, "decision": "approve"})
        assert refused.status == 403 and "separation of duties" in refused.body
        # dana without a token, with bob's, from another site, or unauthenticated
        assert post(gw.admin, approval_id, DANA, {"decision": "approve"}).status == 403
        stolen = post(gw.admin, approval_id, DANA, {"csrf": bob_token, "decision": "approve"})
        assert stolen.status == 403 and "not made for you" in stolen.body
        cross = post(
            gw.admin,
            approval_id,
            {**DANA, "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
            {"csrf": dana_token, "decision": "approve"},
            same_origin=False,
        )
        assert cross.status == 403 and "another site" in cross.body
        nowhere = post(
            gw.admin,
            approval_id,
            DANA,
            {"csrf": dana_token, "decision": "approve"},
            same_origin=False,
        )
        assert nowhere.status == 403 and "names no origin" in nowhere.body
        assert (
            post(gw.admin, approval_id, {}, {"csrf": dana_token, "decision": "approve"}).status
            == 401
        )

        rows = history(gw, approval_id)
        assert [r["state"] for r in rows] == ["pending", *["refused_attempt"] * 6]
        assert [r["decider"] for r in rows[1:]] == ["bob", "alice", "dana", "dana", "dana", "dana"]
        assert [r["channel"] for r in rows[1:3]] == ["inbox", "inbox"]
        assert "no CSRF token" in rows[3]["reason"] and "not made for you" in rows[4]["reason"]
        assert sql_calls(demo) == []

        # the call is still held: dana decides properly, with a deny
        answer = post(gw.admin, approval_id, DANA, {"csrf": dana_token, "decision": "deny"})
        assert answer.status == 303
    assert results == [
        f"approval denied by dana (rule 'destructive SQL needs a DBA', approval {approval_id})"
    ]
    assert sql_calls(demo) == []
    record = oneshot.approval(gw.db, approval_id)
    assert (record["state"], record["decider"], record["channel"]) == ("denied", "dana", "inbox")


def token_for(user: str) -> str:
    """A person's CSRF token made with the config's key, as a form of theirs would carry."""
    viewer = inbox.Viewer(user, DEMO_KEYS[user].groups, {"via": "api_key", "key": user})
    return inbox.csrf_token(HASH_KEY.encode(), viewer, time.time())


async def test_the_inbox_needs_a_person(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    answer = page(gw.admin, {})
    assert answer.status == 401
    assert "admin.trusted_header" in answer.body and "Authorization: Bearer" in answer.body
    assert answer.headers["cache-control"] == "no-store"
    wrong = page(gw.admin, {"X-API-Key": "not-a-key"})
    assert wrong.status == 401 and "not-a-key" not in wrong.body
    malformed = request(
        gw.admin,
        "POST",
        "/inbox/abc",
        {**DANA, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"},
        b'{"decision": "approve"}',
    )
    assert malformed.status == 400 and "expected a form post" in malformed.body
    assert request(gw.admin, "POST", "/inbox", DANA, b"").status == 405
    assert request(gw.admin, "GET", "/inbox/a/b", DANA).status == 404
    assert request(gw.admin, "GET", "/inbox/abc", DANA).headers["location"] == "../inbox#abc"


async def test_a_flood_of_forged_posts_is_recorded_within_a_budget(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    async with connect(gw.url + "/mcp", ALICE) as client, anyio.create_task_group() as tg:

        async def call():
            with contextlib.suppress(MCPError):  # denied at the end
                await client.call_tool("run_sql", DELETE)

        tg.start_soon(call)
        pending = await wait_for_pending(gw.db)
        approval_id = pending["approval_id"]
        for _ in range(15):
            assert post(gw.admin, approval_id, BOB, {"decision": "approve"}).status == 403
        refused = [r for r in history(gw, approval_id) if r["state"] == "refused_attempt"]
        assert len(refused) == 10  # ten a minute per person; the rest counted, logged
        assert gw.log_text().count(f"inbox post by bob on approval {approval_id} refused") == 15
        token = csrf_of(page(gw.admin, DANA).body)
        post(gw.admin, approval_id, DANA, {"csrf": token, "decision": "deny"})
    assert oneshot.approval(gw.db, approval_id)["state"] == "denied"
