"""What the command line prints to a terminal cannot drive the terminal.

Much of what `holdgate` prints was written by someone else: a client chose the tool name
and arguments of a held call, an upstream the tool descriptions, an IdP the user name.
A control sequence among them would reach the approver's terminal as a command: `ESC [2K`
and a carriage return redraw the line (the tool the approver reads is not the one they
approve), OSC 52 writes their clipboard, a bidi override reverses what follows. So while
stdout or stderr is a terminal, every control, format (bidi) and line/paragraph separator
character is written as its JSON escape (`\\u001b`): readable, and `--format json` output
stays valid JSON. Tabs, newlines and the carriage return of a `\\r\\n` line end are ours
and kept. Output to a file or a pipe is left byte for byte (an export stays exact).
"""

from __future__ import annotations

import io
import sys
import unicodedata
from typing import TextIO

UNSHOWN = frozenset({"Cc", "Cf", "Zl", "Zp"})
KEPT = frozenset("\t\n")


def escaped(char: str) -> str:
    """`char` as a JSON escape (a surrogate pair beyond the BMP, as JSON writes it)."""
    point = ord(char)
    if point < 0x10000:
        return f"\\u{point:04x}"
    point -= 0x10000
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


def for_terminal(text: str) -> str:
    """`text` with every character that could drive a terminal escaped (see the module)."""
    if text.isprintable():  # the usual line: nothing to look at
        return text
    out = []
    last = len(text) - 1
    for i, char in enumerate(text):
        if char in KEPT or unicodedata.category(char) not in UNSHOWN:
            out.append(char)
        elif char == "\r" and i < last and text[i + 1] == "\n":
            out.append(char)
        else:
            out.append(escaped(char))
    return "".join(out)


class TerminalGuard(io.TextIOBase):
    """A terminal's text stream that escapes what it is given (`for_terminal`).

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
        self.stream.write(for_terminal(text))
        return written

    def flush(self) -> None:
        if self._pending_cr:  # a lone carriage return, at the end of what was written
            self.stream.write(escaped("\r"))
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
