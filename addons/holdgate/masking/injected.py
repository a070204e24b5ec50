"""The values the gateway injects towards an upstream, found in every form it may send back.

An echo tool, an HTTP-dump tool or a careless upstream returns what it received, the
gateway's `Authorization` included, and rarely as is: base64 of a whole request dump (the
token at any byte offset of it), hex, upper-cased, percent-encoded, JSON-escaped, cut
across two strings of one message or two events of a stream. `InjectedForms` is built once
per set of secrets (`forms_for`, when the config loads) and finds all of those with RE2
patterns compiled then; nothing is derived per response.

What is searched, per message (`InjectedForms.scrub_value`):
- the string values under each JSON key joined in order (`content[].text` side by side),
  for a whole form anywhere in them; each key on its own;
- each string's edges: the start of a form of the secret itself (`PARTIAL_MIN` bytes or
  more) at its end, the end of one at its start: a value cut in two (under two keys, or
  two events) or truncated leaves neither part;
- in a stream, each key's join behind the tail the previous messages left under that key
  (`StreamTails`), as `StreamMasker` does: a value sent a few characters per event is
  replaced from the event where `PARTIAL_MIN` bytes of it have gone by.

A hit is replaced by `SECRET_MARK`. An upstream that means to hand its credential out can
always spell it some other way (reversed, enciphered, a character per key): the guard
keeps out what an upstream reflects, it is not a boundary against the upstream itself.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, quote_plus

import re2

SECRET_MARK: Final = "[REDACTED:injected_credential]"
# Forms derived from a secret (its token part, encodings) shorter than this are not
# scrubbed: they would match ordinary text. The raw value itself always is.
MIN_DERIVED_SECRET: Final = 6
# The shortest start or end of a form replaced on its own (a value cut in two), matched
# in the form's own case, upper or lower case only: ten characters of a token, never a
# word at the end of ordinary text (`X-Upstream` against a token `upstream-7f3a...`).
PARTIAL_MIN: Final = 10
# The longest injected value the config accepts: its forms are some fifty times as long,
# and searching every response for them gets slower with their length.
MAX_SECRET_BYTES: Final = 4096
# RE2's memory for the compiled forms (its default, 8 MiB, fails from about 8 KiB values).
_RE2_MEMORY: Final = 64 << 20
# The most keys a stream keeps a tail under (least recent dropped).
STREAM_TAIL_KEYS: Final = 32
# Joins keys for one search: a byte no form holds, so no hit spans two.
_SEPARATOR: Final = b"\x00"
_MARK: Final = SECRET_MARK.encode()
# The characters of a JSON number's text.
_NUMBER_TEXT: Final = re.compile(r"[0-9eE.+-]+")


@dataclass(frozen=True)
class SecretForm:
    """One spelling of a secret. `folded`: matched in any letter case (the encoding does
    not fix it: hex, percent-escapes, the plain text). `core`: it spells the secret part
    itself (the token, not `Bearer `), so a part of it is a hit too."""

    text: str
    folded: bool
    core: bool


def secret_forms(secrets: Iterable[str]) -> tuple[SecretForm, ...]:
    """Every form of every secret, longest first: the raw values, their token part
    (`Bearer X`, `Basic X` and the user:password and password in X), and those upper- and
    lower-cased, JSON-escaped (short, `\\/` and `\\u00xx` escapes), percent-encoded, hex
    and base64 at each of the three byte alignments in both alphabets (the characters
    that depend on neighbouring bytes left off, so the form matches inside a longer blob)."""
    found: dict[tuple[str, bool], SecretForm] = {}

    def add(text: str, folded: bool, core: bool, raw: bool = False) -> None:
        if not text or (len(text) < MIN_DERIVED_SECRET and not raw):
            return
        folded = folded and len(text) >= MIN_DERIVED_SECRET
        key = (text, folded)
        known = found.get(key)
        if known is None or (core and not known.core):
            found[key] = SecretForm(text, folded, core)

    for secret in secrets:
        if not secret:
            continue
        scheme, _, token = secret.strip().partition(" ")
        token = token.strip()
        has_token = bool(token) and scheme.isalpha()
        add(secret, folded=True, core=not has_token, raw=True)
        bases = [(secret, not has_token)]
        if has_token:
            bases.append((token, True))
            if scheme.lower() == "basic":
                bases.extend(_basic_parts(token))
        for base, core in bases:
            for form, folded in _spellings(base):
                add(form, folded, core)
    return tuple(sorted(found.values(), key=lambda f: (-len(f.text), f.text)))


def _spellings(base: str) -> Iterable[tuple[str, bool]]:
    """(form, folded) for one base value."""
    yield base, True
    yield json.dumps(base)[1:-1], True
    yield json.dumps(base, ensure_ascii=False)[1:-1], True
    yield json.dumps(base)[1:-1].replace("/", "\\/"), True
    yield "".join(_u_escape(char, "{:04x}") for char in base), True
    yield "".join(_u_escape(char, "{:04X}") for char in base), True
    yield quote(base, safe="", errors="surrogatepass"), True
    yield quote_plus(base, safe="/", errors="surrogatepass"), True
    for cased in dict.fromkeys((base, base.upper(), base.lower())):
        data = cased.encode("utf-8", "surrogatepass")
        yield data.hex(), True
        yield "".join(f"%{byte:02x}" for byte in data), True
        for offset in range(3):
            encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
            # Characters wholly made of the value's bits: the first after the offset's
            # bits, up to the last before the padding's.
            stable = encoded[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6]
            yield stable, False
            yield stable.translate(_URLSAFE), False


_URLSAFE: Final = str.maketrans("+/", "-_")


def _u_escape(char: str, digits: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return "\\u" + digits.format(code)
    code -= 0x10000
    return (
        "\\u"
        + digits.format(0xD800 + (code >> 10))
        + "\\u"
        + digits.format(0xDC00 + (code & 0x3FF))
    )


def _basic_parts(token: str) -> list[tuple[str, bool]]:
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return []
    _, _, password = decoded.partition(":")
    return [(decoded, False), (password, True)] if password else [(decoded, True)]


def _escape(text: str) -> str:
    return str(re2.escape(text))


def _literal(form: SecretForm) -> str:
    escaped = _escape(form.text)
    return f"(?i:{escaped})" if form.folded else escaped


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _compile(pattern: str | bytes) -> re2._Regexp:
    options = re2.Options()
    options.max_mem = _RE2_MEMORY
    options.log_errors = False  # its log line would quote the pattern: the secret's forms
    return re2.compile(_utf8(pattern) if isinstance(pattern, str) else pattern, options)


@dataclass(frozen=True)
class StreamTails:
    """What the previous messages of one stream left at the end of each key's strings,
    to find a value sent in pieces. One per stream, used in order."""

    tails: dict[str, bytes] = field(default_factory=dict)

    def remember(self, key: str, tail: bytes) -> None:
        """The key's new tail; the least recently used key goes past `STREAM_TAIL_KEYS`."""
        self.tails.pop(key, None)
        self.tails[key] = tail
        while len(self.tails) > STREAM_TAIL_KEYS:
            del self.tails[next(iter(self.tails))]


@dataclass(frozen=True)
class _Leaf:
    data: bytes  # the string as UTF-8, lone surrogates kept (RE2 reads bytes)
    context: str | None  # the nearest key of a value; None for a key


@dataclass(frozen=True)
class _Piece:
    """A string placed in a joined text to search."""

    leaf: int  # the string's number in `_collect` order; -1 for a stream's tail
    data: bytes


class _Partial:
    """Finds a proper start of a form (`PARTIAL_MIN` bytes or more) at the end of a text,
    and a proper end of one at its start: an RE2 pass finds where a form's first (or last)
    `PARTIAL_MIN` bytes occur, then the form is compared from there to the text's edge."""

    def __init__(self, forms: Iterable[bytes]) -> None:
        self.by_start: dict[bytes, list[bytes]] = {}
        self.by_end: dict[bytes, list[bytes]] = {}
        for form in forms:
            self.by_start.setdefault(form[:PARTIAL_MIN], []).append(form)
            self.by_end.setdefault(form[-PARTIAL_MIN:], []).append(form)
        self.reach = max((len(f) - 1 for group in self.by_start.values() for f in group), default=0)
        self.head_re = _compile(_alternation(self.by_start)) if self.by_start else None
        self.tail_re = _compile(_alternation(self.by_end)) if self.by_end else None

    def start_at_end(self, data: bytes) -> int:
        """How many bytes at the end of `data` are a proper start of a form (0: none)."""
        if self.head_re is None:
            return 0
        window = data[-self.reach :]
        at = 0
        while (found := self.head_re.search(window, at)) is not None:
            rest = window[found.start() :]
            if any(len(rest) < len(f) and f.startswith(rest) for f in self.by_start[found.group()]):
                return len(rest)  # the earliest start is the longest
            at = found.start() + 1
        return 0

    def end_at_start(self, data: bytes) -> int:
        """How many bytes at the start of `data` are a proper end of a form (0: none)."""
        if self.tail_re is None:
            return 0
        window = data[: self.reach]
        longest = at = 0
        while (found := self.tail_re.search(window, at)) is not None:
            head = window[: found.end()]
            if any(len(head) < len(f) and f.endswith(head) for f in self.by_end[found.group()]):
                longest = len(head)
            at = found.start() + 1
        return longest


def _alternation(literals: Iterable[bytes]) -> bytes:
    return b"|".join(re2.escape(literal) for literal in sorted(literals, key=len, reverse=True))


@functools.lru_cache(maxsize=64)
def forms_for(secrets: tuple[str, ...]) -> InjectedForms:
    """The compiled forms of `secrets`, built once (the config loader builds them off the
    proxy's event loop; the response guard and the record then find them here)."""
    return InjectedForms(secrets)


class InjectedForms:
    """The compiled forms of a set of secrets. Falsy when there is nothing to find."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.forms = secret_forms(secrets)
        partial = {
            _utf8(cased)
            for form in self.forms
            if form.core and len(_utf8(form.text)) > PARTIAL_MIN
            for cased in (
                (form.text, form.text.upper(), form.text.lower()) if form.folded else (form.text,)
            )
        }
        self._partial = _Partial(partial)
        self._whole = _compile("|".join(map(_literal, self.forms))) if self.forms else None
        # A secret a JSON number can spell (digits only, say) may come back as a number:
        # numbers are searched too (as their JSON text), only then.
        self._numbers = any(_NUMBER_TEXT.fullmatch(form.text) for form in self.forms)

    def __bool__(self) -> bool:
        return bool(self.forms)

    def scrub_text(self, text: str, tails: StreamTails | None = None) -> tuple[str, int]:
        """`text` with every injected value replaced, and how many runs were."""
        scrubbed, count = self.scrub_value(text, tails)
        return scrubbed, count

    def scrub_value(self, value: Any, tails: StreamTails | None = None) -> tuple[Any, int]:
        """A JSON-like value with every injected value replaced in its strings and keys
        (containers copied only where something changed), and how many runs were.
        `tails`: the value is the next message of that stream."""
        whole = self._whole
        if whole is None:
            return value, 0
        leaves: list[_Leaf] = []
        _collect(value, None, leaves, self._numbers)
        if not leaves:
            return value, 0
        covered: dict[int, list[tuple[int, int]]] = {}
        self._per_key(whole, leaves, covered, tails)
        self._per_string(whole, leaves, covered)
        if not covered:
            return value, 0
        replaced: dict[int, str] = {}
        count = 0
        for index, spans in covered.items():
            data, runs = _replace(leaves[index].data, spans)
            replaced[index] = data.decode("utf-8", "surrogatepass")
            count += runs
        return _rebuild(value, replaced, itertools.count(), self._numbers), count

    def _per_key(
        self,
        whole: re2._Regexp,
        leaves: list[_Leaf],
        covered: dict[int, list[tuple[int, int]]],
        tails: StreamTails | None,
    ) -> None:
        """Whole forms in the string values under each key, joined in order; in a stream,
        behind the key's tail, where a form's start at the end counts too."""
        by_key: dict[str, list[int]] = {}
        for index, leaf in enumerate(leaves):
            if leaf.context is not None:
                by_key.setdefault(leaf.context, []).append(index)
        for key, indexes in by_key.items():
            tail = tails.tails.get(key, b"") if tails is not None else b""
            pieces = [_Piece(-1, tail)] if tail else []
            pieces += [_Piece(i, leaves[i].data) for i in indexes]
            joined = b"".join(piece.data for piece in pieces)
            spans = [(m.start(), m.end()) for m in whole.finditer(joined)]
            if tails is not None:
                if started := self._partial.start_at_end(joined):
                    spans.append((len(joined) - started, len(joined)))
                tails.remember(key, joined[-self._partial.reach :] if self._partial.reach else b"")
            _mark(spans, pieces, 0, covered)

    def _per_string(
        self, whole: re2._Regexp, leaves: list[_Leaf], covered: dict[int, list[tuple[int, int]]]
    ) -> None:
        """Whole forms in each key; in every string, a form's start at its end and a form's
        end at its start (a value cut in two, or truncated)."""
        keys = [_Piece(i, leaf.data) for i, leaf in enumerate(leaves) if leaf.context is None]
        if keys:
            joined = _SEPARATOR.join(piece.data for piece in keys)
            _mark([(m.start(), m.end()) for m in whole.finditer(joined)], keys, 1, covered)
        partial = self._partial
        if partial.head_re is None:
            return
        for index, leaf in enumerate(leaves):
            data = leaf.data
            if len(data) < PARTIAL_MIN:
                continue
            if started := partial.start_at_end(data):
                covered.setdefault(index, []).append((len(data) - started, len(data)))
            if ended := partial.end_at_start(data):
                covered.setdefault(index, []).append((0, ended))


def _collect(value: Any, context: str | None, leaves: list[_Leaf], numbers: bool) -> None:
    kind = type(value)
    if kind is str:
        leaves.append(_Leaf(_utf8(value), context if context is not None else ""))
    elif numbers and (kind is int or kind is float):
        leaves.append(_Leaf(_utf8(json.dumps(value)), context if context is not None else ""))
    elif kind is dict:
        for key, item in value.items():
            if type(key) is str:
                leaves.append(_Leaf(_utf8(key), None))
                _collect(item, key, leaves, numbers)
            else:
                _collect(item, context, leaves, numbers)
    elif kind is list:
        for item in value:
            _collect(item, context, leaves, numbers)


def _rebuild(value: Any, replaced: dict[int, str], order: Iterator[int], numbers: bool) -> Any:
    """`value` with the leaves numbered in `replaced` (in `_collect`'s order) replaced: a
    number that spelled a secret becomes the marked string."""
    kind = type(value)
    if kind is str:
        return replaced.get(next(order), value)
    if numbers and (kind is int or kind is float):
        return SECRET_MARK if next(order) in replaced else value  # never half a number
    if kind is dict:
        out: dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            new_key = replaced.get(next(order), key) if type(key) is str else key
            new_item = _rebuild(item, replaced, order, numbers)
            changed = changed or new_key is not key or new_item is not item
            out[new_key] = new_item
        return out if changed else value
    if kind is list:
        items = [_rebuild(item, replaced, order, numbers) for item in value]
        return items if any(map(lambda a, b: a is not b, items, value)) else value
    return value


def _mark(
    spans: list[tuple[int, int]],
    pieces: list[_Piece],
    gap: int,
    covered: dict[int, list[tuple[int, int]]],
) -> None:
    """Mark spans of the pieces' join (`gap` bytes between pieces) on the strings they come
    from; a piece of leaf -1 (a stream's tail, already sent) takes no mark."""
    if not spans:
        return
    starts = []
    at = 0
    for piece in pieces:
        starts.append(at)
        at += len(piece.data) + gap
    for begin, end in spans:
        position = max(bisect.bisect_right(starts, begin) - 1, 0)
        while position < len(pieces) and starts[position] < end:
            piece = pieces[position]
            lo = max(begin - starts[position], 0)
            hi = min(end - starts[position], len(piece.data))
            if hi > lo and piece.leaf >= 0:
                covered.setdefault(piece.leaf, []).append((lo, hi))
            position += 1


def _replace(text: bytes, spans: list[tuple[int, int]]) -> tuple[bytes, int]:
    """`text` with each run of covered characters replaced by one mark; how many runs."""
    runs: list[list[int]] = []
    for lo, hi in sorted(spans):
        if runs and lo <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], hi)
        else:
            runs.append([lo, hi])
    out: list[bytes] = []
    at = 0
    for lo, hi in runs:
        out += (text[at:lo], _MARK)
        at = hi
    out.append(text[at:])
    return b"".join(out), len(runs)
