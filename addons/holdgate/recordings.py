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
    """What the recorded copy of a flow changes: credentials out, the stream as sent."""

    injected: tuple[str, ...]  # headers the gateway injected: shown as a marker
    streamed: bytes | None  # a streamed response's body as the client got it
    comment: str
    marked: str


_DROPPED = frozenset(name.encode() for name in (*CREDENTIAL_HEADERS, "cookie"))
_INJECTED_MARKER = b"[injected by holdgate]"
HeaderFields = tuple[tuple[bytes, bytes], ...]


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

    def _append(self, name: str, recorded: dict[str, Any]) -> None:
        path = self.folder / f"{name}.mitm"
        try:
            fo = path.open("ab")
        except FileNotFoundError:  # the folder is made on first use (and again if removed)
            self.folder.mkdir(parents=True, exist_ok=True)
            fo = path.open("ab")
        with fo:
            tnetstring.dump(recorded, fo)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if len(item) == 2:
                item[1].set()
                continue
            name, flow_state, redaction = item
            try:
                self._append(name, recorded_state(flow_state, redaction))
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
