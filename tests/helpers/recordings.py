"""Flow files as an operator reads them: a session's segments joined into one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mitmproxy.io import FlowReader

from holdgate.config.gateway_config import parse_config_text
from holdgate.masking.record_masking import RecordMasking
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


def flows_of(folder: Path, session: str) -> list[Any]:
    """Every flow recorded for a session, read from its segments in order."""
    flows: list[Any] = []
    for path in recording_files(folder, session):
        with path.open("rb") as fh:
            flows.extend(FlowReader(fh).stream())
    return flows


def record_masking() -> RecordMasking:
    """The masking for the record of a small config (one upstream `demo`, emails masked)."""
    config = parse_config_text(
        "version: 1\nupstreams:\n  - name: demo\n    url: http://127.0.0.1:9\nrules: []\n"
        "masking:\n  - name: pii\n    detectors: [email]\n    strategy: partial\n"
    )
    return RecordMasking.from_config(config, b"k" * 32)
