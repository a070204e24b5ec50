"""Masked flow files, one `.mitm` per MCP session, written off the event loop.

`mitmweb -r recordings/<session>.mitm` replays a session: the flows are copies masked for
the record (`holdgate.masking.record_masking`) whatever the caller was exempt from, both bodies
whole and every header, with caller credentials removed, injected ones replaced by a
marker and any injected value scrubbed wherever it was reflected.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TextIO

from mitmproxy.io import tnetstring
from mitmproxy.net import encoding

from holdgate import STATE_KEY
from holdgate.config.configfile import ConfigError
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

logger = logging.getLogger("holdgate")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def recording_name(session_key: str) -> str:
    """A file name that cannot escape the recordings folder, whatever the session id holds."""
    return _UNSAFE.sub("_", session_key)[:120] or "unnamed"


@dataclass(frozen=True)
class Redaction:
    """What the recorder knows about a flow that the snapshot does not say: which headers it
    injected, the stream as sent, and the upstream (whose masking profiles apply)."""

    injected: tuple[str, ...]  # headers the gateway injected: shown as a marker
    streamed: bytes | None  # a streamed response's body as the client got it
    upstream: str  # whose masking profiles apply


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
    shown as a marker. Raises MaskingError for what cannot be masked outside a body (the
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
    recorded["request"] = request
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
    process of its own (`python -m holdgate.recording.flowfiles FOLDER`), fed pickled snapshots on
    its stdin by a feeder thread. It answers on stdout: `healthy`, `lost` and `last_error`
    follow its answers, and each failure is logged. It ends when its stdin closes, so it
    never outlives the gateway.
    """

    def __init__(self, folder: str | Path, queue_size: int = 10_000) -> None:
        self.folder = Path(folder)
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        self.bodies_left_out = 0
        self._queue: queue.Queue[_Item] = queue.Queue(queue_size)
        self._masking_sent: RecordMasking | None = None
        self._lock = threading.Lock()  # lost and healthy change on the loop and in threads
        self._flushes: dict[int, threading.Event] = {}
        self._next_flush = itertools.count(1)
        self._closed = False
        self._process = subprocess.Popen(
            [sys.executable, "-m", "holdgate.recording.flowfiles", str(self.folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, *_pythonpath()])},
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
            self._queue.put_nowait((recording_name(session_key), flow_state, redaction))
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

    def _note_lost(self, reason: str) -> None:
        with self._lock:
            self.lost += 1
            if self.healthy or reason != self.last_error:
                logger.error("holdgate: a flow recording was lost: %s", reason)
            self.healthy = False
            self.last_error = reason

    def _feed(self) -> None:
        pipe = self._process.stdin
        assert pipe is not None
        with pipe:
            while (item := self._queue.get()) is not None:
                try:
                    frame = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as exc:  # noqa: BLE001 - one odd flow must not stop the feeder
                    self._note_lost(f"cannot hand a flow over: {type(exc).__name__}: {exc}")
                    continue
                try:
                    pipe.write(_FRAME.pack(len(frame)) + frame)
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
                elif kind == "lost":
                    self._note_lost(f"cannot write {detail}")
                elif kind == "left-out":
                    with self._lock:
                        self.bodies_left_out += 1
                    logger.warning("holdgate: a body was left out of a flow file: %s", detail)
                elif kind == "ok":
                    with self._lock:
                        self.healthy = True


_Item = tuple[str, dict[str, Any], Redaction] | PortableRecordMasking | int | None
_FRAME = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def serve(folder: Path, frames: BinaryIO, replies: TextIO) -> None:
    """The recordings process: write each flow that arrives until its input ends.

    A flow is only written masked: until a masking for the record has arrived (or when
    the last one cannot be rebuilt) flows are lost, not written in clear.
    """
    healthy = True
    record: RecordMasking | None = None
    no_record = "no masking for the record was handed over"
    while header := frames.read(_FRAME.size):
        item = pickle.loads(frames.read(_FRAME.unpack(header)[0]))
        if isinstance(item, int):
            print("flushed", item, file=replies, flush=True)
            continue
        if isinstance(item, PortableRecordMasking):
            try:
                record = item.build()
            except (ConfigError, ValueError) as exc:
                record = None
                no_record = f"the masking for the record cannot be rebuilt ({exc})"
            continue
        name, flow_state, redaction = item
        try:
            if record is None:
                raise LookupError(no_record)
            recorded = recorded_state(flow_state, redaction, record)
            _append(folder, name, recorded.state)
        except Exception as exc:  # noqa: BLE001 - one bad flow must not stop the writer
            healthy = False
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print("lost", f"{name}: {type(exc).__name__}: {why}", file=replies, flush=True)
        else:
            for reason in recorded.dropped:
                print("left-out", f"{name}: {reason}", file=replies, flush=True)
            if not healthy:
                healthy = True
                print("ok", file=replies, flush=True)


def _append(folder: Path, name: str, recorded: dict[str, Any]) -> None:
    path = folder / f"{name}.mitm"
    try:
        fo = path.open("ab")
    except FileNotFoundError:  # the folder is made on first use (and again if removed)
        folder.mkdir(parents=True, exist_ok=True)
        fo = path.open("ab")
    with fo:
        tnetstring.dump(recorded, fo)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the gateway, which drains us
    serve(Path(sys.argv[1]), sys.stdin.buffer, sys.stdout)
