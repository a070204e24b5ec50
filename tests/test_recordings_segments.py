"""Flow files never left unreadable, and failures to write them seen by the operator.

A writer killed mid-stream (SIGKILL, by its pid) or a full disk (RLIMIT_FSIZE on the
writer: the write fails part-way, as on ENOSPC) leave only `.mitm` files that read whole;
what a killed writer left half-built is closed whole by the next one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mitmproxy import io as mitmio
from mitmproxy.test import tflow

from helpers.recordings import flows_of, read_every_file, record_masking
from holdgate.config.gateway_config import Upstream
from holdgate.recording import segments
from holdgate.recording.flowfiles import (
    NOWHERE,
    RecordingWriter,
    Redaction,
    recorded_state,
    recording_files,
    route_back,
)
from holdgate.recording.segments import Segments, whole_records

ADDONS = Path(__file__).resolve().parent.parent / "addons"
RECORD = record_masking()

BIG = b'{"jsonrpc": "2.0", "id": 1, "result": {"text": "' + b"x" * 200_000 + b'"}}'


def redaction() -> Redaction:
    return Redaction(injected=(), streamed=None, upstream="demo")


def big_flow() -> dict:
    flow = tflow.tflow(resp=tflow.tresp(content=BIG))
    flow.response.headers["content-type"] = "application/json"
    return flow.get_state()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_writer_killed_mid_stream_leaves_only_readable_files(tmp_path) -> None:
    folder = tmp_path / "rec"
    writer = RecordingWriter(folder)
    pid = writer._process.pid
    try:
        for n in range(40):
            assert writer.submit(f"s{n % 3}", big_flow(), redaction(), RECORD)
        assert writer.flush()  # some segments closed whole
        for n in range(400):
            writer.submit(f"s{n % 3}", big_flow(), redaction(), RECORD)
        assert wait_for(lambda: any(folder.glob("*.part")))  # writing now
        os.kill(pid, signal.SIGKILL)
        writer._process.wait(10)
        files = read_every_file(folder)  # FlowReader raises on a torn file
        assert sum(len(flows) for flows in files.values()) >= 40
    finally:
        writer.close()
    assert not writer.submit("s1", big_flow(), redaction(), RECORD)

    again = RecordingWriter(folder)  # the next writer closes what the killed one left
    try:
        assert again.flush()
    finally:
        again.close()
    assert not list(folder.glob("*.part"))
    after = read_every_file(folder)
    assert sum(len(flows) for flows in after.values()) > sum(len(f) for f in files.values())


def test_a_torn_part_of_a_dead_writer_is_cut_back_to_its_whole_flows(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, "holdgate")
    folder = tmp_path / "rec"
    folder.mkdir()
    whole = mitmio.tnetstring.dumps(recorded_state(big_flow(), redaction(), RECORD).state)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **TEXT)
    part = folder / f"s1+20261201T000000.000001Z.{int(dead.stdout)}.mitm.part"
    part.write_bytes(whole * 2 + whole[: len(whole) // 2])  # killed half-way through a third
    assert whole_records(part.read_bytes()) == 2 * len(whole)
    writer = RecordingWriter(folder)
    try:
        assert writer.flush()
    finally:
        writer.close()
    (closed,) = folder.iterdir()
    assert closed.name == "s1+20261201T000000.000001Z.mitm"
    assert len(flows_of(folder, "s1")) == 2
    assert "left by a stopped writer was closed: s1+20261201T000000.000001Z.mitm" in caplog.text
    assert f"({len(whole) // 2} bytes of a torn last flow cut off)" in caplog.text


TEXT: dict = {"capture_output": True, "text": True, "timeout": 60}

FULL_DISK = """
import json, logging, resource, sys
from mitmproxy.test import tflow
sys.path.insert(0, {tests!r})
from test_recordings_segments import RECORD, big_flow, redaction
from holdgate.recording.flowfiles import RecordingWriter

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, hard))  # the writer inherits it
writer = RecordingWriter({folder!r})
for n in range(12):
    writer.submit("s1" if n % 2 else "s2", big_flow(), redaction(), RECORD)
writer.flush()
failed, lost, failures, healthy = writer.failed, writer.lost, writer.failures, writer.healthy
writer.close()
print(json.dumps(dict(failed=failed, lost=lost, failures=failures, healthy=healthy)))
"""


def test_a_full_disk_is_counted_logged_once_and_leaves_readable_files(tmp_path) -> None:
    folder = tmp_path / "rec"
    script = FULL_DISK.format(tests=str(Path(__file__).parent), folder=str(folder))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ADDONS), str(Path(__file__).parent)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, **TEXT)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.splitlines()[-1])
    # each session's segment takes two flows of ~200 kB under a 500 kB file size limit;
    # the third is cut back off (the write fails part-way) and so are the rest
    assert counts["failed"] == counts["lost"] == 8 and not counts["healthy"]
    assert counts["failures"] == {"OSError: File too large": 8}
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors[0].startswith(
        "ERROR holdgate: a flow recording was lost: cannot write s2: OSError: File too large"
    )
    assert len(errors) == 2  # once for the kind, not once per flow; and the close summary
    assert "8 flows not recorded (8 could not be written: OSError: File too large ×8)" in errors[1]
    files = read_every_file(folder)
    assert sorted(len(flows) for flows in files.values()) == [2, 2]
    assert not list(folder.glob("*.part"))


def test_failures_log_once_per_kind_until_they_end(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "holdgate")
    blocker = tmp_path / "rec"
    blocker.write_text("a file where the folder should be")
    writer = RecordingWriter(blocker)
    try:
        for n in range(5):
            assert writer.submit(f"s{n}", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        assert writer.failed == 5 and writer.failures == {"NotADirectoryError: Not a directory": 5}
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "cannot write s0: NotADirectoryError" in errors[0].message
        blocker.unlink()
        assert writer.submit("s9", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush() and writer.healthy
        assert "flow files are written again (5 flows lost so far)" in caplog.text
        for path in blocker.iterdir():
            path.unlink()
        blocker.rmdir()
        blocker.write_text("broken again")
        assert writer.submit("s1", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2  # a new episode is logged again
    finally:
        writer.close()
    assert writer.failed == 6


def test_a_segment_closes_when_its_session_goes_idle(tmp_path, monkeypatch) -> None:
    now = [100.0]
    files = Segments(tmp_path, clock=lambda: now[0])
    record = mitmio.tnetstring.dumps(recorded_state(big_flow(), redaction(), RECORD).state)
    files.append("s1", record)
    files.append("s1", record)
    assert not list(tmp_path.glob("*.mitm")) and files.next_due() == segments.SEGMENT_IDLE
    now[0] += segments.SEGMENT_IDLE
    assert files.close_due() == []
    (closed,) = tmp_path.glob("*.mitm")
    assert closed.name.startswith("s1+") and len(read_every_file(tmp_path)[closed]) == 2
    files.append("s1", record)  # a new segment, named after its own start
    busy = int(segments.SEGMENT_AGE / 0.9) + 1  # never idle, but older than SEGMENT_AGE
    for _ in range(busy):
        now[0] += 0.9
        files.append("s1", record)
        files.close_due()
    assert len(list(tmp_path.glob("*.mitm"))) == 2  # closed at SEGMENT_AGE though busy
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 3 * len(record))
    for _ in range(3):
        files.append("s2", record)
    assert len(list(tmp_path.glob("*.mitm"))) == 3 and files.next_due() is None  # full
    files.append("s3", record)
    assert files.close_all() == [] and files.next_due() is None  # at shutdown
    assert len(list(tmp_path.glob("*.mitm"))) == 4
    assert [p.name.split("+")[0] for p in recording_files(tmp_path, "s1")] == ["s1", "s1"]
    flows = sum(len(f) for f in read_every_file(tmp_path).values())
    assert flows == 2 + 1 + busy + 3 + 1


def test_the_files_of_one_session_are_never_another_s(tmp_path) -> None:
    for name in ("s1+20261201T000000.000001Z.mitm", "s1.x+20261201T000000.000001Z.mitm"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "s1.mitm").write_bytes(b"")  # from before segments: read first
    assert [p.name for p in recording_files(tmp_path, "s1")] == [
        "s1.mitm",
        "s1+20261201T000000.000001Z.mitm",
    ]
    assert [p.name for p in recording_files(tmp_path, "s1+x")] == []  # `+` is never in a name


@pytest.mark.parametrize(
    ("url", "prefix", "recorded", "replayed"),
    [
        ("http://up:9000/mcp", None, b"/mcp/mcp?x=1", b"/mcp?x=1"),
        ("http://up:9000/v1/mcp", "/crm", b"/v1/mcp/sub", b"/crm/sub"),
        ("http://up:9000/v1/mcp", "/crm", b"/v1/mcp/", b"/crm/"),
        ("http://up:9000", "/crm", b"/mcp", b"/crm/mcp"),
    ],
)
def test_a_recorded_request_points_at_the_gateway_with_the_client_s_path(
    url, prefix, recorded, replayed
) -> None:
    flow = tflow.tflow(resp=True)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    flow.client_conn.timestamp_tls_setup = None  # the client spoke plain HTTP to the gateway
    flow.request.host, flow.request.port, flow.request.path = "up", 9000, recorded.decode()
    flow.request.headers["host"] = "up:9000"
    route = route_back(Upstream(name="demo", url=url, prefix=prefix))
    copy = recorded_state(flow.get_state(), Redaction((), None, "demo", route), RECORD).state
    request = copy["request"]
    assert (request["scheme"], request["host"], request["port"]) == ("http", "127.0.0.1", 8080)
    assert request["path"] == replayed
    assert dict(request["headers"])[b"host"] == b"127.0.0.1:8080"


def test_a_recorded_request_whose_gateway_is_unknown_points_nowhere() -> None:
    copy = recorded_state(tflow.tflow(resp=True).get_state(), redaction(), RECORD).state
    assert copy["request"]["host"] == NOWHERE
    assert route_back(None) is None and route_back(Upstream(name="open")) is None
