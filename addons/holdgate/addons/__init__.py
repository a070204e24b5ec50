"""The mitmproxy side of Holdgate: one addon per module, glue over the pure library.

`default_addons()` builds them in the order they run for every flow, as mitmproxy's own
`mitmproxy.addons.default_addons()` does:

    EarlyAnswers -> ConnectionDeadlines -> ConfigLoader -> AdminApi -> Router
    -> Authentication -> PolicyEnforcer -> ApprovalHolds -> Gate -> Responses -> Recorder
    -> Telemetry -> Replicas
    -> ToolPinning (then Checkpointer and Feeds, which have lifecycle hooks only)

Request side: the Gate's last step is the Recorder's write-ahead (the decision rows
committed, or the request refused). Responses runs each response message through the
PolicyEnforcer (discovery filtering), TaskOwnership, ToolPinning, ResponseMasking and
Recorder stages. The PolicyEnforcer asks TaskOwnership who owns a task a request names.
The `AdminApi` owns the admin listener (`holdgate_admin`); the approvals API, campaigns
and Telemetry's `/metrics` register their routes on it here. ApprovalHolds hands calls
for URL elicitation to `ElicitedApprovals`; both write approvals through `ApprovalCore`.
`flowstate` is the glue they share (per-flow state, refusals, failing closed); it is not
an addon. mitmproxy itself sees one addon, `Pipeline`, which calls these in order
(`gateway_addons()`).
"""

from __future__ import annotations

from holdgate.addons.admin_api import AdminApi
from holdgate.addons.approval_core import ApprovalCore, LegacyPlaceholders
from holdgate.addons.approvals_api import ApprovalsApi, CampaignsApi
from holdgate.addons.authentication import Authentication
from holdgate.addons.checkpointer import Checkpointer
from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.deadlines import ConnectionDeadlines
from holdgate.addons.early_answers import EarlyAnswers
from holdgate.addons.elicited_approvals import ElicitedApprovals
from holdgate.addons.enforcement import PolicyEnforcer
from holdgate.addons.feeds import Feeds
from holdgate.addons.gate import Gate
from holdgate.addons.holds import ApprovalHolds
from holdgate.addons.pipeline import Pipeline
from holdgate.addons.recorder import Recorder
from holdgate.addons.replicas import Replicas
from holdgate.addons.response_masking import ResponseMasking
from holdgate.addons.responses import Responses
from holdgate.addons.router import Router
from holdgate.addons.task_ownership import TaskOwnership
from holdgate.addons.telemetry import Telemetry
from holdgate.addons.tool_pinning import ToolPinning


def default_addons() -> list[object]:
    loader = ConfigLoader()
    recorder = Recorder(loader)
    pins = ToolPinning(loader, recorder)
    tasks = TaskOwnership(recorder)
    legacy = LegacyPlaceholders()
    policy = PolicyEnforcer(loader, recorder, tasks, pins, legacy)
    replicas = Replicas(loader, recorder)
    approvals = ApprovalCore(recorder, pins, replicas)
    holds = ApprovalHolds(loader, approvals, ElicitedApprovals(loader, approvals), legacy)
    telemetry = Telemetry(loader, recorder, holds)
    admin = AdminApi()
    admin.serve_after(approvals.started)  # once a previous run's holds are closed
    admin.route("/approvals/*", ApprovalsApi(loader, approvals, holds, admin.callers).handle)
    admin.route("/campaigns/*", CampaignsApi(loader, approvals, admin.callers).handle)
    admin.route("/metrics", telemetry.handle_metrics)
    return [
        EarlyAnswers(),  # load only: a request refused on its headers is answered at once
        ConnectionDeadlines(),
        loader,
        admin,
        Router(loader),
        Authentication(loader, recorder),
        policy,
        holds,
        Gate(recorder.write_ahead),
        Responses(loader, stages=[policy, tasks, pins, ResponseMasking(), recorder]),
        recorder,
        telemetry,  # after the recorder, whose writer it counts
        replicas,  # after the recorder, whose store it registers in
        pins,  # after the recorder, which opens (or creates) the store the pins are read from
        Checkpointer(loader),  # signs the head after the recorder wrote its last rows
        Feeds(loader),  # lifecycle only: sends the store's rows to the config's feeds
    ]


def gateway_addons() -> list[object]:
    """What `addons/gateway.py` gives mitmproxy: the addons above behind one `Pipeline`."""
    return [Pipeline(default_addons())]
