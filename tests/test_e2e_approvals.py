"""Approvals through a real mitmdump: hold, decide from another process or the API, resume."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG as CONFIG
from helpers.approvals import DELETE, break_glass, sql_calls, wait_for_pending
from helpers.clients import connect
from helpers.configs import ALICE, BOB, DANA, DEMO_KEYS
from helpers.processes import free_port, holdgate_cli, stop
from helpers.upstreams import Reply
from holdgate import store

DEMO_PER_TEST = True  # approved calls change the demo's data: a fresh demo each test

pytestmark = pytest.mark.anyio


def start(gateway_factory, demo, timeout="20s", grant="0s", admin=False):
    options = {"holdgate_admin": f"127.0.0.1:{free_port()}"} if admin else {}
    return gateway_factory(
        CONFIG.format(url=demo.url, timeout=timeout, grant=grant), demo.url, options=options
    )


cli = holdgate_cli


async def test_cli_decides_through_the_gateway_as_the_tokens_identity(demo, gateway_factory):
    """Issue 27: `--as alice` approved a DBA-only DELETE. Now the CLI decides through the
    admin API as its token's identity, checked against the rule's approvers."""
    # six CLI runs before the decision: time enough for them on a loaded machine
    gw = start(gateway_factory, demo, timeout="120s", admin=True)
    gateway = f"http://{gw.admin}"

    def decide(verb: str, *args: str):
        return cli("approvals", verb, pending["approval_id"], "--gateway", gateway, *args)

    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            results = []

            async def call():
                results.append(await client.call_tool("run_sql", DELETE))

            tg.start_soon(call)
            pending = await wait_for_pending(gw.db)
            assert sql_calls(demo) == []  # held: the upstream has not seen it
            listed = cli("approvals", "list", "--db", str(gw.db))
            assert pending["approval_id"] in listed.stdout
            assert '"DELETE FROM orders WHERE id = 1"' in listed.stdout  # what is approved
            taken_at_word = decide("approve", "--as", "dana", "--db", str(gw.db))
            assert taken_at_word.returncode == 2
            assert "--as is for break-glass only" in taken_at_word.stderr
            no_token = decide("approve")
            assert no_token.returncode == 2 and "--token" in no_token.stderr
            wrong_key = decide("approve", "--token", "not-a-key")
            assert wrong_key.returncode == 1 and "unknown API key" in wrong_key.stderr
            not_a_dba = decide("approve", "--token", DEMO_KEYS["bob"].key)
            assert not_a_dba.returncode == 1
            assert "that bob may see" in not_a_dba.stderr and "approver groups" in not_a_dba.stderr
            selfish = decide("approve", "--token", DEMO_KEYS["alice"].key)
            assert selfish.returncode == 1
            assert "separation of duties" in selfish.stderr
            done = decide("approve", "--token", DEMO_KEYS["dana"].key, "--reason", "ticket 42")
            assert done.returncode == 0, done.stderr
            assert "approved by dana" in done.stdout and "via cli" in done.stdout
            assert "qualified by dba" in done.stdout
    assert not results[0].is_error
    assert sql_calls(demo) == [DELETE["query"]]
    record = oneshot.approval(gw.db, pending["approval_id"])
    assert (record["state"], record["decider"], record["reason"]) == (
        "approved",
        "dana",
        "ticket 42",
    )
    assert record["channel"] == "cli"
    assert json.loads(record["decided_as"]) == {
        "via": "api_key",
        "key": "dana",
        "user": "dana",
        "groups": ["dba", "engineering"],
        "qualified_by": "dba",
    }
    history = record["history"]
    assert [h["state"] for h in history] == [
        "pending",
        "refused_attempt",
        "refused_attempt",
        "approved",
    ]
    refused_bob, refused_alice = history[1], history[2]
    assert (refused_bob["decider"], refused_bob["channel"]) == ("bob", "cli")
    assert json.loads(refused_bob["decided_as"])["qualified_by"] is None
    assert (refused_alice["decider"], refused_alice["channel"]) == ("alice", "cli")
    with anyio.fail_after(15):  # the writer thread commits the call's rows within a moment
        while True:
            exported = cli("export", "--db", str(gw.db)).stdout.splitlines()
            released = [
                r
                for r in map(json.loads, exported)
                if r["approval_id"] == pending["approval_id"] and "approval" in (r["extra"] or {})
            ]
            if released:
                break
            await anyio.sleep(0.2)
    released = released[0]
    assert released["extra"]["approval"]["channel"] == "cli"
    assert released["extra"]["approval"]["decided_as"]["qualified_by"] == "dba"  # an object
    shown = cli("approvals", "show", pending["approval_id"], "--db", str(gw.db)).stdout
    assert "approved by dana (ticket 42)  [via cli; API key dana; groups dba, engineering; " in (
        shown
    )
    assert DEMO_KEYS["dana"].key not in shown


async def test_break_glass_writes_the_store_and_says_so(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", DELETE)
            pending = await wait_for_pending(gw.db)
            ask = ("approvals", "approve", pending["approval_id"], "--db", str(gw.db))
            incomplete = cli(*ask, "--break-glass")
            assert incomplete.returncode == 2
            assert "--break-glass needs --as NAME and --reason TEXT" in incomplete.stderr
            done = cli(*ask, "--break-glass", "--as", "erin", "--reason", "DBA unreachable")
            assert done.returncode == 0, done.stderr
            assert "approved by erin  [BREAK-GLASS" in done.stdout
    assert sql_calls(demo) == [DELETE["query"]]
    record = oneshot.approval(gw.db, pending["approval_id"])
    assert (record["state"], record["decider"], record["channel"]) == (
        "approved",
        "erin",
        "break-glass",
    )
    decided_as = json.loads(record["decided_as"])
    assert decided_as["via"] == "break-glass" and decided_as["groups"] is None
    assert decided_as["os_user"]


async def test_denied_by_cli_is_32004_naming_who(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            errors = []

            async def call():
                try:
                    await client.call_tool("run_sql", DELETE)
                except MCPError as exc:
                    errors.append(exc)

            tg.start_soon(call)
            pending = await wait_for_pending(gw.db)
            done = break_glass("deny", pending["approval_id"], gw.db, "dana", "not today")
            assert done.returncode == 0, done.stderr
    assert errors[0].code == -32004
    assert "denied by dana" in errors[0].message and "not today" in errors[0].message
    assert sql_calls(demo) == []


async def test_timeout_is_32004_expired(demo, gateway_factory):
    gw = start(gateway_factory, demo, timeout="1s")
    async with connect(gw.url + "/mcp", ALICE) as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("run_sql", DELETE)
    assert info.value.code == -32004
    assert "expired" in info.value.message
    assert sql_calls(demo) == []
    late = break_glass("approve", _only_approval(gw.db), gw.db)
    assert late.returncode == 1


def _only_approval(db: Path) -> str:
    database = store.open_db(db, create=False)
    try:
        return next(database.query("SELECT approval_id FROM v_approvals"))["approval_id"]
    finally:
        database.close()


async def test_grant_window_lets_identical_calls_pass(demo, gateway_factory):
    gw = start(gateway_factory, demo, grant="10m")
    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", DELETE)
            pending = await wait_for_pending(gw.db)
            break_glass("approve", pending["approval_id"], gw.db)
        again = await client.call_tool("run_sql", DELETE)
        assert not again.is_error
    assert sql_calls(demo) == [DELETE["query"], DELETE["query"]]
    history = oneshot.approval(gw.db, pending["approval_id"])["history"]
    assert [h["state"] for h in history] == ["pending", "approved", "grant_used"]


def api(gw_admin: str, path: str, headers: dict, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://{gw_admin}{path}",
        data=data,
        headers=headers,
        method="POST" if data is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_http_api_enforces_groups_and_separation_of_duties(demo, gateway_factory):
    gw = start(gateway_factory, demo, admin=True)
    admin = gw.admin
    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            results = []

            async def call():
                results.append(await client.call_tool("run_sql", DELETE))

            tg.start_soon(call)
            pending = await wait_for_pending(gw.db)
            path = f"/approvals/{pending['approval_id']}"
            assert api(admin, path, {})[0] == 401
            status, listing = api(admin, "/approvals", DANA)
            assert status == 200 and listing[0]["approval_id"] == pending["approval_id"]
            assert api(admin, path + "/approve", ALICE, {})[0] == 403  # the requester
            assert api(admin, path + "/approve", BOB, {})[0] == 404  # not a DBA: not shown
            status, body = api(admin, path + "/approve", DANA, {"reason": "ok"})
            assert status == 200, body
    assert not results[0].is_error
    history = oneshot.approval(gw.db, pending["approval_id"])["history"]
    assert [h["state"] for h in history] == [
        "pending",
        "refused_attempt",
        "refused_attempt",
        "approved",
    ]


async def test_http_api_shows_approvals_to_their_approvers_and_requester_only(
    demo, gateway_factory
):
    """Issue 13 item 9: any authenticated caller could list everyone's pending requests."""
    gw = start(gateway_factory, demo, admin=True)
    admin = gw.admin
    async with (
        connect(gw.url + "/mcp", ALICE) as alice,
        connect(gw.url + "/mcp", BOB) as bob,
        anyio.create_task_group() as tg,
    ):
        refusals = []

        async def call(client, arguments):
            with pytest.raises(MCPError) as info:
                await client.call_tool("run_sql", arguments)
            refusals.append(info.value.error.message)

        tg.start_soon(call, alice, DELETE)
        tg.start_soon(call, bob, {"query": "DELETE FROM orders WHERE id = 2"})
        alices = (await wait_for_pending(gw.db, "alice"))["approval_id"]
        bobs = (await wait_for_pending(gw.db, "bob"))["approval_id"]

        status, listing = api(admin, "/approvals", BOB)  # bob is no DBA: only his own
        assert status == 200 and [a["approval_id"] for a in listing] == [bobs]
        status, body = api(admin, f"/approvals/{alices}", BOB)
        # nothing of alice's call (its SQL, its approvers' group); the 404 may name the id,
        # whose random hex can hold "dba" itself
        shown = json.dumps(body).replace(alices, "")
        assert status == 404 and "DELETE" not in shown and "dba" not in shown
        assert api(admin, f"/approvals/{alices}/approve", BOB, {})[0] == 404
        assert api(admin, "/approvals/000000000000", BOB)[0] == 404  # same answer as absent
        status, own = api(admin, f"/approvals/{bobs}", BOB)  # a requester follows their own
        assert status == 200 and own["state"] == "pending" and own["requester"] == "bob"
        assert api(admin, f"/approvals/{bobs}/approve", BOB, {})[0] == 403  # but never decides

        status, listing = api(admin, "/approvals", DANA)  # a DBA sees both
        assert status == 200 and {a["approval_id"] for a in listing} == {alices, bobs}
        assert api(admin, f"/approvals/{alices}", DANA)[0] == 200
        for approval_id in (alices, bobs):
            assert api(admin, f"/approvals/{approval_id}/deny", DANA, {"reason": "no"})[0] == 200
    assert len(refusals) == 2 and all("denied by dana" in r for r in refusals)
    assert sql_calls(demo) == []
    history = oneshot.approval(gw.db, alices)["history"]
    assert [h["state"] for h in history] == ["pending", "refused_attempt", "denied"]
    assert history[1]["decider"] == "bob"


async def test_shutdown_closes_held_requests_as_expired(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    found: list[dict] = []
    with pytest.raises(BaseException):  # noqa: B017 - the client loses its connection
        async with connect(gw.url + "/mcp", ALICE) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "run_sql", DELETE)
                found.append(await wait_for_pending(gw.db))
                await anyio.to_thread.run_sync(stop, gw.proc)
    pending = found[0]
    record = oneshot.approval(gw.db, pending["approval_id"])
    assert record["state"] == "expired"
    assert "shut down" in record["reason"]
    assert sql_calls(demo) == []


async def test_client_disconnect_cancels_the_hold(demo, gateway_factory):
    gw = start(gateway_factory, demo)
    with anyio.move_on_after(20):
        async with connect(gw.url + "/mcp", ALICE) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "run_sql", DELETE)
                pending = await wait_for_pending(gw.db)
                tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        while oneshot.approval(gw.db, pending["approval_id"])["state"] == "pending":
            await anyio.sleep(0.1)
    assert oneshot.approval(gw.db, pending["approval_id"])["state"] == "cancelled"
    assert sql_calls(demo) == []


async def test_webhook_is_told_of_each_request(demo, gateway_factory, fake_upstream):
    hook = fake_upstream({"/hook": Reply(204)})
    config = CONFIG.format(url=demo.url, timeout="20s", grant="0s") + (
        f"approvals:\n  webhook: {hook.url}/hook\n"
    )
    gw = gateway_factory(config, demo.url)
    async with connect(gw.url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", DELETE)
            pending = await wait_for_pending(gw.db)
            with anyio.fail_after(10):
                while not hook.received:
                    await anyio.sleep(0.1)
            break_glass("approve", pending["approval_id"], gw.db)
    notice = hook.received[0].json()
    assert notice["approval_id"] == pending["approval_id"]
    assert notice["requester"] == "alice" and notice["tool"] == "run_sql"
    assert notice["link"].endswith(f"/approvals/{pending['approval_id']}")
