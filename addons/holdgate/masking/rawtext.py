"""Where masking could change JSON text, located in the raw text: which string literals.

Masking JSON text (`content[].text` of a tool result) meant parsing it, walking every
string of the document and scanning them all. Most strings hold nothing a detector finds,
and the prefilter's triggers say which could (`holdgate.masking.prefilter`: a trigger is
looser than its detector and survives JSON escaping). `RawText` runs them all over the
raw JSON text in one RE2 pass and reports the string literals they fall in: only those
are decoded and scanned, by the detectors themselves, and what changed is written back in
place of its literal. Everything else stays as written.

A literal is found from a position by the quotes before it: unescaped quotes alternate
between opening and closing ones, and a quote is escaped when an odd run of backslashes
stands before it (pairs of backslashes are counted out first, left to right, as JSON
reads them). The counts run in C over each stretch between two hits.

The locator answers None, and the caller walks the document as before, whenever a
trigger is not inside a literal (a long number, a number with an exponent) or a match
runs past a literal's end. Whether the text is JSON at all is the caller's to check, by
parsing it.
"""

from __future__ import annotations

from json.decoder import scanstring  # type: ignore[attr-defined]

import re2

Quoted = tuple[int, int]
"""A JSON string literal of a raw text: where its opening and its closing quote are."""

_SPACE = frozenset(b" \t\r\n")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")
_COLON = ord(":")


class RawText:
    """One RE2 regex of a plan's triggers; `literals` applies it to a raw JSON text.

    A match runs from a trigger to the next quote, most often the closing quote of the
    literal the trigger is in, so a literal is one match however many triggers it holds.
    """

    def __init__(self, patterns: tuple[str, ...]) -> None:
        options = re2.Options()
        options.max_mem = 64 << 20
        triggers = "|".join(f"(?:{p})" for p in patterns)
        self._regex = re2.compile(f'(?:{triggers})[^"]*"?'.encode(), options)

    def literals(self, data: bytes, counted: bytes) -> list[Quoted] | None:
        """The literals of `data` holding a trigger, in order; None when a trigger lies
        outside one, or a match ran past a literal's closing quote (a trigger ending in
        the quote): it may have swallowed the quote the next trigger begins with.
        `counted` is `countable(data)`."""
        found: list[Quoted] = []
        count, find, rfind = counted.count, counted.find, counted.rfind
        position = 0  # outside any literal: the unescaped quotes before it are even
        close = -1  # the closing quote of the last literal found
        for match in self._regex.finditer(data):
            start, end = match.span()
            if start < close:
                continue  # the rest of a literal, after an escaped quote
            if counted[start] == _QUOTE:  # a trigger's lead may be the quote before it
                start += 1
            before = count(b'"', position, start) - count(b'\\"', max(position - 1, 0), start)
            if before % 2 == 0:
                return None  # between literals: a number, or not JSON
            close = find(b'"', start)
            while close > 0 and counted[close - 1] == _BACKSLASH:
                close = find(b'"', close + 1)
            if close < end - 1:  # (or no closing quote: -1)
                return None
            opening = rfind(b'"', 0, start)
            while opening > 0 and counted[opening - 1] == _BACKSLASH:
                opening = rfind(b'"', 0, opening)
            found.append((opening, close))
            position = close + 1
        return found


def countable(data: bytes) -> bytes:
    """The raw text with each escaped backslash turned into two other characters (same
    length), so a quote with a backslash before it is an escaped one."""
    return data.replace(b"\\\\", b"__")


def decoded(data: bytes, literal: Quoted) -> str:
    """The string a literal spells; ValueError for one JSON would not accept."""
    content = data[literal[0] + 1 : literal[1] + 1].decode("utf-8")
    value, end = scanstring(content, 0, True)
    if end != len(content):
        raise ValueError("not one JSON string")
    return str(value)


def is_key(counted: bytes, literal: Quoted) -> bool:
    """Whether a literal is an object key: a ':' follows it."""
    after = _skip_space(counted, literal[1] + 1)
    return after < len(counted) and counted[after] == _COLON


def value_after(counted: bytes, key: Quoted) -> Quoted | None:
    """The literal a key names, if its value is a string (None for any other value)."""
    at = _skip_space(counted, key[1] + 1)
    if at >= len(counted) or counted[at] != _COLON:
        return None
    at = _skip_space(counted, at + 1)
    if at >= len(counted) or counted[at] != _QUOTE:
        return None
    close = counted.find(b'"', at + 1)
    while close > 0 and counted[close - 1] == _BACKSLASH:
        close = counted.find(b'"', close + 1)
    return None if close < 0 else (at, close)


def _skip_space(data: bytes, at: int) -> int:
    while at < len(data) and data[at] in _SPACE:
        at += 1
    return at


def patched(data: bytes, replacements: dict[Quoted, str]) -> bytes:
    """The raw text with each literal replaced by the JSON text given for it."""
    out: list[bytes] = []
    position = 0
    for literal in sorted(replacements):
        out.append(data[position : literal[0]])
        out.append(replacements[literal].encode("utf-8"))
        position = literal[1] + 1
    out.append(data[position:])
    return b"".join(out)
