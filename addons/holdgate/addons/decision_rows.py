"""DecisionRows: each request's decision rows (one per message: who, what, the decision
and its rule, the arguments masked for the record), and the session each flow belongs to.

The Gate awaits `write_ahead` as its last step: with `audit: required` (the default) the
rows are durable before the request leaves, and a request whose rows cannot be built or
written is refused, never forwarded; with `audit: best_effort` they are only queued
(losses counted). A request that never left gets the same rows from the Recorder at its
end. Every flow with an identity belongs to a session, resolved once (`session_of`): the
protocol's session id where there is one, else a session Holdgate groups itself
(`holdgate.protocol.sessionless`: MCP 2026-07-28 has no session ids).

Placed before the Gate and the Recorder, which call it; it calls only the AuditStore and
the `traces` it is given (Telemetry's).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from typing import Any, Protocol

from mitmproxy import http

from holdgate.addons.audit_store import UNRECORDABLE, AuditStore
from holdgate.addons.flowstate import DecidedMessage, FlowState, refuse, session_key, state
from holdgate.config.gateway_config import GatewayConfig
from holdgate.masking.masker import MaskOutcome
from holdgate.masking.record_masking import ToolHint, mask_for_record, scrub_row
from holdgate.protocol.canonical_json import args_digest
from holdgate.protocol.jsonrpc import INTERNAL_ERROR
from holdgate.protocol.mrtr import input_responses, request_state
from holdgate.protocol.sessionless import (
    GroupKey,
    SessionGrouper,
    client_of,
    describe_client,
    group_key,
    invalid_traceparent,
    protocol_version_of,
    traceparent_of,
)
from holdgate.store import StoreError
from holdgate.store import iso as now_iso
from holdgate.store.rows import Row

logger = logging.getLogger("holdgate")

# How long a request waits for its decision rows to be committed before it is refused
# (the writer's own busy timeout on a locked store is 5 s).
WRITE_AHEAD_TIMEOUT = 10.0


class Traces(Protocol):
    def __call__(self, flow: http.HTTPFlow, *, leaving: bool) -> list[str] | None: ...


class DecisionRows:
    def __init__(self, audit: AuditStore, traces: Traces | None = None) -> None:
        self.audit = audit
        # Telemetry's, given in `default_addons()`: the gateway span of each message
        self.traces = traces
        self.sessions_seen: dict[str, None] = {}
        self.grouper = SessionGrouper()
        # Flows whose decision rows went to the store before they left: their end writes an
        # outcome row instead. (Beside the flow, like FlowState: never saved with it.)
        self._written_ahead: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()

    def written_ahead(self, flow: http.HTTPFlow) -> bool:
        return flow in self._written_ahead

    async def write_ahead(self, flow: http.HTTPFlow) -> None:
        """The Gate's last step before a cleared request leaves: its decision rows (one per
        message: identity, decision, rule, masked arguments, config hash) are committed to
        the store, or the request is refused (audit: required). Never blocks the loop."""
        st = state(flow)
        config, writer = st.route.config, self.audit.writer
        if writer is None:
            raise RuntimeError("the write-ahead before the store is open")
        required = config.audit == "required"
        if required and not writer.healthy:
            self._refuse_unrecorded(
                flow,
                "the audit store cannot be written, so nothing is served unrecorded; "
                "the operator must fix the store (see the gateway log)",
                writer.last_error,
            )
            return
        try:
            rows = [
                ("events", scrub_row(row, self.audit.record_masking(config)))
                for row in self.request_rows(flow, config, strict=True)
            ]
        except UNRECORDABLE as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.error("holdgate: a request could not be recorded, so not forwarded: %s", error)
            refuse(
                flow,
                502,
                INTERNAL_ERROR,
                "the request's arguments cannot be masked for the audit record "
                f"({type(exc).__name__}), so it was not forwarded",
                kind="unrecordable",
            )
            st.audit_error = error
            return
        if not required:
            if not writer.submit_all(rows):
                st.audit_lost = True
            self._written_ahead.add(flow)
            return
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(writer.submit_durable(rows)), WRITE_AHEAD_TIMEOUT
            )
        except (StoreError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.error("holdgate: decision rows not written, request refused: %s", error)
            self._refuse_unrecorded(
                flow,
                "the decision could not be written to the audit store, so the request was "
                "not forwarded; the operator must fix the store (see the gateway log)",
                error,
            )
            return
        self._written_ahead.add(flow)

    @staticmethod
    def _refuse_unrecorded(flow: http.HTTPFlow, message: str, error: str | None) -> None:
        refuse(flow, 503, INTERNAL_ERROR, message, kind="audit-unavailable")
        state(flow).audit_error = error

    def request_rows(
        self, flow: http.HTTPFlow, config: GatewayConfig, *, strict: bool
    ) -> list[Row]:
        """One row per message of the request: who, what, the decision and its rule, the
        arguments masked for the record. `strict`: raise (UNRECORDABLE) when arguments
        cannot be masked, instead of leaving them out of the row."""
        st = state(flow)
        upstream = st.route.upstream.name if st.routed else ""
        refused = st.refused
        rows: list[Row] = []
        decided_messages: list[DecidedMessage | None] = [*st.decided] or [None]
        traces = self.traces(flow, leaving=strict) if self.traces is not None else None
        for index, decided in enumerate(decided_messages):
            message = decided.message if decided is not None else None
            decision = decided.decision if decided is not None else None
            arguments = message.arguments if message is not None else None
            masked_args: MaskOutcome | None = None
            if message is not None and arguments is not None:
                masked_args = (
                    mask_for_record(
                        arguments, self.audit.record_masking(config), upstream, message.tool
                    )
                    if strict
                    else self.audit.masked_for_record(arguments, config, upstream, message.tool)
                )
            extra = extra_of(st)
            if decision is not None and decision.rate_limited:
                extra["rate_limited"] = True
            if masked_args is not None and masked_args.findings:
                extra["args_findings"] = masked_args.findings  # replay must know
            if decided is not None and decided.approval is not None:
                extra["approval"] = decided.approval  # how a held call was released
            if decided is not None and decided.shadow is not None:
                extra["shadow"] = decided.shadow  # where the shadow policy differs
            if traces:
                extra["trace"] = traces[index]  # the gateway's span: the trace joins this row
            task = st.task_requests.get(json.dumps(message.id)) if message is not None else None
            if task is not None:
                extra["task"] = {"key": task.task_key, **task.link()}
            if message is not None:
                tool = task.tool if task is not None else message.tool  # tasks/update's input
                self._note_retry(extra, message.raw, config, upstream, tool, strict)
                if invalid_traceparent(message.raw):
                    extra["traceparent_invalid"] = True  # sent, but never kept as if valid
            row = self.row(flow, config)
            if st.session_kind == "overflow":  # shared by many clients: which one this was
                extra["client"] = self._group_key(flow).client
            row.update(
                traceparent=traceparent_of(message.raw) if message is not None else None,
                direction="notification"
                if message is not None and message.kind == "notification"
                else "request",
                method=(message.method if message is not None else None)
                or f"HTTP {flow.request.method}",
                target=message.target if message is not None else None,
                jsonrpc_id=json.dumps(message.id if message is not None else None),
                decision=(decision.action if decision is not None else None)
                or (refused.kind if refused is not None else None)
                or "pass",
                rule=decision.rule if decision is not None else None,
                reason=(decision.reason if decision is not None else None)
                or (refused.recorded if refused is not None else None),
                approval_id=decided.approval_id if decided is not None else None,
                args_digest=_digest(self.audit.key(config), arguments, strict),
                args_masked=(
                    truncate(json.dumps(masked_args.value, ensure_ascii=False))
                    if masked_args is not None
                    else None
                ),
                # what was masked in this call's own arguments; responses carry theirs
                masked=json.dumps(masked_args.findings)
                if masked_args is not None and masked_args.findings
                else None,
                extra=json.dumps(extra),
            )
            rows.append(row)
        return rows

    def _note_retry(
        self,
        extra: dict[str, Any],
        raw: dict[str, Any],
        config: GatewayConfig,
        upstream: str,
        tool: ToolHint,
        strict: bool,
    ) -> None:
        """A multi round-trip retry: its `inputResponses` masked for the record, its
        `requestState` only as the keyed digest its first round's response row carries."""
        responses = input_responses(raw)
        if responses is not None:
            masked = (
                mask_for_record(responses, self.audit.record_masking(config), upstream, tool)
                if strict
                else self.audit.masked_for_record(responses, config, upstream, tool)
            )
            extra["input_responses"] = masked.value
            if masked.findings:
                extra["input_responses_findings"] = masked.findings
        state_given = request_state(raw)
        if state_given is not None:
            extra["request_state_digest"] = args_digest(self.audit.key(config), state_given)

    def row(self, flow: http.HTTPFlow, config: GatewayConfig) -> dict[str, Any]:
        st = state(flow)
        identity = st.identity if st.authenticated else None
        route = st.route if st.routed else None
        return {
            "ts": now_iso(),
            "flow_id": flow.id,
            "session_id": self.session_of(flow, config),
            "user": identity.user if identity is not None else None,
            "groups": json.dumps(list(identity.groups) if identity is not None else []),
            "auth_method": identity.method if identity is not None else None,
            "upstream": route.upstream.name if route is not None else None,
            "config_hash": config.digest,
            "client_addr": route.client_addr if route is not None else None,
        }

    def session_of(self, flow: http.HTTPFlow, config: GatewayConfig) -> str | None:
        """The session a flow with an identity belongs to, resolved once: its protocol
        session id (header, `session_id` query, legacy stream), else a grouped one. An
        `initialize`, or a GET stream, learns its id from its response (`Mcp-Session-Id`,
        the legacy transport's endpoint): until then none (its request rows keep NULL), and
        if the response brings none (a stateless server, a refusal) it is grouped. None for
        a flow without an identity: a client must not open sessions at will."""
        st = state(flow)
        if st.session is not None or not st.authenticated:
            return st.session
        found = session_key(flow)
        pending = flow.request.method == "GET" or _initializes(st)
        if found is None and pending:
            if flow.response is None:
                return None
            found = flow.response.headers.get("mcp-session-id") if st.refused is None else None
        if found:
            st.session, st.session_kind = found, "mcp"
            return found
        key = self._group_key(flow)
        grouped = self.grouper.resolve(
            key, flow.request.timestamp_start, config.sessions.grouped_per_caller
        )
        st.session = grouped.session
        st.session_kind = "overflow" if grouped.overflow else "grouped"
        if grouped.is_new:
            self.note_session(flow, config, grouped.session, key.client)
        return grouped.session

    @staticmethod
    def _group_key(flow: http.HTTPFlow) -> GroupKey:
        """What a flow without a session id is grouped by (its caller's client as sent)."""
        st = state(flow)
        first = st.decided[0].message.raw if st.decided else None
        return group_key(
            st.identity.user,
            st.route.upstream.name,
            client_of(first),
            flow.request.headers.get("user-agent"),
            st.route.client_addr,
        )

    def note_session(
        self, flow: http.HTTPFlow, config: GatewayConfig, session: str, client: str | None
    ) -> None:
        """A `sessions` row when a session is first seen: who, where, which client (as it
        reports itself; for a protocol session, its `initialize`'s clientInfo), protocol
        revision and kind."""
        if session in self.sessions_seen:
            return
        if len(self.sessions_seen) > 100_000:
            self.sessions_seen.pop(next(iter(self.sessions_seen)))
        self.sessions_seen[session] = None
        st = state(flow)
        route = st.route if st.routed else None
        first = st.decided[0].message.raw if st.decided else None
        client = (
            describe_client(_initialize_params(st).get("clientInfo")) or client or client_of(first)
        )
        self.audit.submit(
            flow,
            config,
            "sessions",
            {
                "session_id": session,
                "user": st.identity.user if st.authenticated else None,
                "upstream": route.upstream.name if route is not None else None,
                "client_addr": route.client_addr if route is not None else None,
                "protocol_version": flow.request.headers.get("mcp-protocol-version")
                or protocol_version_of(first),
                "first_seen": now_iso(),
                "client": client,
                "kind": st.session_kind,
            },
        )


def extra_of(st: FlowState) -> dict[str, Any]:
    published = st.to_json()
    keys = (
        "spoofing",
        "auth_error",
        "error",
        "stream_cut",
        "hidden",
        "tools_changed",
        "exempted",
        "audit_error",
        "reflected_secret",
        "upstream_credential",
    )
    extra = {k: published[k] for k in keys if k in published}
    if st.refused is not None:  # what the client got, when it is not what the rule decided
        extra["refused"] = {
            "kind": st.refused.kind,
            "code": st.refused.code,
            "message": st.refused.message,
        }
        if st.refused.detail:
            extra["refused"]["detail"] = st.refused.detail
    return extra


def _initializes(st: FlowState) -> bool:
    return any(d.message.method == "initialize" for d in st.decided)


def _initialize_params(st: FlowState) -> dict[str, Any]:
    """The params of the flow's `initialize` request ({} when it has none)."""
    for d in st.decided:
        params = d.message.raw.get("params")
        if d.message.method == "initialize" and isinstance(params, dict):
            return params
    return {}


def _digest(key: bytes, arguments: Any, strict: bool) -> str | None:
    """The arguments' keyed digest; None for ones that cannot be serialized, unless strict."""
    try:
        return args_digest(key, arguments)
    except UNRECORDABLE:
        if strict:
            raise
        return None


RECORDED_TEXT = 65_536  # characters of a message kept in its row (the rest is cut)


def truncate(text: str, limit: int = RECORDED_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + "…[truncated]"
