"""The mitmproxy side of Holdgate: one addon per module, glue over the pure library.

`default_addons()` is the whole wiring: it builds the services, then the stages with the
collaborators each one calls, subscribes the observers, and returns them in the order
they run for every flow (mitmproxy sees one addon, `Pipeline`, which calls them in that
order; `gateway_addons()`):

    ConfigLoader, AuditStore, AdminApi             services: configured first, closed last
    -> EarlyAnswers -> ConnectionDeadlines
    -> Replicas, Telemetry, DecisionLog, ToolPinning, ShadowPolicy   lifecycle only
    -> Router -> Authentication -> PolicyEnforcer -> ApprovalHolds -> Gate   request stages
    -> Responses -> Recorder                                                 response side
    -> Checkpointer, Feeds                         lifecycle only

Calls go with that order, or to a service or a collaborator that is not an addon:
PolicyEnforcer and ApprovalHolds log each decision through DecisionLog;
PolicyEnforcer asks ToolPinning's `review`, TaskOwnership and ShadowPolicy (a candidate
config decided again, never enforced); ApprovalHolds hands calls for URL elicitation to
ElicitedApprovals, and both write approvals through ApprovalCore
(given the AuditStore, ToolPinning and Replicas); the Gate's last step is DecisionRows'
`write_ahead` (the decision rows committed, or the request refused); Responses runs each
response message through the PolicyEnforcer, TaskOwnership, ToolPinning, ResponseMasking
and the Recorder; DecisionRows and the Recorder call Telemetry's `traces` and
`finished`. Everyone reaches the store through the AuditStore (its `run` does a store
call off the event loop). Observers subscribe to the services: the Recorder and
Telemetry to the ConfigLoader's loads, the Recorder to the ShadowPolicy's too; Replicas,
ToolPinning, Checkpointer and Feeds to the AuditStore's opening (so no one depends on
configuring after it); Telemetry to its committed rows, Replicas to its `before_close`,
Checkpointer and Feeds to its `after_shutdown`. The AdminApi owns the admin listener
(`holdgate_admin`), opened once a previous run's holds are closed; the approvals API, the
approval inbox, campaigns, Telemetry's `/metrics`, the health and status routes
(`/healthz`, `/readyz`, `/status`, read from the services and Replicas) and ConfigApi's
`/config/hash` (the config in force, for `policy apply`) register their routes on it here.
`/readyz` says ready only once the ConfigLoader has seen mitmproxy's start-up end, with a
config in force, the AuditStore's writer healthy and Replicas' lease taken by the store. A
stage that raises in a flow hook gets the flow refused by the Pipeline. `flowstate` is the
glue they share (per-flow state, refusals, failing closed); it is not an addon.
"""

from __future__ import annotations

from holdgate.addons.admin_api import AdminApi
from holdgate.addons.approval_core import ApprovalCore, LegacyPlaceholders
from holdgate.addons.approval_inbox import ApprovalInbox
from holdgate.addons.approvals_api import ApprovalsApi, CampaignsApi
from holdgate.addons.audit_store import AuditStore
from holdgate.addons.authentication import Authentication
from holdgate.addons.checkpointer import Checkpointer
from holdgate.addons.config_api import ConfigApi
from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.deadlines import ConnectionDeadlines
from holdgate.addons.decision_log import DecisionLog
from holdgate.addons.decision_rows import DecisionRows
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
from holdgate.addons.shadow import ShadowPolicy
from holdgate.addons.status_api import HealthApi, StatusApi
from holdgate.addons.task_ownership import TaskOwnership
from holdgate.addons.telemetry import Telemetry
from holdgate.addons.tool_pinning import ToolPinning
from holdgate.credentials import CredentialBroker


def default_addons() -> list[object]:
    # Services first: they own what every stage uses.
    loader = ConfigLoader()
    audit = AuditStore(loader)
    admin = AdminApi()
    # Stages and observers, each given the services and collaborators it calls.
    replicas = Replicas(loader, audit)
    pins = ToolPinning(loader, audit)
    tasks = TaskOwnership(audit)
    legacy = LegacyPlaceholders()
    decision_log = DecisionLog()
    shadow = ShadowPolicy()
    policy = PolicyEnforcer(loader, audit, tasks, pins, legacy, shadow, decision_log)
    approvals = ApprovalCore(audit, pins, replicas)
    elicited = ElicitedApprovals(loader, approvals)
    holds = ApprovalHolds(loader, approvals, elicited, legacy, decision_log)
    telemetry = Telemetry(loader, audit, approvals_pending=lambda: len(holds.holds))
    decisions = DecisionRows(audit, traces=telemetry.traces)
    recorder = Recorder(
        loader,
        audit,
        decisions,
        finished=telemetry.finished,
        registered_replica=lambda: replicas.replica,
    )
    checkpointer = Checkpointer(loader)
    feeds = Feeds(loader)
    config_api = ConfigApi(loader, admin.callers)
    # Every subscription and route, in one place.
    loader.checks.append(audit.config_problem)
    loader.listeners.append(recorder.note_config_version)
    loader.listeners.append(telemetry.config_loaded)
    loader.listeners.append(config_api.config_event)
    shadow.listeners.append(recorder.note_config_version)
    audit.opened.extend(
        [
            replicas.store_opened,  # registers first: the Recorder's rows name the replica
            recorder.store_opened,
            pins.store_opened,
            checkpointer.use_store,
            feeds.use_store,
        ]
    )
    audit.rows_written.append(telemetry.metrics.count_rows)
    audit.before_close.append(replicas.retire)  # marks itself gone while it still can
    audit.after_shutdown.extend([checkpointer.shut_down, feeds.shut_down])  # the last rows
    admin.serve_after(approvals.started)  # once a previous run's holds are closed
    admin.route("/approvals/*", ApprovalsApi(loader, approvals, holds, admin.callers).handle)
    admin.route("/inbox/*", ApprovalInbox(loader, approvals, holds, admin.callers).handle)
    admin.route("/campaigns/*", CampaignsApi(loader, approvals, admin.callers).handle)
    admin.route("/metrics", telemetry.handle_metrics)
    health = HealthApi(loader, audit, replicas)
    admin.route("/healthz", health.healthz)
    admin.route("/readyz", health.readyz)
    admin.route("/status", StatusApi(health, admin.callers, lambda: len(holds.holds)).handle)
    admin.route("/config/hash", config_api.handle)
    return [
        loader,
        audit,  # opens the store before any stage configures; closes after every `done`
        admin,  # lifecycle only: the admin listener and its routes
        EarlyAnswers(),  # load only: a request refused on its headers is answered at once
        ConnectionDeadlines(),
        replicas,  # lifecycle only: registers at configure, heartbeats while running
        telemetry,  # lifecycle only: metrics and traces, fed by the Recorder and the store
        decision_log,  # lifecycle only: its option; the policy and the holds log through it
        pins,  # lifecycle only: pins read at configure and polled; policy asks its review
        shadow,  # lifecycle only: the candidate loaded and watched; policy asks it too
        Router(loader),
        Authentication(loader, audit),
        policy,
        holds,
        Gate(decisions.write_ahead, CredentialBroker(), audit.key),
        Responses(loader, stages=[policy, tasks, pins, ResponseMasking(), recorder]),
        recorder,
        checkpointer,  # lifecycle only: signs the chain's head while running
        feeds,  # lifecycle only: sends the store's rows to the config's feeds
    ]


def gateway_addons() -> list[object]:
    """What `addons/gateway.py` gives mitmproxy: the addons above behind one `Pipeline`."""
    return [Pipeline(default_addons())]
