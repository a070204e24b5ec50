"""Masked flow files, one `.mitm` per MCP session, written off the event loop.

`mitmweb -r recordings/<session>.mitm` replays a session as the client saw it: the
flows are copies taken after masking, with caller credentials removed and injected
ones replaced by a marker.
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
from typing import Any, BinaryIO, TextIO

from mitmproxy.io import tnetstring
from mitmproxy.net import encoding

from holdgate.config import CREDENTIAL_HEADERS

logger = logging.getLogger("holdgate")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def recording_name(session_key: str) -> str:
    """A file name that cannot escape the recordings folder, whatever the session id holds."""
    return _UNSAFE.sub("_", session_key)[:120] or "unnamed"


@dataclass(frozen=True)
class Redaction:
    """What the recorded copy of a flow changes: credentials out, masked arguments, the
    stream as sent."""

    injected: tuple[str, ...]  # headers the gateway injected: shown as a marker
    streamed: bytes | None  # a streamed response's body as the client got it
    request_body: bytes | None  # the request body with its arguments masked, if they had to be
    comment: str
    marked: str


_DROPPED = frozenset(name.encode() for name in (*CREDENTIAL_HEADERS, "cookie"))
_INJECTED_MARKER = b"[injected by holdgate]"


def recorded_state(flow_state: dict[str, Any], redaction: Redaction) -> dict[str, Any]:
    """The state of the flow to record, from a snapshot taken when the flow ended.

    Edits the serialized state directly (rebuilding a flow object costs more than the rest
    of the recording). mitmweb's backup of an edited flow is dropped: it is the flow as it
    was before the edit, which the record must not carry around unredacted.
    """
    recorded = {**flow_state, "backup": None}
    recorded["comment"] = redaction.comment
    recorded["marked"] = redaction.marked
    injected = frozenset(name.lower().encode() for name in redaction.injected)
    request = dict(flow_state["request"])
    request["headers"] = tuple(
        (name, _INJECTED_MARKER if name.lower() in injected else value)
        for name, value in request["headers"]
        if name.lower() not in _DROPPED
    )
    if redaction.request_body is not None:
        request = _with_body(request, redaction.request_body)
    recorded["request"] = request
    response = flow_state.get("response")
    if response is not None and redaction.streamed is not None:
        recorded["response"] = _with_body(response, redaction.streamed)
    return recorded


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
    process of its own (`python -m holdgate.recordings FOLDER`), fed pickled snapshots on
    its stdin by a feeder thread. It answers on stdout: `healthy`, `lost` and `last_error`
    follow its answers, and each failure is logged. It ends when its stdin closes, so it
    never outlives the gateway.
    """

    def __init__(self, folder: str | Path, queue_size: int = 10_000) -> None:
        self.folder = Path(folder)
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        self._queue: queue.Queue[_Item] = queue.Queue(queue_size)
        self._lock = threading.Lock()  # lost and healthy change on the loop and in threads
        self._flushes: dict[int, threading.Event] = {}
        self._next_flush = itertools.count(1)
        self._closed = False
        self._process = subprocess.Popen(
            [sys.executable, "-m", "holdgate.recordings", str(self.folder)],
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

    def submit(self, session_key: str, flow_state: dict[str, Any], redaction: Redaction) -> bool:
        if self._closed or self._process.poll() is not None:
            self._note_lost("the recordings process is not running")
            return False
        try:
            self._queue.put_nowait((recording_name(session_key), flow_state, redaction))
        except queue.Full:
            self._note_lost("the recordings queue is full")
            return False
        return True

    def path_for(self, session_key: str) -> Path:
        return self.folder / f"{recording_name(session_key)}.mitm"

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
                elif kind == "ok":
                    with self._lock:
                        self.healthy = True


_Item = tuple[str, dict[str, Any], Redaction] | int | None
_FRAME = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def serve(folder: Path, frames: BinaryIO, replies: TextIO) -> None:
    """The recordings process: write each flow that arrives until its input ends."""
    healthy = True
    while header := frames.read(_FRAME.size):
        item = pickle.loads(frames.read(_FRAME.unpack(header)[0]))
        if isinstance(item, int):
            print("flushed", item, file=replies, flush=True)
            continue
        name, flow_state, redaction = item
        try:
            _append(folder, name, recorded_state(flow_state, redaction))
        except Exception as exc:  # noqa: BLE001 - one bad flow must not stop the writer
            healthy = False
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print("lost", f"{name}: {type(exc).__name__}: {why}", file=replies, flush=True)
        else:
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
