"""Searches of everything a gateway wrote, for values that must never be in it."""

from __future__ import annotations

from pathlib import Path

from helpers.processes import Gateway, stop


def written_by(gateway: Gateway) -> list[Path]:
    """The gateway's log, its store (with -wal/-shm/.key files) and every flow file."""
    places = [gateway.output, *gateway.db.parent.glob(gateway.db.name + "*")]
    if gateway.recordings.exists():
        places += [p for p in gateway.recordings.rglob("*") if p.is_file()]
    return places


def assert_nothing_leaked(gateway: Gateway, *needles: str) -> None:
    """Stop the gateway (flushing store and recordings), then look for `needles` in the
    raw bytes of everything it wrote."""
    if not needles:
        raise ValueError("name the values that must not leak")
    stop(gateway.proc)
    places = written_by(gateway)
    assert gateway.db.exists(), "the gateway wrote no store to search"
    for place in places:
        data = place.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{needle!r} found in {place.name}"
