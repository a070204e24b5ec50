"""The campaigns part of the approvals API, for reviewers (config `review.reviewers`):

    GET  /campaigns                               every campaign and its progress
    GET  /campaigns/ID                            one campaign with its items
    POST /campaigns/ID/items/ITEM/certify         {"decision": "keep"|"revoke", "reason": "..."}

The caller is already authenticated (like an MCP client); reading needs a reviewer group,
and deciding goes through the store's campaign rules, which record a refused decision. A
caller outside the reviewer groups is refused before that; its refusals are recorded one
by one within a `RefusalBudget`, and beyond it counted into its next recorded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from holdgate.approvals.adminhttp import AdminRequest, AdminResponse
from holdgate.approvals.refusal_budget import RefusalBudget
from holdgate.store import CertificationRefused, Store, UnknownCampaign


def _shown(text: str) -> str:
    """An id from the path, as an error may repeat it: short and printable."""
    return json.dumps(text[:80])


logger = logging.getLogger(__name__)


async def handle_campaigns(
    store: Store,
    refusals: RefusalBudget,
    reviewers: Sequence[str],
    user: str,
    groups: Sequence[str],
    request: AdminRequest,
    parts: Sequence[str],
) -> AdminResponse:
    """Route one request under /campaigns for an authenticated caller."""
    is_reviewer = bool(set(groups) & set(reviewers))
    certifying = (
        len(parts) == 5
        and parts[2] == "items"
        and parts[4] == "certify"
        and request.method == "POST"
    )
    if certifying:
        return await _certify(store, refusals, reviewers, user, groups, request, parts[1], parts[3])
    if not is_reviewer:
        configured = ", ".join(reviewers) or "none configured: add review.reviewers"
        return AdminResponse(403, {"error": f"{user} is not in the reviewer groups ({configured})"})
    if request.method != "GET" or len(parts) > 2:
        return AdminResponse(
            404,
            {"error": "GET /campaigns, GET /campaigns/ID, POST /campaigns/ID/items/ITEM/certify"},
        )
    if len(parts) == 1:
        found = await asyncio.to_thread(store.campaigns)
        return AdminResponse(200, [c.to_json(with_items=False) for c in found])
    campaign = await asyncio.to_thread(store.campaign, parts[1])
    if campaign is None:
        return AdminResponse(404, {"error": f"no campaign {_shown(parts[1])}"})
    return AdminResponse(200, campaign.to_json())


async def _certify(
    store: Store,
    refusals: RefusalBudget,
    reviewers: Sequence[str],
    user: str,
    groups: Sequence[str],
    request: AdminRequest,
    campaign_id: str,
    item_id: str,
) -> AdminResponse:
    try:
        body: Any = request.json()
    except json.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
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
                )
        configured = ", ".join(reviewers) or "none configured: add review.reviewers"
        return AdminResponse(403, {"error": f"{user} is not in the reviewer groups ({configured})"})
    if not item_id.startswith(campaign_id + "."):
        return AdminResponse(
            404, {"error": f"no item {_shown(item_id)} in campaign {_shown(campaign_id)}"}
        )
    try:
        item = await asyncio.to_thread(
            store.certify, item_id, decision, user, reason, tuple(groups), tuple(reviewers)
        )
    except UnknownCampaign:
        return AdminResponse(404, {"error": f"no item {_shown(item_id)}"})
    except CertificationRefused as exc:  # recorded by the store as a refused attempt
        return AdminResponse(exc.status, {"error": str(exc)})
    return AdminResponse(200, item.to_json())
