"""Searches of everything a gateway wrote, for values that must never be in it.

A value is searched in every spelling an echo could give it (`spellings`), worked out
here independently of the gateway's own list of forms: a form the gateway forgets is
a leak these searches still find.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

from helpers.processes import Gateway, stop

# Encodings of a value shorter than this are not searched: they would match anything.
SHORTEST_SPELLING = 8


def written_by(gateway: Gateway) -> list[Path]:
    """The gateway's log, its store (with -wal/-shm/.key files) and every flow file."""
    places = [gateway.output, *gateway.db.parent.glob(gateway.db.name + "*")]
    if gateway.recordings.exists():
        places += [p for p in gateway.recordings.rglob("*") if p.is_file()]
    return places


def spellings(value: str) -> tuple[set[bytes], set[bytes]]:
    """(any-case spellings lower-cased, exact spellings) of `value`: itself, JSON-, \\u-
    and percent-escaped (every byte too), hex, and base64 at each byte alignment in both
    alphabets, the characters that depend on the neighbouring bytes left off."""
    data = value.encode()
    folded = {
        value.lower().encode(),
        json.dumps(value)[1:-1].lower().encode(),
        "".join(f"\\u{ord(c):04x}" for c in value).encode(),
        quote(value, safe="").lower().encode(),
    }
    exact: set[bytes] = set()
    for cased in {data, data.upper(), data.lower()}:
        folded.add(cased.hex().encode())
        folded.add("".join(f"%{byte:02x}" for byte in cased).encode())
        for pad in range(3):
            # The characters that come out the same whatever bytes surround the value.
            one = base64.b64encode(b"\x00" * pad + cased + b"\x00\x00")
            two = base64.b64encode(b"\xff" * pad + cased + b"\xff\xff")
            same = bytes(a if a == b else 0 for a, b in zip(one, two, strict=True))
            stable = max(same.split(b"\x00"), key=len)
            exact |= {stable, stable.translate(bytes.maketrans(b"+/", b"-_"))}
    keep = {s for s in folded | exact if len(s) >= SHORTEST_SPELLING or s == data}
    return folded & keep, exact & keep


def assert_nothing_leaked(gateway: Gateway, *needles: str) -> None:
    """Stop the gateway (flushing store and recordings), then look for `needles`, in every
    spelling, in the raw bytes of everything it wrote."""
    if not needles:
        raise ValueError("name the values that must not leak")
    stop(gateway.proc)
    places = written_by(gateway)
    assert gateway.db.exists(), "the gateway wrote no store to search"
    for place in places:
        data = place.read_bytes()
        lowered = data.lower()
        for needle in needles:
            folded, exact = spellings(needle)
            for form in folded:
                assert form not in lowered, f"{needle!r} found in {place.name} as {form!r}"
            for form in exact:
                assert form not in data, f"{needle!r} found in {place.name} as {form!r}"
