"""The campaigns API in process: start and close bodies checked, the close refused while
items are undecided unless forced, and every start, close and certification recorded with
how the caller authenticated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from holdgate import store
from holdgate.approvals.adminhttp import AdminRequest, AdminResponse
from holdgate.approvals.campaign_http import CampaignCaller, handle_campaigns
from holdgate.approvals.refusal_budget import RefusalBudget
from holdgate.store.campaign_records import ItemSpec

pytestmark = pytest.mark.anyio

HOW = {"channel": "cli", "decided_as": {"via": "api_key", "key": "carol", "user": "carol"}}
CAROL = CampaignCaller("carol", ("compliance",), HOW)
BOB = CampaignCaller("bob", ("engineering",), {**HOW, "decided_as": {"user": "bob"}})
SPECS = [
    ItemSpec("alice", "demo", "tool", "get_customer", "support", {"calls": 1}),
    ItemSpec("bob", "demo", "tool", "run_sql", "engineering", {"calls": 2}),
]


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[store.Store]:
    with store.SqliteStore(tmp_path / "audit.sqlite3") as db:
        yield db


async def call(
    db: store.Store, caller: CampaignCaller, method: str, path: str, body: object = None
) -> AdminResponse:
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = AdminRequest(method, path, {}, data, "127.0.0.1")
    parts = [p for p in path.split("/") if p]
    return await handle_campaigns(
        db, RefusalBudget(), ("compliance",), caller, request, parts, lambda _: (SPECS, "h", "f")
    )


async def test_a_reviewer_starts_and_the_start_says_how(opened: store.Store) -> None:
    started = await call(opened, CAROL, "POST", "/campaigns", {"period": "30d"})
    assert started.status == 201 and started.payload["started_by"] == "carol"
    assert started.payload["progress"] == {"open": 2, "keep": 0, "revoke": 0}
    detail = json.loads(started.payload["events"][0]["detail"])
    assert detail == {"config_file": "f", "period": "30d", **HOW}


@pytest.mark.parametrize(
    "body", [{"period": "soon"}, {"period": 90}, {"period": "0d"}, [1], b"{not json"]
)
async def test_a_bad_start_body_is_400(opened: store.Store, body: object) -> None:
    answer = await call(opened, CAROL, "POST", "/campaigns", body)
    assert answer.status == 400 and "period" in answer.payload["error"]
    assert opened.campaigns() == []


async def test_only_reviewers_start_or_close(opened: store.Store) -> None:
    assert (await call(opened, BOB, "POST", "/campaigns", {"period": "30d"})).status == 403
    cid = (await call(opened, CAROL, "POST", "/campaigns", {})).payload["campaign_id"]
    refused = await call(opened, BOB, "POST", f"/campaigns/{cid}/close", {"force": True})
    assert refused.status == 403 and "not in the reviewer groups" in refused.payload["error"]
    assert opened.campaign(cid).state == "started"


async def test_undecided_items_need_force_and_the_close_records_them(
    opened: store.Store,
) -> None:
    cid = (await call(opened, CAROL, "POST", "/campaigns", {})).payload["campaign_id"]
    early = await call(opened, CAROL, "POST", f"/campaigns/{cid}/close", {})
    assert early.status == 409
    assert "2 of 2 items undecided" in early.payload["error"] and "force" in early.payload["error"]
    for body in ({"force": "yes"}, {"reason": 3}, b"[]"):
        assert (await call(opened, CAROL, "POST", f"/campaigns/{cid}/close", body)).status == 400
    assert opened.campaign(cid).state == "started"
    closed = await call(
        opened, CAROL, "POST", f"/campaigns/{cid}/close", {"force": True, "reason": "quarter end"}
    )
    assert closed.status == 200 and closed.payload["state"] == "closed"
    detail = json.loads(closed.payload["events"][-1]["detail"])
    assert detail == {"undecided": 2, "forced": True, "reason": "quarter end", **HOW}
    again = await call(opened, CAROL, "POST", f"/campaigns/{cid}/close", {"force": True})
    assert again.status == 409 and "closed already" in again.payload["error"]
    unknown = await call(opened, CAROL, "POST", "/campaigns/rc-nope/close", {})
    assert unknown.status == 404


async def test_a_certification_says_how_it_was_made(opened: store.Store) -> None:
    cid = (await call(opened, CAROL, "POST", "/campaigns", {})).payload["campaign_id"]
    path = f"/campaigns/{cid}/items/{cid}.1/certify"
    refused = await call(opened, BOB, "POST", path, {"decision": "keep", "reason": "mine"})
    assert refused.status == 403
    done = await call(opened, CAROL, "POST", path, {"decision": "revoke", "reason": "unused"})
    assert done.status == 200 and done.payload["decided_how"] == HOW
    assert done.payload["refused_attempts"][0]["decided_as"] == {"user": "bob"}
    closed = await call(opened, CAROL, "POST", f"/campaigns/{cid}/close", {"force": True})
    assert json.loads(closed.payload["events"][-1]["detail"])["undecided"] == 1
