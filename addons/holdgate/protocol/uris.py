"""URIs and paths in the one form every upstream reads the same way, or refused.

A rule's `resource` glob and `path_under` condition only hold if the gateway and the
upstream agree on what a URI or path names. `normalise_uri` gives RFC 3986's normal form
and `normalise_path` an absolute POSIX path; both raise `AmbiguousValue` for what an
upstream could resolve differently (encoded slashes or dot segments, double encoding,
backslashes, control characters, `..` above the root), so no rule can be slipped past.
"""

from __future__ import annotations

import functools
import re
import string


class AmbiguousValue(ValueError):
    """A URI or path that upstreams could resolve differently; no rule may grant it."""


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = frozenset(string.hexdigits)
_ENCODED_IN_PATH = re.compile(r"%(?:2e|2f|5c|25|[01][0-9a-f]|7f)", re.IGNORECASE)


def _refuse_raw(value: str) -> None:
    if value != value.strip():
        raise AmbiguousValue("surrounding whitespace")
    if "\\" in value:
        raise AmbiguousValue("a backslash")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise AmbiguousValue("a control character")


def _decode_segment(raw: str) -> str:
    """Unreserved characters decoded, other percent-escapes kept in upper case (RFC 3986
    6.2.2); escapes whose meaning an upstream could take either way are refused."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] != "%":
            out.append(raw[i])
            i += 1
            continue
        digits = raw[i + 1 : i + 3]
        if len(digits) < 2 or not set(digits) <= _HEX:
            raise AmbiguousValue("malformed percent-encoding")
        char = chr(int(digits, 16))
        if char in "/\\":
            raise AmbiguousValue("an encoded slash or backslash")
        if char == "%" and len(raw) >= i + 5 and set(raw[i + 3 : i + 5]) <= _HEX:
            raise AmbiguousValue("double percent-encoding")
        if ord(char) < 0x20 or char == "\x7f":
            raise AmbiguousValue("an encoded control character")
        out.append(char if char in _UNRESERVED else f"%{digits.upper()}")
        i += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a path whose segments are decoded; `..` above the start is refused
    (relative references resolve against a base the gateway does not know)."""
    parts = path.split("/")
    absolute = path.startswith("/")
    out: list[str] = []
    for i, raw in enumerate(parts):
        last = i == len(parts) - 1
        segment = _decode_segment(raw)
        if segment in (".", "..") and segment != raw:
            raise AmbiguousValue("an encoded dot segment")
        if raw == "":
            if i == 0 or last:
                out.append("")
                continue
            raise AmbiguousValue("an empty path segment")
        if segment == "..":
            if len(out) <= int(absolute):
                raise AmbiguousValue("a '..' above the root")
            out.pop()
        elif segment != ".":
            out.append(segment)
        if last and segment in (".", ".."):
            out.append("")
    return "/".join(out)


def normalise_uri(uri: str) -> str:
    """The RFC 3986 normal form of `uri`: scheme in lower case, unreserved characters
    decoded, percent-escapes in upper case, dot segments removed. Raises AmbiguousValue
    for what upstreams could read differently: control characters, backslashes, encoded
    `/`, `\\` or dot segments, double encoding, empty segments, `..` above the root."""
    _refuse_raw(uri)
    scheme = match.group(0).lower() if (match := _SCHEME.match(uri)) else ""
    rest, hash_mark, fragment = uri[len(scheme) :].partition("#")
    rest, question_mark, query = rest.partition("?")
    for part in (query, fragment):
        if ".." in part.split("/"):
            raise AmbiguousValue("a '..' segment in the query or fragment")
    authority = ""
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        host = _decode_segment(host)
        if host in (".", ".."):
            raise AmbiguousValue("a dot segment as the authority")
        authority, rest = "//" + host, slash + path
    path = _remove_dot_segments(rest)
    return f"{scheme}{authority}{path}{question_mark}{query}{hash_mark}{fragment}"


_CACHED_URI_LENGTH = 4096


def canonical_uri(uri: str) -> tuple[str | None, str]:
    """`normalise_uri` as (normal form, "") or (None, why it is ambiguous). URIs up to 4 KiB
    are cached, as every rule with a `resource` glob asks about the same one; longer ones
    are not, so the cache stays within a few MB whatever clients send."""
    return _canonical_cached(uri) if len(uri) <= _CACHED_URI_LENGTH else _canonical(uri)


def _canonical(uri: str) -> tuple[str | None, str]:
    try:
        return normalise_uri(uri), ""
    except AmbiguousValue as exc:
        return None, str(exc)


_canonical_cached = functools.lru_cache(maxsize=1024)(_canonical)


def normalise_path(path: str) -> str:
    """An absolute POSIX path with `.` and empty segments removed. Raises AmbiguousValue for a
    relative path (the upstream's working directory is unknown), a `..` segment (the
    upstream's filesystem resolves it through symlinks the gateway cannot see), control
    characters, backslashes and percent-escapes of `.`, `/`, `\\`, `%` or controls (an
    upstream may or may not decode them), and a leading `//` (POSIX leaves its meaning to
    the system; Windows reads `//host/share` as a network share)."""
    _refuse_raw(path)
    if not path.startswith("/"):
        raise AmbiguousValue("a relative path")
    if path.startswith("//"):
        raise AmbiguousValue("a path starting with '//' (a network path on some systems)")
    if _ENCODED_IN_PATH.search(path):
        raise AmbiguousValue("a percent-escape an upstream may decode")
    segments = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise AmbiguousValue("a '..' segment")
    return "/" + "/".join(segments)
