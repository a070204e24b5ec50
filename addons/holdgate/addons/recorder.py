"""Recorder: the response-stage sink. Each response message into the audit store, as the
client saw it; each flow's end (an `outcome` row: status, latency, a refusal after the
decision, linked to its decision rows by `flow_id`); each session into a masked flow file.

A request's decision rows are DecisionRows' (written ahead by the Gate); a request that
never left gets them here, at its end. Rows go through the AuditStore, whose writer
thread does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http

from holdgate.addons.audit_store import AuditStore
from holdgate.addons.decision_rows import RECORDED_TEXT, DecisionRows, extra_of, truncate
from holdgate.addons.flowstate import (
    FlowState,
    MessageContext,
    annotate,
    answered_tool,
    fail_closed,
    publish,
    state,
)
from holdgate.config.gateway_config import GatewayConfig
from holdgate.config.options import replica_name
from holdgate.masking.record_masking import scrub_row
from holdgate.protocol.canonical_json import args_digest
from holdgate.protocol.mrtr import is_input_required, request_state, without_request_state
from holdgate.protocol.sessionless import traceparent_of
from holdgate.recording.flowfiles import ClosedFile, RecordingWriter, Redaction, route_back
from holdgate.recording.snapshots import Snapshots
from holdgate.store import iso as now_iso
from holdgate.store.event_slices import SLICE_SECONDS, EventSlice
from holdgate.store.rows import Row

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader


logger = logging.getLogger("holdgate")


class Recorder:
    def __init__(
        self,
        loader: ConfigLoader,
        audit: AuditStore,
        rows: DecisionRows,
        finished: Callable[[http.HTTPFlow], None] | None = None,
        registered_replica: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.loader = loader
        self.audit = audit
        self.rows = rows
        # Replicas', given in `default_addons()`: the name this gateway registered under,
        # which each config version row names (None before it registers)
        self.registered_replica = registered_replica
        # Telemetry's, given in `default_addons()`: each flow's end once its rows are queued
        self.finished = finished
        self.recordings: RecordingWriter | None = None
        self.snapshots = Snapshots()
        self.replica = ""
        self.unwritten_versions: list[dict[str, Any]] = []
        self.slices: dict[str, _Gathering] = {}  # by flow id: streams with events unwritten

    def note_config_version(self, event: dict[str, Any]) -> None:
        """A config loaded, reloaded or rejected (the config in force's, role `active`, or
        the shadow policy's candidate's): a `config_versions` row, naming the replica that
        loaded it (the one registered, unless the event names it)."""
        row = {"ts": now_iso(), **event}
        writer = self.audit.writer
        if writer is None:  # a load before the store is opened: written once it is
            self.unwritten_versions.append(row)
        elif not writer.submit("config_versions", self._named(row)):
            logger.error("holdgate: could not record config version %s", event["config_hash"])

    def store_opened(self, _location: str) -> None:
        """The store opened and this replica registered in it (subscribed after Replicas):
        the config versions announced before it go in."""
        writer = self.audit.writer
        if writer is not None:
            for row in self.unwritten_versions:
                writer.submit("config_versions", self._named(row))
            self.unwritten_versions.clear()

    def _named(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"replica": self.registered_replica(), **row}

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
        # Streams still open at shutdown: their slices so far. The recordings process
        # closes its files as it ends and reports each one; the store is still open for
        # their `recordings` rows (the AuditStore closes last).
        for flow_id in list(self.slices):
            try:
                self._flush(flow_id)
            except Exception as exc:  # noqa: BLE001 - the other streams' slices still go in
                logger.error("holdgate: a stream's last events were not recorded: %s", exc)
        self.close_recordings()

    def close_recordings(self) -> None:
        if self.recordings is not None:
            self.recordings.close()
            self.recordings = None

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any:
        """Response side: each message masked as the client saw it, into an events row of
        its own, or (a stream's notification) into its stream's slice (`event_slices`)."""
        st = state(flow)
        config, upstream = st.route.config, st.route.upstream.name
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
            stored = self.audit.masked_for_record(message, config, upstream, tool).value
        # An opaque requestState is recorded only as its keyed digest (which links the retry
        # that sends it back to this row); never as given.
        extra: dict[str, Any] = {}
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
        text = json.dumps(stored, ensure_ascii=False)
        n = None
        if context.transport == "sse":
            st.stream_messages += 1
            n = st.stream_messages
            if isinstance(method, str) and "id" not in message and not context.dropped:
                self._gather(flow, config, n, method, stored, text, context.findings, extra)
                return message
            self._flush(flow.id)  # the slice before it goes first: rows stay in order
            extra["n"] = n
        row = self.rows.row(flow, config)
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
            extra=json.dumps({"transport": context.transport, **extra}),
            # scrubbed before the cut, so no part of an injected value is left at the end
            args_masked=truncate(self.audit.record_masking(config).scrub(text)[0]),
        )
        self.audit.submit(flow, config, "events", row)
        return message

    def _gather(
        self,
        flow: http.HTTPFlow,
        config: GatewayConfig,
        n: int,
        method: str,
        stored: Any,
        text: str,
        findings: dict[str, int],
        details: dict[str, Any],
    ) -> None:
        """Into the stream's slice, written once full (or by its timer, or at the end). A
        failing store ends the stream now, as a row of its own would."""
        self.audit.check_writable(flow, config)
        if len(text) > RECORDED_TEXT:  # scrubbed before the cut, kept as a JSON string
            text = json.dumps(truncate(self.audit.record_masking(config).scrub(text)[0]))
        # (otherwise scrubbed with the whole row in submit)
        now = time.monotonic()
        gathering = self.slices.get(flow.id)
        if gathering is None:
            base = self.rows.row(flow, config)
            base["traceparent"] = _traceparent_answered(state(flow), stored)
            gathering = self.slices[flow.id] = _Gathering(
                flow, config, EventSlice(base, now), self._timer(flow.id)
            )
        if gathering.slice.add(n, now, method, stored, text, findings, details):
            self._flush(flow.id)

    def _timer(self, flow_id: str) -> asyncio.TimerHandle | None:
        """The slice's time limit: written even if its stream goes quiet (none off a loop:
        then it is written when full or at the stream's end)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return loop.call_later(SLICE_SECONDS, self._flush_in_time, flow_id)

    def _flush(self, flow_id: str) -> None:
        """Write the flow's open slice, if any (raises as `AuditStore.submit` does)."""
        gathering = self.slices.pop(flow_id, None)
        if gathering is None:
            return
        if gathering.timer is not None:
            gathering.timer.cancel()
        row = gathering.slice.row("sse")
        self.audit.submit(gathering.flow, gathering.config, "events", row)

    def _flush_in_time(self, flow_id: str) -> None:
        """A slice's time is up. If it cannot be recorded (audit: required and the store
        failing, or a row the store refuses) the stream is cut, as a row per message would
        have cut it."""
        gathering = self.slices.get(flow_id)
        if gathering is None:
            return
        try:
            self._flush(flow_id)
        except Exception as exc:  # noqa: BLE001 - off the stream callable: cut it here
            logger.error("holdgate: event stream cut: its events cannot be recorded (%s)", exc)
            st = state(gathering.flow)
            st.stream_cut = {"type": type(exc).__name__, "message": str(exc)[:200]}
            if gathering.flow.killable:
                gathering.flow.kill()

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if st.routed or st.refused is not None:
            self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        """The outcome row (or, for a request that never left, its decision rows now) and
        the session's flow file."""
        self._flush(flow.id)  # the stream's last slice, before its outcome row
        st = state(flow)
        # The config that decided the flow, not whichever is loaded when it ends.
        config = st.config or self.loader.current
        if config is None or st.recorded:
            return
        st.recorded = True
        if not st.routed and st.refused is None:
            return
        annotate(flow)
        publish(flow)
        # An unauthenticated request gets its refusal row, nothing more: no session row,
        # no flow file (a client would otherwise create them at will).
        session = self.rows.session_of(flow, config) if st.authenticated else None
        if session is not None:
            self.rows.note_session(flow, config, session, None)
        latency = None
        if flow.response is not None and flow.response.timestamp_end:
            latency = round((flow.response.timestamp_end - flow.request.timestamp_start) * 1000, 2)
        status = flow.response.status_code if flow.response is not None else None
        if self.rows.written_ahead(flow):
            self.audit.submit(
                flow, config, "events", self._outcome_row(flow, config, status, latency)
            )
        else:
            rows = self.rows.request_rows(flow, config, strict=False)
            for row in rows:
                row.update(status=status, latency_ms=latency)
            self.audit.submit_all(flow, config, [("events", row) for row in rows])
        if self.finished is not None:
            self.finished(flow)
        if session is not None:
            self._write_recording(flow, config, session)

    def _outcome_row(
        self, flow: http.HTTPFlow, config: GatewayConfig, status: int | None, latency: float | None
    ) -> Row:
        """How a request that left ended: status, latency, a refusal after its decision
        (`extra.refused`), what was masked in the answer (`extra.masked`; each response row
        counts its own in `masked`). Linked to its decision rows by `flow_id`."""
        st = state(flow)
        only = st.decided[0].message if len(st.decided) == 1 else None
        extra = extra_of(st)
        if st.masked:
            extra["masked"] = dict(st.masked)
        row = self.rows.row(flow, config)
        row.update(
            traceparent=traceparent_of(only.raw) if only is not None else None,
            direction="outcome",
            method=(only.method if only is not None else None) or f"HTTP {flow.request.method}",
            target=only.target if only is not None else None,
            jsonrpc_id=json.dumps(only.id) if only is not None else None,
            reason=st.refused.recorded if st.refused is not None else None,
            status=status,
            latency_ms=latency,
            extra=json.dumps(extra),
        )
        return row

    def _write_recording(self, flow: http.HTTPFlow, config: GatewayConfig, session: str) -> None:
        """Into the session's own flow file. Only a state snapshot is taken here; the
        recordings process masks it for the record (bodies whole, headers, whatever the
        caller was exempt from) off the loop."""
        if self.recordings is None:
            return
        st = state(flow)
        streamed = flow.response is not None and bool(flow.response.stream)
        upstream = st.route.upstream if st.routed else None
        redaction = Redaction(
            injected=st.injected,
            streamed=bytes(st.streamed) if streamed else None,
            upstream=upstream.name if upstream is not None else "",
            route=route_back(upstream),
        )
        snapshot = self.snapshots.flow_state(flow)
        self.recordings.submit(session, snapshot, redaction, self.audit.record_masking(config))


@dataclass
class _Gathering:
    """A stream's open slice: its flow, the config that routed it, its time limit."""

    flow: http.HTTPFlow
    config: GatewayConfig
    slice: EventSlice
    timer: asyncio.TimerHandle | None


def _traceparent_answered(st: FlowState, message: Any) -> str | None:
    """The traceparent of the request a response answers (by id; the only one otherwise)."""
    if not st.decided or not isinstance(message, dict):
        return None
    answered = [d for d in st.decided if "id" in message and d.message.id == message.get("id")]
    if not answered and len(st.decided) == 1:
        answered = st.decided
    return traceparent_of(answered[0].message.raw) if answered else None


def _id(message: Any) -> str | None:
    return json.dumps(message.get("id")) if isinstance(message, dict) and "id" in message else None


def _error_code(message: Any) -> int | None:
    if isinstance(message, dict) and isinstance(message.get("error"), dict):
        code = message["error"].get("code")
        return code if isinstance(code, int) else None
    return None
