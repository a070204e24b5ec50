"""Recorder: every JSON-RPC message, both directions, into the audit store; each session
into a masked flow file.

A writer thread does the I/O. With `audit: required` (the default) a request's decision
rows are durable before it leaves: the Gate awaits `write_ahead` as its last step, and a
request whose rows cannot be built or written is refused, never forwarded. The outcome
(status, latency, a refusal after the decision) follows in one `outcome` row per flow
(same `flow_id`, a later `seq`), and each response message in its own row. With
`audit: best_effort` the same rows are only queued (losses counted) and never awaited.

Every flow with an identity belongs to a session, resolved once (`session_of`): the
protocol's session id where there is one, else a session Holdgate groups itself
(`holdgate.protocol.sessionless`: MCP 2026-07-28 has no session ids).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from mitmproxy import ctx, http

from holdgate.addons.audit_store import UNRECORDABLE, AuditStore
from holdgate.addons.flowstate import (
    DecidedMessage,
    FlowState,
    MessageContext,
    annotate,
    answered_tool,
    fail_closed,
    publish,
    refuse,
    session_key,
    state,
)
from holdgate.config.gateway_config import GatewayConfig
from holdgate.config.options import replica_name
from holdgate.masking.masker import MaskOutcome
from holdgate.masking.record_masking import ToolHint, mask_for_record, scrub_row
from holdgate.protocol.canonical_json import args_digest
from holdgate.protocol.jsonrpc import INTERNAL_ERROR
from holdgate.protocol.mrtr import (
    input_responses,
    is_input_required,
    request_state,
    without_request_state,
)
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
from holdgate.recording.flowfiles import ClosedFile, RecordingWriter, Redaction, route_back
from holdgate.recording.snapshots import Snapshots
from holdgate.store import StoreError
from holdgate.store import iso as now_iso
from holdgate.store.rows import Row

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader


class Traces(Protocol):
    def __call__(self, flow: http.HTTPFlow, *, leaving: bool) -> list[str] | None: ...


logger = logging.getLogger("holdgate")

# How long a request waits for its decision rows to be committed before it is refused
# (the writer's own busy timeout on a locked store is 5 s).
WRITE_AHEAD_TIMEOUT = 10.0


class Recorder:
    def __init__(
        self,
        loader: ConfigLoader,
        audit: AuditStore,
        traces: Traces | None = None,
        finished: Callable[[http.HTTPFlow], None] | None = None,
    ) -> None:
        self.loader = loader
        self.audit = audit
        # Telemetry's, given in `default_addons()`: the gateway span of each message as
        # its rows are built, and each flow's end once its rows are queued
        self.traces = traces
        self.finished = finished
        self.recordings: RecordingWriter | None = None
        self.snapshots = Snapshots()
        self.replica = ""
        self.sessions_seen: dict[str, None] = {}
        self.grouper = SessionGrouper()
        self.unwritten_versions: list[dict[str, Any]] = []
        # Flows whose decision rows went to the store before they left: their end writes an
        # outcome row instead. (Beside the flow, like FlowState: never saved with it.)
        self._written_ahead: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()

    def note_config_version(self, event: dict[str, Any]) -> None:
        """A config loaded, reloaded or rejected: a `config_versions` row."""
        row = {"ts": now_iso(), **event}
        writer = self.audit.writer
        if writer is None:  # a load before the store is opened: written once it is
            self.unwritten_versions.append(row)
        elif not writer.submit("config_versions", row):
            logger.error("holdgate: could not record config version %s", event["config_hash"])

    def store_opened(self, _location: str) -> None:
        """The store opened: the config versions announced before it go in."""
        writer = self.audit.writer
        if writer is not None:
            for row in self.unwritten_versions:
                writer.submit("config_versions", row)
            self.unwritten_versions.clear()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "holdgate_recordings",
            str,
            "recordings",
            "Folder of masked flow files, one .mitm per MCP session (mitmweb -r to replay); "
            "empty writes none (the audit store still records every message).",
        )

    def configure(self, updated: set[str]) -> None:
        if "holdgate_recordings" in updated:
            self.close_recordings()
            folder = ctx.options.holdgate_recordings
            self.replica = replica_name(ctx.options)
            self.recordings = (
                RecordingWriter(folder, replica=self.replica, on_closed=self.note_closed_file)
                if folder
                else None
            )
            if not folder:
                logger.warning("holdgate: holdgate_recordings is empty: no flow files written")

    def note_closed_file(self, closed: ClosedFile) -> None:
        """A flow file closed whole: its `recordings` row (replica, session, file, flows,
        bytes, sha256), so a session's files can be gathered from every replica and a file
        changed since is seen. Runs on the recordings reader thread: only queues."""
        row: Row = {
            "ts": now_iso(),
            "replica": self.replica,
            "session_id": closed.session,
            "file": closed.file,
            "flows": closed.flows,
            "bytes": closed.bytes,
            "sha256": closed.sha256,
        }
        masking = self.audit.cached_record_masking()
        if masking is not None:
            row = scrub_row(row, masking)
        writer = self.audit.writer
        if writer is None or not writer.submit("recordings", row):
            logger.error(
                "holdgate: the closed flow file %s was not recorded in the store", closed.file
            )

    def done(self) -> None:
        # The recordings process closes its files as it ends and reports each one; the
        # store is still open for their `recordings` rows (the AuditStore closes last).
        self.close_recordings()

    def close_recordings(self) -> None:
        if self.recordings is not None:
            self.recordings.close()
            self.recordings = None

    async def write_ahead(self, flow: http.HTTPFlow) -> None:
        """The Gate's last step before a cleared request leaves: its decision rows (one per
        message: identity, decision, rule, masked arguments, config hash) are committed to
        the store, or the request is refused (audit: required). Never blocks the loop."""
        st = state(flow)
        config, writer = st.config, self.audit.writer
        if config is None or writer is None:
            raise RuntimeError("recorder not configured")
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
                for row in self._request_rows(flow, config, strict=True)
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

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any:
        """Response side: one event row per message, masked as the client saw it."""
        st = state(flow)
        config = st.config
        if config is None or st.upstream is None:
            raise RuntimeError("a response stage on a flow that was never routed")
        method = message.get("method") if isinstance(message, dict) else None
        if isinstance(message, dict) and method is not None:
            direction = "server_request" if "id" in message else "server_notification"
        else:
            direction = "response"
        stored = message
        answers = context.answers
        if (context.exemptions or context.dropped) and message is not None:
            # An exempt caller saw cleartext, and a dropped message was never masked for the
            # client; the record never keeps either as is. (Others saw it masked with the
            # record's profiles; injected values are scrubbed in submit.)
            tool = answered_tool(context)
            stored = self.audit.masked_for_record(message, config, st.upstream.name, tool).value
        # An opaque requestState is recorded only as its keyed digest (which links the retry
        # that sends it back to this row); never as given.
        extra: dict[str, Any] = {"transport": context.transport}
        if context.exemptions:
            extra["exempted"] = list(context.exemptions)
        if context.task is not None:  # a task's answer: the result of the call that created it
            extra["task"] = {"key": context.task.task_key, **context.task.link()}
        if is_input_required(message):
            extra["input_required"] = True
        state_given = request_state(message)
        if state_given is not None:
            extra["request_state_digest"] = args_digest(self.audit.key(config), state_given)
            stored = without_request_state(stored)
        row = self._row(flow, config)
        row.update(
            traceparent=_traceparent_answered(st, message),
            direction=direction,
            method=method or (answers[0] if answers else None),
            target=answers[1] if answers else None,
            jsonrpc_id=_id(message),
            decision="dropped" if context.dropped else "pass",
            reason=context.dropped,
            status=_error_code(message),
            masked=json.dumps(context.findings) if context.findings else None,
            extra=json.dumps(extra),
            # scrubbed before the cut, so no part of an injected value is left at the end
            args_masked=_truncate(
                self.audit.record_masking(config).scrub(json.dumps(stored, ensure_ascii=False))[0]
            ),
        )
        self.audit.submit(flow, config, "events", row)
        return message

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if st.upstream is not None or st.refused is not None:
            self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        """The outcome row (or, for a request that never left, its decision rows now) and
        the session's flow file."""
        st = state(flow)
        # The config that decided the flow, not whichever is loaded when it ends.
        config = st.config or self.loader.current
        if config is None or st.recorded:
            return
        st.recorded = True
        if st.upstream is None and st.refused is None:
            return
        annotate(flow)
        publish(flow)
        # An unauthenticated request gets its refusal row, nothing more: no session row,
        # no flow file (a client would otherwise create them at will).
        session = self.session_of(flow, config) if st.identity is not None else None
        if session is not None:
            self._note_session(flow, config, session, None)
        latency = None
        if flow.response is not None and flow.response.timestamp_end:
            latency = round((flow.response.timestamp_end - flow.request.timestamp_start) * 1000, 2)
        status = flow.response.status_code if flow.response is not None else None
        if flow in self._written_ahead:
            self.audit.submit(
                flow, config, "events", self._outcome_row(flow, config, status, latency)
            )
        else:
            rows = self._request_rows(flow, config, strict=False)
            for row in rows:
                row.update(status=status, latency_ms=latency)
            self.audit.submit_all(flow, config, [("events", row) for row in rows])
        if self.finished is not None:
            self.finished(flow)
        if session is not None:
            self._write_recording(flow, config, session)

    def _request_rows(
        self, flow: http.HTTPFlow, config: GatewayConfig, *, strict: bool
    ) -> list[Row]:
        """One row per message of the request: who, what, the decision and its rule, the
        arguments masked for the record. `strict`: raise (UNRECORDABLE) when arguments
        cannot be masked, instead of leaving them out of the row."""
        st = state(flow)
        upstream = st.upstream.name if st.upstream is not None else ""
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
            extra = _extra(st)
            if decision is not None and decision.rate_limited:
                extra["rate_limited"] = True
            if masked_args is not None and masked_args.findings:
                extra["args_findings"] = masked_args.findings  # replay must know
            if decided is not None and decided.approval is not None:
                extra["approval"] = decided.approval  # how a held call was released
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
            row = self._row(flow, config)
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
                or (refused.message if refused is not None else None),
                approval_id=decided.approval_id if decided is not None else None,
                args_digest=_digest(self.audit.key(config), arguments, strict),
                args_masked=(
                    _truncate(json.dumps(masked_args.value, ensure_ascii=False))
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

    def _outcome_row(
        self, flow: http.HTTPFlow, config: GatewayConfig, status: int | None, latency: float | None
    ) -> Row:
        """How a request that left ended: status, latency, a refusal after its decision
        (`extra.refused`), what was masked in the answer (`extra.masked`; each response row
        counts its own in `masked`). Linked to its decision rows by `flow_id`."""
        st = state(flow)
        only = st.decided[0].message if len(st.decided) == 1 else None
        extra = _extra(st)
        if st.masked:
            extra["masked"] = dict(st.masked)
        row = self._row(flow, config)
        row.update(
            traceparent=traceparent_of(only.raw) if only is not None else None,
            direction="outcome",
            method=(only.method if only is not None else None) or f"HTTP {flow.request.method}",
            target=only.target if only is not None else None,
            jsonrpc_id=json.dumps(only.id) if only is not None else None,
            reason=st.refused.message if st.refused is not None else None,
            status=status,
            latency_ms=latency,
            extra=json.dumps(extra),
        )
        return row

    def _row(self, flow: http.HTTPFlow, config: GatewayConfig) -> dict[str, Any]:
        st = state(flow)
        identity = st.identity
        return {
            "ts": now_iso(),
            "flow_id": flow.id,
            "session_id": self.session_of(flow, config),
            "user": identity.user if identity is not None else None,
            "groups": json.dumps(list(identity.groups) if identity is not None else []),
            "auth_method": identity.method if identity is not None else None,
            "upstream": st.upstream.name if st.upstream is not None else None,
            "config_hash": config.digest,
            "client_addr": st.client_addr,
        }

    def session_of(self, flow: http.HTTPFlow, config: GatewayConfig) -> str | None:
        """The session a flow with an identity belongs to, resolved once: its protocol
        session id (header, `session_id` query, legacy stream), else a grouped one. An
        `initialize`, or a GET stream, learns its id from its response (`Mcp-Session-Id`,
        the legacy transport's endpoint): until then none (its request rows keep NULL), and
        if the response brings none (a stateless server, a refusal) it is grouped. None for
        a flow without an identity: a client must not open sessions at will."""
        st = state(flow)
        if st.session is not None or st.identity is None or st.upstream is None:
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
            self._note_session(flow, config, grouped.session, key.client)
        return grouped.session

    @staticmethod
    def _group_key(flow: http.HTTPFlow) -> GroupKey:
        """What a flow without a session id is grouped by (its caller's client as sent)."""
        st = state(flow)
        assert st.identity is not None and st.upstream is not None
        first = st.decided[0].message.raw if st.decided else None
        return group_key(
            st.identity.user,
            st.upstream.name,
            client_of(first),
            flow.request.headers.get("user-agent"),
            st.client_addr,
        )

    def _note_session(
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
                "user": st.identity.user if st.identity is not None else None,
                "upstream": st.upstream.name if st.upstream is not None else None,
                "client_addr": st.client_addr,
                "protocol_version": flow.request.headers.get("mcp-protocol-version")
                or protocol_version_of(first),
                "first_seen": now_iso(),
                "client": client,
                "kind": st.session_kind,
            },
        )

    def _write_recording(self, flow: http.HTTPFlow, config: GatewayConfig, session: str) -> None:
        """Into the session's own flow file. Only a state snapshot is taken here; the
        recordings process masks it for the record (bodies whole, headers, whatever the
        caller was exempt from) off the loop."""
        if self.recordings is None:
            return
        st = state(flow)
        streamed = flow.response is not None and bool(flow.response.stream)
        redaction = Redaction(
            injected=st.injected,
            streamed=bytes(st.streamed) if streamed else None,
            upstream=st.upstream.name if st.upstream is not None else "",
            route=route_back(st.upstream),
        )
        snapshot = self.snapshots.flow_state(flow)
        self.recordings.submit(session, snapshot, redaction, self.audit.record_masking(config))


def _extra(st: FlowState) -> dict[str, Any]:
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
    )
    extra = {k: published[k] for k in keys if k in published}
    if st.refused is not None:  # what the client got, when it is not what the rule decided
        extra["refused"] = {
            "kind": st.refused.kind,
            "code": st.refused.code,
            "message": st.refused.message,
        }
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


def _traceparent_answered(st: FlowState, message: Any) -> str | None:
    """The traceparent of the request a response answers (by id; the only one otherwise)."""
    if not st.decided or not isinstance(message, dict):
        return None
    answered = [d for d in st.decided if "id" in message and d.message.id == message.get("id")]
    if not answered and len(st.decided) == 1:
        answered = st.decided
    return traceparent_of(answered[0].message.raw) if answered else None


def _digest(key: bytes, arguments: Any, strict: bool) -> str | None:
    """The arguments' keyed digest; None for ones that cannot be serialized, unless strict."""
    try:
        return args_digest(key, arguments)
    except UNRECORDABLE:
        if strict:
            raise
        return None


def _id(message: Any) -> str | None:
    return json.dumps(message.get("id")) if isinstance(message, dict) and "id" in message else None


def _error_code(message: Any) -> int | None:
    if isinstance(message, dict) and isinstance(message.get("error"), dict):
        code = message["error"].get("code")
        return code if isinstance(code, int) else None
    return None


def _truncate(text: str, limit: int = 65_536) -> str:
    return text if len(text) <= limit else text[:limit] + "…[truncated]"
