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
from pathlib import Path

from mitmproxy import http, io

logger = logging.getLogger("holdgate")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def recording_name(session_key: str) -> str:
    """A file name that cannot escape the recordings folder, whatever the session id holds."""
    return _UNSAFE.sub("_", session_key)[:120] or "unnamed"


class RecordingWriter:
    """A daemon thread appending flow copies to per-session files; hooks only enqueue."""

    def __init__(self, folder: str | Path, queue_size: int = 10_000) -> None:
        self.folder = Path(folder)
        self._queue: queue.Queue[tuple[str, http.HTTPFlow] | None] = queue.Queue(queue_size)
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        self._thread = threading.Thread(target=self._run, name="holdgate-recordings", daemon=True)
        self._thread.start()

    def submit(self, session_key: str, snapshot: http.HTTPFlow) -> bool:
        try:
            self._queue.put_nowait((recording_name(session_key), snapshot))
        except queue.Full:
            self.lost += 1
            return False
        return True

    def path_for(self, session_key: str) -> Path:
        return self.folder / f"{recording_name(session_key)}.mitm"

    def flush(self, timeout: float = 10.0) -> bool:
        done = threading.Event()
        self._queue.put(("", done))  # type: ignore[arg-type]
        return done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, snapshot = item
            if isinstance(snapshot, threading.Event):
                snapshot.set()
                continue
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with (self.folder / f"{name}.mitm").open("ab") as fo:
                    io.FlowWriter(fo).add(snapshot)
                self.healthy = True
            except OSError as exc:
                self.healthy = False
                self.lost += 1
                self.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
                logger.error("holdgate: cannot write recording %s: %s", name, self.last_error)
