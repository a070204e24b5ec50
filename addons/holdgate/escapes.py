"""Text others wrote, made inert for a person's screen: no character in it can drive the
terminal or the chat client that shows it.

A client chose a held call's tool name and arguments, an upstream its tool descriptions,
an IdP the user's name. Shown raw, a control sequence among them is a command to the
approver's terminal (`ESC [2K` and a carriage return redraw the line, so the tool read is
not the one approved; OSC 52 writes the clipboard), a newline forges a line of the message
around it, and a bidi override reverses what follows. `inert` writes every control,
format (bidi) and line/paragraph separator character as its JSON escape (`\\u001b`):
readable, and JSON text stays the same JSON. Tabs and newlines are kept (they lay out the
output; a caller escapes them in a single-line value first), and so is the carriage return
of a `\\r\\n` line end.
"""

from __future__ import annotations

import unicodedata

UNSHOWN = frozenset({"Cc", "Cf", "Zl", "Zp"})
LAYOUT = frozenset("\t\n")


def json_escaped(char: str) -> str:
    """`char` as a JSON escape (a surrogate pair beyond the BMP, as JSON writes it)."""
    point = ord(char)
    if point < 0x10000:
        return f"\\u{point:04x}"
    point -= 0x10000
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


def inert(text: str, layout: frozenset[str] = LAYOUT) -> str:
    """`text` with every character that could drive a terminal escaped, but `layout`'s."""
    if text.isprintable():  # the usual line: nothing to look at
        return text
    out = []
    last = len(text) - 1
    for i, char in enumerate(text):
        if char in layout or unicodedata.category(char) not in UNSHOWN:
            out.append(char)
        elif char == "\r" and "\n" in layout and i < last and text[i + 1] == "\n":
            out.append(char)
        else:
            out.append(json_escaped(char))
    return "".join(out)
