"""Flow files as an operator reads them: a session's segments joined into one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mitmproxy.io import FlowReader

from holdgate.recording.flowfiles import recording_files


def joined_recording(folder: Path, session: str, out: Path) -> Path:
    """`cat recordings/<session>+*.mitm > out`: one file `mitmweb -r` / `mitmdump -r` read."""
    out.write_bytes(b"".join(path.read_bytes() for path in recording_files(folder, session)))
    return out


def read_every_file(folder: Path) -> dict[Path, list[Any]]:
    """Every `.mitm` file of the folder, each read whole (FlowReader raises on a torn one)."""
    flows: dict[Path, list[Any]] = {}
    for path in sorted(folder.glob("*.mitm")):
        with path.open("rb") as fh:
            flows[path] = list(FlowReader(fh).stream())
    return flows
