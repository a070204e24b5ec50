"""Masked flow files, one `.mitm` per MCP session, written off the event loop.

`mitmweb -r recordings/<session>.mitm` replays a session as the client saw it: the
flows are copies taken after masking, with caller credentials removed and injected
ones replaced by a marker.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import http, io

from holdgate.config import CREDENTIAL_HEADERS

logger = logging.getLogger("holdgate")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def recording_name(session_key: str) -> str:
    """A file name that cannot escape the recordings folder, whatever the session id holds."""
    return _UNSAFE.sub("_", session_key)[:120] or "unnamed"


@dataclass(frozen=True)
class Redaction:
    """What the recorded copy of a flow changes: credentials out, the stream as sent."""

    injected: tuple[str, ...]  # headers the gateway injected: shown as a marker
    streamed: bytes | None  # a streamed response's body as the client got it
    comment: str
    marked: str


def masked_copy(flow_state: dict[str, Any], redaction: Redaction) -> http.HTTPFlow:
    """The flow to record, from a state snapshot taken when the flow ended."""
    snapshot = http.HTTPFlow.from_state(flow_state)
    snapshot.live = False
    for name in CREDENTIAL_HEADERS + ("cookie",):
        snapshot.request.headers.pop(name, None)
    for name in redaction.injected:
        if name in snapshot.request.headers:
            snapshot.request.headers[name] = "[injected by holdgate]"
    if snapshot.response is not None and redaction.streamed is not None:
        snapshot.response.stream = False
        snapshot.response.content = redaction.streamed
    snapshot.comment = redaction.comment
    snapshot.marked = redaction.marked
    return snapshot


class RecordingWriter:
    """A daemon thread appending masked flow copies to per-session files; hooks only
    enqueue a state snapshot."""

    def __init__(self, folder: str | Path, queue_size: int = 10_000) -> None:
        self.folder = Path(folder)
        self._queue: queue.Queue[
            tuple[str, dict[str, Any], Redaction] | tuple[str, threading.Event] | None
        ] = queue.Queue(queue_size)
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        self._thread = threading.Thread(target=self._run, name="holdgate-recordings", daemon=True)
        self._thread.start()

    def submit(self, session_key: str, flow_state: dict[str, Any], redaction: Redaction) -> bool:
        try:
            self._queue.put_nowait((recording_name(session_key), flow_state, redaction))
        except queue.Full:
            self.lost += 1
            return False
        return True

    def path_for(self, session_key: str) -> Path:
        return self.folder / f"{recording_name(session_key)}.mitm"

    def flush(self, timeout: float = 10.0) -> bool:
        done = threading.Event()
        self._queue.put(("", done))
        return done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if len(item) == 2:
                item[1].set()
                continue
            name, flow_state, redaction = item
            try:
                snapshot = masked_copy(flow_state, redaction)
                self.folder.mkdir(parents=True, exist_ok=True)
                with (self.folder / f"{name}.mitm").open("ab") as fo:
                    io.FlowWriter(fo).add(snapshot)
                self.healthy = True
            except OSError as exc:
                self.healthy = False
                self.lost += 1
                self.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
                logger.error("holdgate: cannot write recording %s: %s", name, self.last_error)
            except Exception as exc:  # noqa: BLE001 - one bad flow must not stop the writer
                self.lost += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.error("holdgate: cannot record a flow of %s: %s", name, self.last_error)
