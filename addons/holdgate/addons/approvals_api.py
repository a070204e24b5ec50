"""The approvals API and the campaigns API, as routes on the `AdminApi`:

    GET  /approvals                   pending approvals the caller may decide or see
    GET  /approvals/ID                one approval
    POST /approvals/ID/approve|deny   {"reason": "..."}; wakes the held call at once
    GET  /approvals/ID/status?t=...   the page an elicitation links to (the link is its key)
    /campaigns...                     access reviews (`approvals.campaign_http`)

Callers authenticate as `AdminCallers` allows; the store decides who may decide and
records every refused attempt.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from holdgate import store
from holdgate.approvals import elicitation
from holdgate.approvals.adminhttp import (
    AdminCallers,
    AdminRequest,
    AdminResponse,
    authenticated_as,
    claimed_channel,
)
from holdgate.approvals.approval_rules import may_see
from holdgate.approvals.campaign_http import CampaignCaller, handle_campaigns
from holdgate.approvals.refusal_budget import RefusalBudget
from holdgate.approvals.review_inputs import build
from holdgate.config.gateway_config import GatewayConfig
from holdgate.protocol.jsonrpc import shown
from holdgate.reports.review_model import campaign_items
from holdgate.store.approval_records import Decision as Decided
from holdgate.store.approval_records import approver_groups
from holdgate.store.campaign_records import ItemSpec

if TYPE_CHECKING:
    from holdgate.addons.approval_core import ApprovalCore
    from holdgate.addons.config_loader import ConfigLoader
    from holdgate.addons.holds import ApprovalHolds

# Columns that hold JSON text in the store, answered as real arrays and objects.
JSON_COLUMNS = ("approvers", "args_masked", "changes", "decided_as")
# How the approvals API answers the store's refusal of a decision.
REFUSAL_STATUS: dict[type[store.ApprovalRefused], int] = {
    store.UnknownApproval: 404,
    store.SelfApproval: 403,
    store.NotAnApprover: 403,
    store.ApprovalNotPending: 409,
    store.ApprovalExpired: 409,
}


class ApprovalsApi:
    """/approvals: list, read and decide approvals; a decision wakes its held call."""

    def __init__(
        self,
        loader: ConfigLoader,
        core: ApprovalCore,
        holds: ApprovalHolds,
        callers: AdminCallers,
    ) -> None:
        self.loader = loader
        self.core = core
        self.holds = holds
        self.callers = callers

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """A request under /approvals."""
        config = self.loader.current
        if config is None:
            return AdminResponse(500, {"error": "no config loaded"})
        parts = [p for p in request.path.partition("?")[0].split("/") if p]
        if not parts or parts[0] != "approvals" or len(parts) > 3:
            return AdminResponse(404, {"error": "see GET /approvals or GET /campaigns"})
        if len(parts) == 3 and parts[2] == "status" and request.method == "GET":
            return await self._status_page(config, parts[1], request.path)
        approver = await self.callers.identity(config, request)
        if approver is None:
            return await self.callers.refusal(config, request)
        channel = claimed_channel(request)
        how = authenticated_as(approver, config)
        if len(parts) == 1:
            if request.method != "GET":
                return AdminResponse(405, {"error": "GET /approvals"})
            pending = await self.core.audit.run(lambda store: store.approvals(pending_only=True))
            return AdminResponse(
                200,
                [
                    approval_json(row)
                    for row in pending
                    if may_see(row, approver.user, approver.groups)
                ],
            )
        found = await self.core.audit.run(lambda store: store.approval(parts[1]))
        if found is None or not may_see(found, approver.user, approver.groups):
            deciding = request.method == "POST" and parts[2:] in (["approve"], ["deny"])
            if found is not None and deciding:  # still an attempt worth an audit row
                attempted: Decided = "approved" if parts[2] == "approve" else "denied"
                # neither approver nor requester: the store refuses it and records that
                with contextlib.suppress(store.ApprovalRefused):
                    await self.core.audit.run(
                        lambda store: store.decide_approval(
                            parts[1],
                            attempted,
                            approver.user,
                            approver.groups,
                            channel=channel,
                            identity=how,
                        )
                    )
            # One answer for "absent" and "not yours": the API is no oracle for either.
            return AdminResponse(
                404, {"error": f"no approval {shown(parts[1])} that {approver.user} may see"}
            )
        if len(parts) == 2 and request.method == "GET":
            return AdminResponse(200, approval_json(found))
        if len(parts) != 3 or request.method != "POST" or parts[2] not in ("approve", "deny"):
            return AdminResponse(404, {"error": "POST /approvals/ID/approve or /deny"})
        try:
            reason = request.json().get("reason")
        except (json.JSONDecodeError, AttributeError):
            return AdminResponse(400, {"error": "the body must be a JSON object"})
        new_state: Decided = "approved" if parts[2] == "approve" else "denied"
        if reason is not None and not isinstance(reason, str):
            return AdminResponse(400, {"error": '"reason" must be a string'})
        try:
            decided = await self.holds.decide(
                parts[1], new_state, approver.user, approver.groups, reason, channel, how
            )
        except store.ApprovalRefused as exc:  # recorded by the store as a refused attempt
            return AdminResponse(REFUSAL_STATUS.get(type(exc), 409), {"error": str(exc)})
        shown_row = approval_json(decided)
        return AdminResponse(
            200,
            {
                "approval_id": parts[1],
                "state": new_state,
                "decider": approver.user,
                "channel": channel,
                "decided_as": shown_row.get("decided_as"),
            },
        )

    async def _status_page(
        self, config: GatewayConfig, approval_id: str, path: str
    ) -> AdminResponse:
        """The page an elicitation sends the requester to. Its link is its credential (a
        browser carries no bearer token): without the right `t` it is a plain 404."""
        token = parse_qs(urlsplit(path).query).get("t", [""])[0]
        key = self.core.key(config)
        missing = AdminResponse(404, {"error": "no such approval page"})
        if not approval_id.isalnum() or not elicitation.status_token_holds(key, approval_id, token):
            return missing
        found = await self.core.audit.run(lambda store: store.approval(approval_id))
        if found is None:
            return missing
        page = elicitation.status_page(found, sorted(approver_groups(found)))
        return AdminResponse(200, None, page=page)


class CampaignsApi:
    """/campaigns: access reviews, for the config's `review.reviewers`."""

    def __init__(self, loader: ConfigLoader, core: ApprovalCore, callers: AdminCallers) -> None:
        self.loader = loader
        self.core = core
        self.callers = callers
        self.refusals = RefusalBudget()  # refused certifications recorded one by one

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """A request under /campaigns."""
        config = self.loader.current
        if config is None:
            return AdminResponse(500, {"error": "no config loaded"})
        reviewer = await self.callers.identity(config, request)
        if reviewer is None:
            return await self.callers.refusal(config, request)
        parts = [p for p in request.path.partition("?")[0].split("/") if p]
        qualifying = sorted(set(reviewer.groups) & set(config.review.reviewers))
        how = {
            "channel": claimed_channel(request),
            "decided_as": {
                **authenticated_as(reviewer, config),
                "user": reviewer.user,
                "groups": sorted(reviewer.groups),
                "qualified_by": qualifying[0] if qualifying else None,
            },
        }
        store_now = self.core.store()

        def items_for(window: tuple[str, str]) -> tuple[list[ItemSpec], str, str]:
            # off the event loop: the review of the window, on this gateway's store and config
            model = build(store_now, config, window, reviewer.user)
            return campaign_items(model), config.digest, config.file

        return await handle_campaigns(
            store_now,
            self.refusals,
            config.review.reviewers,
            CampaignCaller(reviewer.user, reviewer.groups, how),
            request,
            parts,
            items_for,
        )


def approval_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """An approval as the API answers it: the store's JSON columns (approvers, masked
    arguments, changes, decided_as) as real arrays and objects, in its history too."""
    out = {k: _decoded(k, v) for k, v in row.items()}
    if isinstance(row.get("history"), list):
        out["history"] = [approval_json(step) for step in row["history"]]
    return out


def _decoded(column: str, value: Any) -> Any:
    if column not in JSON_COLUMNS or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value  # not JSON after all (an older row): the text, as stored
