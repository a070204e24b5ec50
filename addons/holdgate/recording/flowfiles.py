"""Masked flow files of each MCP session, written off the event loop.

A session's flows are in segments, `recordings/<session>+<opened>+<replica>.mitm`, each
only ever on disk whole (`holdgate.recording.segments`); `cat` them into one file for
`mitmweb -r`. Each closed segment is reported to the gateway (`ClosedFile`), which records
it in the store's `recordings` table (replica, session, file, flows, bytes, sha256).
The flows are copies masked for the record (`holdgate.masking.record_masking`) whatever
the caller was exempt from, both bodies whole and every header, with caller credentials
removed, injected ones replaced by a marker and any injected value scrubbed wherever it
was reflected. Their requests point at the gateway, never at the upstream: a replay of a
recorded flow is decided by the gateway like any call (`replay_target`).
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol, TextIO
from urllib.parse import urlsplit

from mitmproxy.io import tnetstring
from mitmproxy.net import encoding

from holdgate import STATE_KEY
from holdgate.configfile import ConfigError
from holdgate.frames import Frames, child_env, framed
from holdgate.masking.record_masking import (
    CALLER_CREDENTIALS,
    PortableRecordMasking,
    RecordMasking,
    ToolHint,
    mask_for_record,
    placeholder,
    record_body,
    record_headers,
    tools_by_id,
)
from holdgate.recording.segments import Closed, Segments
from holdgate.recording.segments import recording_files as recording_files
from holdgate.recording.segments import recording_name as recording_name

logger = logging.getLogger("holdgate")


@dataclass(frozen=True)
class Redaction:
    """What the recorder knows about a flow that the snapshot does not say: which headers it
    injected, the stream as sent, and the upstream (whose masking profiles apply)."""

    injected: tuple[str, ...]  # headers the gateway injected: shown as a marker
    streamed: bytes | None  # a streamed response's body as the client got it
    upstream: str  # whose masking profiles apply
    route: tuple[str, str] | None = None  # (prefix, upstream path) to map the path back


class RoutedUpstream(Protocol):
    """The parts of a configured upstream the Router maps a path with."""

    @property
    def url(self) -> str | None: ...
    @property
    def prefix(self) -> str | None: ...


def route_back(upstream: RoutedUpstream | None) -> tuple[str, str] | None:
    """How the Router mapped the client's path onto the upstream's (`Redaction.route`):
    the prefix it removed and the upstream URL's path it put in front; None if unchanged."""
    if upstream is None or not upstream.url:
        return None
    return upstream.prefix or "", urlsplit(upstream.url).path.rstrip("/")


class ReplayTarget(NamedTuple):
    scheme: str
    host: str
    port: int


NOWHERE = "holdgate-gateway-unknown.invalid"  # RFC 2606: never resolves


def replay_target(flow_state: dict[str, Any]) -> ReplayTarget:
    """Where a recorded request points: the gateway's socket the client connected to, so
    that mitmweb's Replay (or `mitmdump -nC`) sends it to the gateway, which decides it
    like any call (without the caller's credentials, which are never recorded: a 401).
    When that socket is not known, a name that never resolves: never the upstream."""
    client = flow_state.get("client_conn") or {}
    sockname = client.get("sockname") or ("", 0)
    scheme = "https" if client.get("timestamp_tls_setup") is not None else "http"
    host, port = str(sockname[0]), int(sockname[1])
    if not host or not port:
        request = flow_state["request"]
        return ReplayTarget(scheme, NOWHERE, int(request["port"]) or 80)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return ReplayTarget(scheme, host, port)


def _pointed_at_gateway(
    request: dict[str, Any], target: ReplayTarget, route: tuple[str, str] | None
) -> dict[str, Any]:
    """The recorded request sent to the gateway: its address, its Host header, and the
    path as the client sent it (the Router's prefix mapping undone)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    netloc = f"{host}:{target.port}".encode()
    path: bytes = request["path"]
    if route is not None:
        prefix, base = (part.encode("utf-8", "surrogateescape") for part in route)
        bare, question, query = path.partition(b"?")
        if bare == base or bare.startswith(base + b"/"):
            path = prefix + (bare[len(base) :] or b"/") + question + query
    headers = tuple(
        (name, netloc) if name.lower() == b"host" else (name, value)
        for name, value in request["headers"]
    )
    return {
        **request,
        "scheme": target.scheme,
        "host": target.host,
        "port": target.port,
        "authority": netloc.decode() if request.get("authority") else "",
        "path": path,
        "headers": headers,
    }


class Recorded(NamedTuple):
    """A flow's state as recorded, and which of its bodies were left out (and why)."""

    state: dict[str, Any]
    dropped: tuple[str, ...]


def recorded_state(
    flow_state: dict[str, Any], redaction: Redaction, record: RecordMasking
) -> Recorded:
    """The state of the flow to record, from a snapshot taken when the flow ended.

    Everything that can carry data is masked for the record (`holdgate.masking.record_masking`),
    whatever the caller was exempt from: both bodies, whole; header values, trailers, the
    path, the reason phrase, the error, the comment and the metadata (but the caller's
    identity, the record's subject). Caller credentials are left out, injected headers
    shown as a marker. The request points at the gateway (`replay_target`), its path as
    the client sent it. Raises MaskingError for what cannot be masked outside a body (the
    flow is then not recorded at all); a body that cannot be masked is left out with a
    placeholder, named in `dropped`.

    Edits the serialized state directly (rebuilding a flow object costs more than the rest
    of the recording). mitmweb's backup of an edited flow is dropped: it is the flow as it
    was before the edit, which the record must not carry around unredacted.
    """
    upstream = redaction.upstream
    dropped: list[str] = []
    recorded = {**flow_state, "backup": None}
    recorded["comment"] = mask_for_record(flow_state.get("comment") or "", record, upstream).value
    recorded["metadata"] = _recorded_metadata(flow_state.get("metadata") or {}, record, upstream)
    injected = frozenset(name.lower().encode() for name in redaction.injected)
    request = dict(flow_state["request"])
    request_body = _content(request)
    answers = tools_by_id(request_body) if request_body else {}
    request = _recorded_message(
        request, request_body, record, upstream, dropped, "request", injected=injected
    )
    request["path"] = _masked_bytes(request["path"], record, upstream)
    recorded["request"] = _pointed_at_gateway(request, replay_target(flow_state), redaction.route)
    response = flow_state.get("response")
    if response is not None:
        body = redaction.streamed if redaction.streamed is not None else _content(response)
        response = _recorded_message(
            dict(response),
            body,
            record,
            upstream,
            dropped,
            "response",
            answers=answers,
            rewrite=redaction.streamed is not None,
        )
        response["reason"] = _masked_bytes(response["reason"], record, upstream)
        recorded["response"] = response
    error = flow_state.get("error")
    if error is not None:
        recorded["error"] = {**error, "msg": mask_for_record(error["msg"], record, upstream).value}
    return Recorded(recorded, tuple(dropped))


def _recorded_metadata(metadata: dict[str, Any], record: RecordMasking, upstream: str) -> Any:
    ours = metadata.get(STATE_KEY)
    identity = ours.get("identity") if isinstance(ours, dict) else None
    if identity is None or not isinstance(ours, dict):
        return mask_for_record(metadata, record, upstream).value
    without = {**metadata, STATE_KEY: {k: v for k, v in ours.items() if k != "identity"}}
    masked = mask_for_record(without, record, upstream).value
    return {**masked, STATE_KEY: {**masked[STATE_KEY], "identity": identity}}


def _content(message: dict[str, Any]) -> bytes | None:
    """The message's body with its Content-Encoding undone (b"" if it cannot be: the body
    is then recorded by its placeholder, see _recorded_message)."""
    raw: bytes | None = message.get("content")
    if not raw:
        return raw
    codings = [v for n, v in message["headers"] if n.lower() == b"content-encoding"]
    if not codings:
        return raw
    try:
        decoded = encoding.decode(raw, codings[0].decode("latin-1"))
        return decoded if isinstance(decoded, bytes) else None
    except ValueError:
        return None


def _recorded_message(
    message: dict[str, Any],
    body: bytes | None,
    record: RecordMasking,
    upstream: str,
    dropped: list[str],
    which: str,
    *,
    injected: frozenset[bytes] = frozenset(),
    answers: dict[str, ToolHint] | None = None,
    rewrite: bool = False,
) -> dict[str, Any]:
    drop = CALLER_CREDENTIALS if which == "request" else frozenset()
    message["headers"] = record_headers(
        message["headers"], record, upstream, injected=injected, drop=drop
    )
    if message.get("trailers"):
        message["trailers"] = record_headers(message["trailers"], record, upstream, drop=drop)
    if body is None and message.get("content"):  # an encoding we cannot undo
        out = placeholder(message["content"], record, "its Content-Encoding cannot be undone")
    elif body is None:
        return message
    else:
        ctype = next((v for n, v in message["headers"] if n.lower() == b"content-type"), b"")
        event_stream = ctype.split(b";")[0].strip().lower() == b"text/event-stream"
        out = record_body(body, record, upstream, event_stream=event_stream, answers=answers)
    if out.dropped is not None:
        dropped.append(f"{which} body: {out.dropped}")
    if out.content is body and not rewrite:
        return message
    return _with_body(message, out.content)


def _masked_bytes(value: bytes, record: RecordMasking, upstream: str) -> bytes:
    text = value.decode("utf-8", "surrogateescape")
    masked = mask_for_record(text, record, upstream).value
    return value if masked == text else masked.encode("utf-8", "surrogateescape")


def _with_body(message: dict[str, Any], body: bytes) -> dict[str, Any]:
    """A message state carrying `body` as `Message.content = body` would store it."""
    headers: list[tuple[bytes, bytes]] = list(message["headers"])
    encodings = [value for name, value in headers if name.lower() == b"content-encoding"]
    try:
        raw = encoding.encode(body, encodings[0].decode("latin-1")) if encodings else body
    except ValueError:  # an encoding we cannot apply: store the body as it is, unlabelled
        headers = [(n, v) for n, v in headers if n.lower() != b"content-encoding"]
        raw = body
    if not any(name.lower() == b"transfer-encoding" for name, _ in headers):
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
    return {**message, "headers": tuple(headers), "content": raw}


class RecordingWriter:
    """Appends masked flow copies to per-session files from a child process.

    Hooks only enqueue a state snapshot. Serializing a flow (mitmproxy's tnetstring is
    pure Python) costs more than the rest of the gateway's work on a request, and in a
    thread it would hold the GIL the event loop needs, so the files are written by a
    process of its own (`python -m holdgate.recording.flowfiles FOLDER REPLICA`), fed pickled
    snapshots on its stdin by a feeder thread. It answers on stdout: `healthy`, `failed`,
    `lost` and `last_error` follow its answers, and each segment it closes is handed to
    `on_closed` (on the reader thread: it must not block). It ends when its stdin closes,
    so it never outlives the gateway.

    Failures are errors the operator sees: `failed` counts the flows the process could not
    write to a readable file (`failures` by kind, for `/metrics`), `lost` every flow not
    recorded (those, and the ones never handed over). Each kind of failure is logged at
    error level when it starts and then at most every `LOG_EVERY` seconds with how many
    more it cost, not once per flow; its end is logged too.
    """

    LOG_EVERY = 60.0

    def __init__(
        self,
        folder: str | Path,
        queue_size: int = 10_000,
        replica: str = "",
        on_closed: Callable[[ClosedFile], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.on_closed = on_closed
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        self.failed = 0
        self.failures: dict[str, int] = {}
        self.bodies_left_out = 0
        self._logged: dict[str, tuple[float, int]] = {}  # kind: (last logged, lost since)
        self._queue: queue.Queue[_Item] = queue.Queue(queue_size)
        self._masking_sent: RecordMasking | None = None
        self._lock = threading.Lock()  # lost and healthy change on the loop and in threads
        self._flushes: dict[int, threading.Event] = {}
        self._next_flush = itertools.count(1)
        self._closed = False
        self._process = subprocess.Popen(
            [sys.executable, "-m", "holdgate.recording.flowfiles", str(self.folder), replica],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        self._feeder = threading.Thread(target=self._feed, name="holdgate-recordings", daemon=True)
        self._reader = threading.Thread(
            target=self._read_replies, name="holdgate-recordings-replies", daemon=True
        )
        self._feeder.start()
        self._reader.start()

    def submit(
        self,
        session_key: str,
        flow_state: dict[str, Any],
        redaction: Redaction,
        record: RecordMasking,
    ) -> bool:
        """Queue a flow to be masked with `record` and written; the process is handed the
        masking again whenever it changes (a config reload)."""
        if self._closed or self._process.poll() is not None:
            self._note_lost("the recordings process is not running")
            return False
        try:
            if record is not self._masking_sent:
                self._queue.put_nowait(record.portable())
                self._masking_sent = record
            self._queue.put_nowait((session_key, flow_state, redaction))
        except queue.Full:
            self._note_lost("the recordings queue is full")
            return False
        except ValueError as exc:  # a masking with no config text to rebuild it from
            self._note_lost(str(exc))
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every flow submitted so far is written (or failed)."""
        if self._closed or self._process.poll() is not None:
            return False
        token = next(self._next_flush)
        done = self._flushes[token] = threading.Event()
        try:
            self._queue.put(token, timeout=timeout)
            return done.wait(timeout)
        except queue.Full:
            return False
        finally:
            self._flushes.pop(token, None)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the process."""
        if self._closed:
            return
        self._closed = True
        with suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._feeder.join(timeout)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error("holdgate: the recordings process did not finish in %ss", timeout)
            self._process.kill()
            self._process.wait(5)
        self._reader.join(timeout)
        if self.lost:
            logger.error(
                "holdgate: recordings writer closed: %d flows not recorded (%d could not be "
                "written: %s)",
                self.lost,
                self.failed,
                ", ".join(f"{kind} ×{n}" for kind, n in self.failures.items()) or "none",
            )

    def _note_lost(self, reason: str, kind: str | None = None, flows: int = 1) -> None:
        kind = kind or reason
        with self._lock:
            self.lost += flows
            self.healthy = False
            self.last_error = reason
            now = time.monotonic()
            logged = self._logged.get(kind)
            if logged is not None and now - logged[0] < self.LOG_EVERY:
                self._logged[kind] = (logged[0], logged[1] + flows)
                return
            self._logged[kind] = (now, 0)
        more = f" ({logged[1]} more lost the same way since)" if logged and logged[1] else ""
        logger.error("holdgate: a flow recording was lost: %s%s", reason, more)

    def _note_failed(self, detail: str) -> None:
        """A `failed` answer: COUNT, KIND, SESSION, WHY separated by tabs."""
        count, kind, name, why = (detail.split("\t") + ["", "", ""])[:4]
        flows = int(count) if count.isdigit() else 1
        with self._lock:
            self.failed += flows
            self.failures[kind] = self.failures.get(kind, 0) + flows
        self._note_lost(f"cannot write {name}: {why}", kind, flows)

    def _note_recovered(self) -> None:
        with self._lock:
            self.healthy = True
            logged, self._logged = self._logged, {}
            lost = self.lost
        if logged:
            logger.warning("holdgate: flow files are written again (%d flows lost so far)", lost)

    def _feed(self) -> None:
        pipe = self._process.stdin
        assert pipe is not None
        with pipe:
            while (item := self._queue.get()) is not None:
                try:
                    payload = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as exc:  # noqa: BLE001 - one odd flow must not stop the feeder
                    self._note_lost(f"cannot hand a flow over: {type(exc).__name__}: {exc}")
                    continue
                try:
                    pipe.write(framed(payload))
                    pipe.flush()
                except (BrokenPipeError, ValueError):
                    self._note_lost("the recordings process is not running")

    def _read_replies(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                kind, _, detail = line.decode("utf-8", "replace").rstrip("\n").partition(" ")
                if kind == "flushed":
                    if event := self._flushes.get(int(detail)):
                        event.set()
                elif kind == "failed":
                    self._note_failed(detail)
                elif kind == "repaired":
                    name, _, cut = detail.partition("\t")
                    logger.warning(
                        "holdgate: a flow file left by a stopped writer was closed: %s "
                        "(%s bytes of a torn last flow cut off)",
                        name,
                        cut,
                    )
                elif kind == "left-out":
                    with self._lock:
                        self.bodies_left_out += 1
                    logger.warning("holdgate: a body was left out of a flow file: %s", detail)
                elif kind == "ok":
                    self._note_recovered()
                elif kind == "closed":
                    self._note_closed(detail)

    def _note_closed(self, detail: str) -> None:
        """A `closed` answer: the segment's JSON, handed to `on_closed`."""
        try:
            closed = ClosedFile(**json.loads(detail))
        except (ValueError, TypeError) as exc:
            logger.error("holdgate: a closed flow file was reported unreadably: %s", exc)
            return
        if self.on_closed is not None:
            self.on_closed(closed)


class ClosedFile(NamedTuple):
    """A flow file closed whole, as the recordings process reports it."""

    session: str
    file: str  # its name in the recordings folder
    flows: int
    bytes: int
    sha256: str

    @classmethod
    def of(cls, closed: Closed) -> ClosedFile:
        return cls(closed.session, closed.path.name, closed.flows, closed.bytes, closed.sha256)


_Item = tuple[str, dict[str, Any], Redaction] | PortableRecordMasking | int | None


def serve(folder: Path, frames: BinaryIO, replies: TextIO, replica: str = "") -> None:
    """The recordings process: write each flow that arrives until its input ends.

    A flow is only written masked: until a masking for the record has arrived (or when
    the last one cannot be rebuilt) flows are lost, not written in clear. Segments are
    fsynced whenever nothing more is queued, closed when due, on a flush and at the end.
    Each flow that cannot be written is answered `failed COUNT<TAB>KIND<TAB>SESSION<TAB>WHY`,
    each segment closed whole `closed JSON` (a `ClosedFile`).
    """
    segments = Segments(folder, replica)
    state = _Serving(replies)
    for path, cut in _repaired(segments, state):
        print("repaired", f"{path.name}\t{cut}", file=replies, flush=True)
    state.report_closed(segments)
    source: Frames[_Item] = Frames(frames, pickle.loads)
    unsynced = False
    while True:
        items = source.read(0.0 if unsynced else segments.next_due())
        for item in items:
            if isinstance(item, int):
                state.report(segments.close_all())
                state.report_closed(segments)
                print("flushed", item, file=replies, flush=True)
            elif isinstance(item, PortableRecordMasking):
                state.take_masking(item)
            elif item is not None:
                state.write(segments, *item)
                state.report_closed(segments)
                unsynced = True
        if items:
            continue
        if source.ended:
            break
        if unsynced:
            segments.sync()
            unsynced = False
        state.report(segments.close_due())
        state.report_closed(segments)
    state.report(segments.close_all())
    state.report_closed(segments)


def _repaired(segments: Segments, state: _Serving) -> list[tuple[Path, int]]:
    try:
        return segments.repair()
    except OSError as exc:
        state.failed(0, "-", exc)
        return []


class _Serving:
    """What the recordings process knows between flows: the masking, and whether the last
    flow failed (a flow written after failures is answered `ok`)."""

    def __init__(self, replies: TextIO) -> None:
        self.replies = replies
        self.record: RecordMasking | None = None
        self.no_record = "no masking for the record was handed over"
        self.healthy = True

    def take_masking(self, item: PortableRecordMasking) -> None:
        try:
            self.record = item.build()
        except (ConfigError, ValueError) as exc:
            self.record = None
            self.no_record = f"the masking for the record cannot be rebuilt ({exc})"

    def write(self, segments: Segments, session: str, flow_state: Any, redaction: Any) -> None:
        name = recording_name(session)
        try:
            if self.record is None:
                raise LookupError(self.no_record)
            recorded = recorded_state(flow_state, redaction, self.record)
            segments.append(session, tnetstring.dumps(recorded.state))
        except Exception as exc:  # noqa: BLE001 - one bad flow must not stop the writer
            self.failed(1, name, exc)
        else:
            for reason in recorded.dropped:
                print("left-out", f"{name}: {reason}", file=self.replies, flush=True)
            if not self.healthy:
                self.healthy = True
                print("ok", file=self.replies, flush=True)

    def report_closed(self, segments: Segments) -> None:
        """`closed JSON` for each segment closed since the last report (JSON: a session id
        can hold any character, a line break too)."""
        for closed in segments.closed:
            line = json.dumps(ClosedFile.of(closed)._asdict())
            print("closed", line, file=self.replies, flush=True)
        segments.closed.clear()

    def report(self, failures: list[tuple[str, int, OSError]]) -> None:
        for name, flows, exc in failures:
            self.failed(flows, name, exc)

    def failed(self, flows: int, name: str, exc: BaseException) -> None:
        self.healthy = False
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        kind = f"{type(exc).__name__}: {why}" if isinstance(exc, OSError) else type(exc).__name__
        line = "\t".join((str(flows), kind, name, f"{type(exc).__name__}: {why}"))
        print("failed", line.replace("\n", " "), file=self.replies, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the gateway, which drains us
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit fails the write instead
    serve(Path(sys.argv[1]), sys.stdin.buffer, sys.stdout, sys.argv[2] if len(sys.argv) > 2 else "")
