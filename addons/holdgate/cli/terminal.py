"""What the command line prints to a terminal cannot drive the terminal.

Much of what `holdgate` prints was written by someone else (tool names, arguments, tool
descriptions, user names: see `holdgate.escapes`). While stdout or stderr is a terminal,
everything written to it goes through `escapes.inert`; output to a file or a pipe is left
byte for byte (an export stays exact).
"""

from __future__ import annotations

import io
import sys
from typing import TextIO

from holdgate.escapes import inert, json_escaped


class TerminalGuard(io.TextIOBase):
    """A terminal's text stream that makes what it is given inert.

    A `\\r` at the end of one write may be the first half of a `\\r\\n` split across two
    writes; it is held back until the next write (or flush) says which it was.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending_cr = False

    def write(self, text: str) -> int:
        written = len(text)
        if self._pending_cr:
            text = "\r" + text
            self._pending_cr = False
        if text.endswith("\r"):
            text, self._pending_cr = text[:-1], True
        self.stream.write(inert(text))
        return written

    def flush(self) -> None:
        if self._pending_cr:  # a lone carriage return, at the end of what was written
            self.stream.write(json_escaped("\r"))
            self._pending_cr = False
        self.stream.flush()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    def writable(self) -> bool:
        return True


def guard_terminals() -> None:
    """Put a `TerminalGuard` on stdout and stderr where they are terminals."""
    if sys.stdout.isatty() and not isinstance(sys.stdout, TerminalGuard):
        sys.stdout = TerminalGuard(sys.stdout)
    if sys.stderr.isatty() and not isinstance(sys.stderr, TerminalGuard):
        sys.stderr = TerminalGuard(sys.stderr)
