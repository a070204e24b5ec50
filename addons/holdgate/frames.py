"""Length-prefixed frames between the gateway and the helper processes it starts (the
recordings writer, the audit writer): a 4-byte big-endian size, then the payload."""

from __future__ import annotations

import io
import os
import select
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO

FRAME = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def child_env() -> dict[str, str]:
    """The environment of a helper process: this one's, with the package importable."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, *extra])}


class Frames[T]:
    """Frames from a stream, each payload passed through `decode`. From a pipe they are read
    without blocking past a deadline; any other stream is read one frame at a time."""

    def __init__(
        self, stream: IO[bytes], decode: Callable[[bytes], T], chunk: int = 1 << 20
    ) -> None:
        self.stream = stream
        self.decode = decode
        self.chunk = chunk  # read at most this at once (a smaller one is cheaper to allocate)
        self.ended = False
        self._buffer = bytearray()
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            self._fd = None

    def read(self, timeout: float | None) -> list[T]:
        """The frames that arrived, waiting up to `timeout` seconds (None: until one does)."""
        if self.ended:
            return []
        if self._fd is None:
            header = self.stream.read(FRAME.size)
            if len(header) < FRAME.size:
                self.ended = True
                return []
            return [self.decode(self.stream.read(FRAME.unpack(header)[0]))]
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if ready:
            chunk = os.read(self._fd, self.chunk)
            if not chunk:
                self.ended = True
            self._buffer += chunk
        items: list[T] = []
        view = self._buffer
        pos = 0
        while len(view) - pos >= FRAME.size:
            size = FRAME.unpack_from(view, pos)[0]
            if len(view) - pos - FRAME.size < size:
                break
            start = pos + FRAME.size
            items.append(self.decode(bytes(view[start : start + size])))
            pos = start + size
        del self._buffer[:pos]
        return items


def framed(payload: bytes) -> bytes:
    """`payload` as one frame."""
    return FRAME.pack(len(payload)) + payload
