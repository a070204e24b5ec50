"""The approval inbox, as a route on the `AdminApi`:

    GET  /inbox          what the caller may decide (with a form each) and their own requests
    GET  /inbox/ID       303 to /inbox#ID (the link a notification carries)
    POST /inbox/ID       a decision form: csrf, decision (approve|deny), reason

People authenticate as `AdminCallers` allows (an auth proxy trusted by `admin.trusted_header`,
or a bearer token); a post must pass the same-origin and CSRF checks of `approvals.inbox`,
else it is refused (403) and recorded against the approval. The store decides who may
decide (approver groups, separation of duties) and records refused attempts; a decision
wakes its held call exactly as the approvals API does.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from holdgate import store
from holdgate.approvals import inbox
from holdgate.approvals.adminhttp import AdminCallers, AdminRequest, AdminResponse
from holdgate.approvals.approval_rules import may_see
from holdgate.approvals.refusal_budget import RefusalBudget
from holdgate.config.gateway_config import GatewayConfig
from holdgate.store.approval_records import Decision

if TYPE_CHECKING:
    from holdgate.addons.approval_core import ApprovalCore
    from holdgate.addons.config_loader import ConfigLoader
    from holdgate.addons.holds import ApprovalHolds

logger = logging.getLogger("holdgate")

UNAUTHENTICATED = (
    "Sign in through the auth proxy in front of the admin listener (admin.trusted_header in "
    "the gateway's config), or send your JWT or API key as Authorization: Bearer."
)
TITLE = "Holdgate approvals"


def _page(status: int, text: str, *extra: tuple[str, str]) -> AdminResponse:
    return AdminResponse(
        status,
        None,
        raw=("text/html; charset=utf-8", text.encode("utf-8")),
        headers=(*inbox.PAGE_HEADERS, *extra),
    )


def _problem(status: int, title: str, message: str) -> AdminResponse:
    return _page(status, inbox.problem_page(title, message))


class ApprovalInbox:
    """/inbox: the page where people see and decide approvals."""

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
        self.refusals = RefusalBudget()  # refused posts recorded per person, within a budget

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """A request under /inbox."""
        config = self.loader.current
        if config is None:
            return _problem(500, TITLE, "The gateway has no config loaded.")
        parts = [p for p in request.path.partition("?")[0].split("/") if p]
        if len(parts) > 2 or (len(parts) == 2 and not inbox.APPROVAL_ID.fullmatch(parts[1])):
            return _problem(404, TITLE, "No such page: the inbox is at /inbox.")
        identity = await self.callers.identity(config, request)
        if identity is None:
            return _problem(401, "Not signed in", UNAUTHENTICATED)
        trusted = config.admin.trusted_header
        viewer = inbox.viewer_of(identity, trusted.user_header if trusted else None)
        if request.method == "GET":
            if len(parts) == 2:
                return _page(303, "", ("Location", f"../inbox#{parts[1]}"))
            return await self._inbox(config, viewer, request.path)
        if request.method != "POST" or len(parts) != 2:
            return _problem(405, TITLE, "Open GET /inbox; decisions are posted to /inbox/ID.")
        return await self._decide(config, viewer, parts[1], request)

    async def _inbox(self, config: GatewayConfig, viewer: inbox.Viewer, path: str) -> AdminResponse:
        pending_rows, own_rows = await self.core.audit.run(
            lambda store: (
                store.approvals(pending_only=True),
                store.approvals(requester=viewer.user, newest=inbox.MAX_OWN_REQUESTS),
            )
        )
        now = time.time()
        pending = inbox.to_decide(pending_rows, viewer, now)
        own = inbox.own_requests(own_rows, viewer)
        token = inbox.csrf_token(self.core.key(config), viewer, now)
        return _page(200, inbox.inbox_page(pending, own, viewer, token, _notice(path)))

    async def _decide(
        self, config: GatewayConfig, viewer: inbox.Viewer, approval_id: str, request: AdminRequest
    ) -> AdminResponse:
        problem = inbox.cross_origin_problem(request.headers, config.approvals.public_url)
        if problem is not None:
            await self._record_refusal(viewer, approval_id, "a decision", problem)
            return _problem(403, "Refused", f"Nothing was decided: {problem}.")
        content_type = request.headers.get("content-type", [None])[0]
        try:
            form = inbox.parse_decision_form(content_type, request.body)
        except inbox.FormError as exc:
            return _problem(400, "The form could not be read", f"{exc}.")
        problem = inbox.csrf_problem(self.core.key(config), viewer, form.csrf, time.time())
        if problem is not None:
            await self._record_refusal(viewer, approval_id, form.decision, problem)
            return _problem(403, "Refused", f"Nothing was decided: {problem}.")
        return await self._record_decision(viewer, approval_id, form)

    async def _record_decision(
        self, viewer: inbox.Viewer, approval_id: str, form: inbox.DecisionForm
    ) -> AdminResponse:
        decision: Decision = "approved" if form.decision == "approved" else "denied"
        found = await self.core.audit.run(lambda store: store.approval(approval_id))
        visible = found is not None and may_see(found, viewer.user, viewer.groups)
        try:
            await self.holds.decide(
                approval_id, decision, viewer.user, viewer.groups, form.reason, "inbox", viewer.how
            )
        except store.ApprovalRefused as exc:  # the store recorded it as a refused attempt
            if not visible:  # one answer for "absent" and "not yours": no oracle for either
                message = (
                    f"You may not decide approval {approval_id}: there is no such approval, "
                    "or you are not among its approvers."
                )
                return _problem(403, "Refused", message)
            status = (
                409 if isinstance(exc, store.ApprovalNotPending | store.ApprovalExpired) else 403
            )
            return _problem(status, "Refused", f"Nothing was decided: {exc}.")
        return _page(303, "", ("Location", f"../inbox?decided={approval_id}#{approval_id}"))

    async def _record_refusal(
        self, viewer: inbox.Viewer, approval_id: str, decision: str, problem: str
    ) -> None:
        """A post refused before it reached the store: a `refused_attempt` row on the
        approval, within the person's budget; logged either way."""
        logger.warning(
            "holdgate: inbox post by %s on approval %s refused: %s",
            viewer.user,
            approval_id,
            problem,
        )
        unrecorded = self.refusals.admit(viewer.user, time.time())
        if unrecorded is None:
            return
        more = f" ({unrecorded} earlier refusals not recorded)" if unrecorded else ""
        reason = f"{decision} refused (inbox): {problem}{more}"
        await self.core.audit.run(
            lambda store: store.append_approval_state(
                approval_id, "refused_attempt", viewer.user, reason
            )
        )


def _notice(path: str) -> str | None:
    """The line after a decision (the redirect's `decided=ID`), from the path's query."""
    query = path.partition("?")[2]
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "decided" and inbox.APPROVAL_ID.fullmatch(value):
            return f"Your decision on approval {value} is recorded."
    return None
