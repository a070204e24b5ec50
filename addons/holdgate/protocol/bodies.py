"""HTTP bodies decoded with a bound on what they inflate to.

mitmproxy's `get_content()` inflates a compressed body whole: 511 bytes of brotli can
become 300 MB on the event loop. Here every decoder stops at `limit` output bytes.
"""

from __future__ import annotations

import zlib

import brotli

from holdgate.protocol.jsonrpc import BodyError

try:
    from compression import zstd
except ImportError:  # Python < 3.14: the backport mitmproxy itself depends on
    from backports import zstd

CHUNK = 64 * 1024


def decode_bounded(raw: bytes, encoding: str, limit: int) -> bytes:
    """`raw` decoded per its Content-Encoding; BodyError (413) past `limit` bytes.

    Unknown or stacked encodings are refused (400): a body that cannot be decoded
    exactly as the upstream would cannot be decided on.
    """
    name = encoding.strip().lower()
    if name in ("", "identity"):
        out = raw
    elif name in ("gzip", "x-gzip"):
        out = _inflate(zlib.decompressobj(47), raw, limit)
    elif name == "deflate":
        try:
            out = _inflate(zlib.decompressobj(zlib.MAX_WBITS), raw, limit)
        except BodyError as exc:  # some clients send raw deflate without the zlib header
            if exc.status == 413:
                raise
            out = _inflate(zlib.decompressobj(-zlib.MAX_WBITS), raw, limit)
    elif name == "br":
        out = _unbrotli(raw, limit)
    elif name == "zstd":
        out = _unzstd(raw, limit)
    else:
        raise BodyError(f"unknown Content-Encoding {encoding[:40]!r}")
    if len(out) > limit:
        raise _too_large(limit)
    return out


def _too_large(limit: int) -> BodyError:
    return BodyError(
        f"body inflates to more than the {limit}-byte limit (holdgate_max_body)", status=413
    )


def _inflate(decoder: zlib._Decompress, raw: bytes, limit: int) -> bytes:
    try:
        out = decoder.decompress(raw, limit + 1)
        if len(out) <= limit and not decoder.eof:
            out += decoder.flush()
    except zlib.error as exc:
        raise BodyError(f"body does not decompress ({exc})") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise _too_large(limit)
    if not decoder.eof:
        raise BodyError("compressed body is truncated")
    if decoder.unused_data:
        raise BodyError("data follows the end of the compressed body")
    return out


def _unbrotli(raw: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    try:
        out: bytes = decoder.process(raw, output_buffer_limit=limit + 1)
        while len(out) <= limit and not decoder.can_accept_more_data():
            out += decoder.process(b"", output_buffer_limit=limit + 1 - len(out))
    except brotli.error as exc:
        raise BodyError(f"body does not decompress ({exc})") from None
    if len(out) > limit:
        raise _too_large(limit)
    if not decoder.is_finished():
        raise BodyError("compressed body is truncated")
    return out


def _unzstd(raw: bytes, limit: int) -> bytes:
    decoder = zstd.ZstdDecompressor()
    try:
        out: bytes = decoder.decompress(raw, max_length=limit + 1)
    except zstd.ZstdError as exc:
        raise BodyError(f"body does not decompress ({exc})") from None
    if len(out) > limit or not (decoder.eof or decoder.needs_input):
        raise _too_large(limit)
    if not decoder.eof:
        raise BodyError("compressed body is truncated")
    return out
