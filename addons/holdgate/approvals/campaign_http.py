"""The campaigns part of the approvals API, for reviewers (config `review.reviewers`):

    GET  /campaigns                               every campaign and its progress
    POST /campaigns                               {"period": "90d"}: start one
    GET  /campaigns/ID                            one campaign with its items
    POST /campaigns/ID/close                      {"force": false, "reason": "..."}
    POST /campaigns/ID/items/ITEM/certify         {"decision": "keep"|"revoke", "reason": "..."}

The caller is already authenticated (like an MCP client); everything needs a reviewer
group, and deciding goes through the store's campaign rules, which record a refused
decision. A caller outside the reviewer groups is refused before that; its refused
certifications are recorded one by one within a `RefusalBudget`, and beyond it counted into
its next recorded one. Each start, close and certification records the channel (`api`, or
`cli` for `holdgate review`) and the caller as authenticated. A campaign with undecided
items closes only with `force`, and the close records how many were left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from holdgate.approvals.adminhttp import AdminRequest, AdminResponse
from holdgate.approvals.refusal_budget import RefusalBudget
from holdgate.configfile import parse_duration
from holdgate.store import CampaignClosed, CertificationRefused, Store, UnknownCampaign, iso
from holdgate.store.campaign_records import ItemSpec, new_campaign_id


def _shown(text: str) -> str:
    """An id from the path, as an error may repeat it: short and printable."""
    return json.dumps(text[:80])


logger = logging.getLogger(__name__)


ROUTES = (
    "GET /campaigns, POST /campaigns, GET /campaigns/ID, POST /campaigns/ID/close, "
    "POST /campaigns/ID/items/ITEM/certify"
)
# What the campaign starts from: the period's window (start, end) -> its items and the
# config's (digest, file), built off the event loop from the store and the config in force.
ItemsFor = Callable[[tuple[str, str]], tuple[list[ItemSpec], str, str]]


@dataclass(frozen=True)
class CampaignCaller:
    """An authenticated caller of /campaigns: who, their groups, and how the decision
    record names them ({channel, decided_as})."""

    user: str
    groups: tuple[str, ...]
    how: Mapping[str, Any]


async def handle_campaigns(
    store: Store,
    refusals: RefusalBudget,
    reviewers: Sequence[str],
    caller: CampaignCaller,
    request: AdminRequest,
    parts: Sequence[str],
    items_for: ItemsFor,
) -> AdminResponse:
    """Route one request under /campaigns for an authenticated caller."""
    user, groups = caller.user, caller.groups
    is_reviewer = bool(set(groups) & set(reviewers))
    certifying = (
        len(parts) == 5
        and parts[2] == "items"
        and parts[4] == "certify"
        and request.method == "POST"
    )
    if certifying:
        return await _certify(store, refusals, reviewers, caller, request, parts[1], parts[3])
    if not is_reviewer:
        configured = ", ".join(reviewers) or "none configured: add review.reviewers"
        return AdminResponse(403, {"error": f"{user} is not in the reviewer groups ({configured})"})
    if request.method == "POST" and len(parts) == 1:
        return await _start(store, caller, request, items_for)
    if request.method == "POST" and len(parts) == 3 and parts[2] == "close":
        return await _close(store, caller, request, parts[1])
    if request.method != "GET" or len(parts) > 2:
        return AdminResponse(404, {"error": ROUTES})
    if len(parts) == 1:
        found = await asyncio.to_thread(store.campaigns)
        return AdminResponse(200, [c.to_json(with_items=False) for c in found])
    campaign = await asyncio.to_thread(store.campaign, parts[1])
    if campaign is None:
        return AdminResponse(404, {"error": f"no campaign {_shown(parts[1])}"})
    return AdminResponse(200, campaign.to_json())


def _body(request: AdminRequest) -> dict[str, Any] | None:
    """The request's JSON object body, None when it is not one."""
    try:
        body: Any = request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def _start(
    store: Store, caller: CampaignCaller, request: AdminRequest, items_for: ItemsFor
) -> AdminResponse:
    """Start a campaign over the period back from now, from the config in force."""
    body = _body(request)
    period = body.get("period", "90d") if body is not None else None
    seconds = parse_duration(period) if isinstance(period, str) else None
    if body is None or not seconds or seconds <= 0:
        return AdminResponse(400, {"error": 'send {"period": "90d"} (a duration: 90d, 12h)'})
    now = time.time()
    window = (iso(now - seconds), iso(now))
    items, digest, config_file = await asyncio.to_thread(items_for, window)
    if not items:
        return AdminResponse(
            409,
            {"error": f"no identity had a grant in use or on offer in {window[0]} .. {window[1]}"},
        )
    detail = {"config_file": config_file, "period": period, **caller.how}
    started = await asyncio.to_thread(
        store.start_campaign, new_campaign_id(now), window, digest, caller.user, detail, items
    )
    return AdminResponse(201, started.to_json(with_items=False))


async def _close(
    store: Store, caller: CampaignCaller, request: AdminRequest, campaign_id: str
) -> AdminResponse:
    """Close a campaign: refused while items are undecided unless `force`; the close
    records who closed it, how, and how many items were left undecided."""
    body = _body(request)
    force = body.get("force", False) if body is not None else None
    reason = body.get("reason") if body is not None else None
    if not isinstance(force, bool) or (reason is not None and not isinstance(reason, str)):
        return AdminResponse(
            400, {"error": 'send {"force": true or false, "reason": "why"} (both optional)'}
        )
    campaign = await asyncio.to_thread(store.campaign, campaign_id)
    if campaign is None:
        return AdminResponse(404, {"error": f"no campaign {_shown(campaign_id)}"})
    undecided = campaign.progress()["open"]
    if undecided and not force:
        return AdminResponse(
            409,
            {
                "error": f"campaign {campaign_id} has {undecided} of {len(campaign.items)} "
                "items undecided: certify them, or close it anyway with force (`holdgate "
                "review campaign close ID --force --reason WHY`), which is recorded"
            },
        )
    detail = {"undecided": undecided, "forced": bool(undecided), "reason": reason, **caller.how}
    try:
        closed = await asyncio.to_thread(
            store.campaign_event, campaign_id, "closed", caller.user, detail
        )
    except CampaignClosed as exc:
        return AdminResponse(409, {"error": str(exc)})
    return AdminResponse(200, closed.to_json(with_items=False))


async def _certify(
    store: Store,
    refusals: RefusalBudget,
    reviewers: Sequence[str],
    caller: CampaignCaller,
    request: AdminRequest,
    campaign_id: str,
    item_id: str,
) -> AdminResponse:
    user, groups = caller.user, caller.groups
    body = _body(request)
    if body is None:
        return AdminResponse(400, {"error": "the body must be a JSON object"})
    decision, reason = body.get("decision"), body.get("reason")
    if decision not in ("keep", "revoke") or not isinstance(reason, str) or not reason.strip():
        return AdminResponse(
            400, {"error": 'send {"decision": "keep" or "revoke", "reason": "why"}'}
        )
    if not set(groups) & set(reviewers):  # recorded as a refused attempt, then one answer
        unrecorded = refusals.admit(user, time.monotonic())
        if unrecorded is None:
            if refusals.unrecorded(user) == 1:  # once per run of refusals over the budget
                logger.warning(
                    "holdgate: refused certifications by %s over %d a minute: counted, and "
                    "recorded as a number with its next recorded refusal",
                    _shown(user),
                    refusals.burst,
                )
        else:
            note = (
                f" ({unrecorded} refused attempts by this caller before this one were not "
                f"recorded one by one: over {refusals.burst} a minute)"
                if unrecorded
                else ""
            )
            with contextlib.suppress(CertificationRefused):
                await asyncio.to_thread(
                    store.certify,
                    item_id,
                    decision,
                    user,
                    reason,
                    tuple(groups),
                    tuple(reviewers),
                    note,
                    caller.how,
                )
        configured = ", ".join(reviewers) or "none configured: add review.reviewers"
        return AdminResponse(403, {"error": f"{user} is not in the reviewer groups ({configured})"})
    if not item_id.startswith(campaign_id + "."):
        return AdminResponse(
            404, {"error": f"no item {_shown(item_id)} in campaign {_shown(campaign_id)}"}
        )
    try:
        item = await asyncio.to_thread(
            store.certify,
            item_id,
            decision,
            user,
            reason,
            tuple(groups),
            tuple(reviewers),
            "",
            caller.how,
        )
    except UnknownCampaign:
        return AdminResponse(404, {"error": f"no item {_shown(item_id)}"})
    except CertificationRefused as exc:  # recorded by the store as a refused attempt
        return AdminResponse(exc.status, {"error": str(exc)})
    return AdminResponse(200, item.to_json())
