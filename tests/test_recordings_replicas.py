"""Flow files named per replica: names that stay in the folder whatever a session id or a
replica name holds, a session's files gathered over replicas, each closed file reported
with its sha256, and a recorded file checked against what it held when it was closed."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest
from mitmproxy.test import tflow

from helpers.recordings import record_masking
from holdgate.config.options import replica_name
from holdgate.recording.flowfiles import ClosedFile, RecordingWriter, Redaction
from holdgate.recording.segments import Segments, file_status, recording_files

RECORD = record_masking()
HOSTILE = ["../../etc/passwd", "a+b", "/abs/path", "..", "x\ny", "", "é+" * 80]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("replica", ["gw-a:8080", *HOSTILE])
@pytest.mark.parametrize("session", ["s1", *HOSTILE])
def test_a_segment_name_stays_in_the_folder_and_names_its_replica(
    tmp_path: Path, session: str, replica: str
) -> None:
    segments = Segments(tmp_path / "rec", replica)
    segments.append(session, b"0:~")
    segments.close_all()
    (closed,) = segments.closed
    assert closed.path.parent == tmp_path / "rec" and closed.session == session
    assert closed.path.name.count("+") == (2 if replica else 1)
    assert recording_files(tmp_path / "rec", session) == [closed.path]
    assert list(tmp_path.iterdir()) == [tmp_path / "rec"]


def test_a_sessions_files_are_gathered_over_replicas_oldest_first(tmp_path: Path) -> None:
    a, b = Segments(tmp_path, "gw-a:8080"), Segments(tmp_path, "gw-b:8080")
    for n in range(3):
        (a if n % 2 == 0 else b).append("s1", b"0:~")
        (a if n % 2 == 0 else b).close_all()
        time.sleep(0.002)  # segments are named by the microsecond they opened
    b.append("s10", b"0:~")  # another session sharing a prefix is not gathered
    b.close_all()
    files = recording_files(tmp_path, "s1")
    assert [p.name.rsplit("+", 1)[1] for p in files] == [
        "gw-a_8080.mitm",
        "gw-b_8080.mitm",
        "gw-a_8080.mitm",
    ]
    assert files == sorted(files)


def test_a_closed_segment_reports_its_flows_bytes_and_sha256(tmp_path: Path) -> None:
    segments = Segments(tmp_path, "gw-a")
    for record in (b"1:a,", b"2:bc,"):
        segments.append("s1", record)
    segments.close("s1")
    (closed,) = segments.closed
    data = closed.path.read_bytes()
    assert (closed.flows, closed.bytes) == (2, len(data))
    assert closed.sha256 == hashlib.sha256(data).hexdigest()


def test_a_replica_repairs_its_own_parts_never_another_replicas(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # beyond pid_max on this box: no such process
    ours = tmp_path / f"s1+20261201T000000.000001Z+gw-a.{dead}.mitm.part"
    theirs = tmp_path / f"s1+20261201T000000.000002Z+gw-b.{dead}.mitm.part"
    for part in (ours, theirs):
        part.write_bytes(b"1:a,1:b")  # one whole record, then a torn one
    segments = Segments(tmp_path, "gw-a")
    (repaired,) = segments.repair()
    assert repaired == (tmp_path / "s1+20261201T000000.000001Z+gw-a.mitm", 3)
    assert theirs.exists()
    (closed,) = segments.closed
    assert (closed.session, closed.flows, closed.bytes) == ("s1", 1, 4)
    assert closed.sha256 == hashlib.sha256(b"1:a,").hexdigest()


def test_the_writer_hands_each_closed_file_over_whatever_the_session_id_holds(
    tmp_path: Path,
) -> None:
    got: list[ClosedFile] = []
    writer = RecordingWriter(tmp_path, replica="gw-a:1", on_closed=got.append)
    session = "../evil\n\t+x"
    try:
        assert writer.submit(session, tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)  # the reply is read by another thread
    finally:
        writer.close()
    (closed,) = got
    assert closed.session == session and closed.flows == 1
    path = tmp_path / closed.file
    assert path.is_file() and closed.file.endswith("+gw-a_1.mitm")
    assert closed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert closed.bytes == path.stat().st_size


def test_a_recorded_file_is_checked_against_its_sha256(tmp_path: Path) -> None:
    (tmp_path / "s1+x.mitm").write_bytes(b"1:a,")
    (tmp_path / "secret").write_bytes(b"1:a,")
    good = hashlib.sha256(b"1:a,").hexdigest()
    assert file_status(tmp_path, "s1+x.mitm", good) == "ok"
    assert file_status(tmp_path, "s1+x.mitm", "0" * 64) == "changed"
    assert file_status(tmp_path, "s2+x.mitm", good) == "missing"
    for name in ("../secret", "/etc/passwd", "secret", "sub/s1+x.mitm", ".mitm/.."):
        assert file_status(tmp_path, name, good) == "not a flow file name"


def test_the_replica_name_is_the_option_or_the_host_and_listen_address() -> None:
    class Options:
        listen_port = 8443
        listen_host = ""
        mode = ["reverse:http://up"]

    class Named(Options):
        holdgate_replica = "gw-a"

    class InTheMode(Options):
        mode = ["reverse:http://up@127.0.0.1:9101"]

    assert replica_name(Options()) == f"{socket.gethostname()}:8443"
    assert replica_name(InTheMode()) == f"{socket.gethostname()}:127.0.0.1:9101"
    assert replica_name(Named()) == "gw-a"


def redaction() -> Redaction:
    return Redaction(injected=(), streamed=None, upstream="demo")
