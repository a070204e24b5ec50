"""The recorded copy of a flow: credentials out, the stream as the client got it."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

from mitmproxy import io as mitmio
from mitmproxy.test import tflow

from holdgate.config.gateway_config import parse_config_text
from holdgate.masking.record_masking import RecordMasking
from holdgate.recording.flowfiles import RecordingWriter, Redaction, recording_files, serve
from holdgate.recording.flowfiles import recorded_state as recorded

ADDONS = Path(__file__).resolve().parent.parent / "addons"
CONFIG = """
version: 1
upstreams:
  - name: demo
    url: http://127.0.0.1:9
    inject:
      headers:
        X-Upstream-Token: "injected-secret-0042"
rules: []
masking:
  - name: pii
    detectors: [email]
    strategy: partial
    exempt_groups: [compliance]
"""
RECORD = RecordMasking.from_config(parse_config_text(CONFIG), b"k" * 32)


def redaction(streamed: bytes | None = None, injected: tuple[str, ...] = ()) -> Redaction:
    return Redaction(injected=injected, streamed=streamed, upstream="demo")


def recorded_state(state: dict, redaction: Redaction) -> dict:
    return recorded(state, redaction, RECORD).state


def read_back(state: dict) -> list:
    buffer = io.BytesIO()
    mitmio.tnetstring.dump(state, buffer)
    buffer.seek(0)
    return list(mitmio.FlowReader(buffer).stream())


def flows_of(folder: Path, session: str) -> list:
    """Every flow recorded for a session, read from its segments in order."""
    flows: list = []
    for path in recording_files(folder, session):
        with path.open("rb") as fh:
            flows.extend(mitmio.FlowReader(fh).stream())
    return flows


def flow_with_credentials():
    flow = tflow.tflow(resp=True)
    flow.request.headers["Authorization"] = "Bearer caller-token"
    flow.request.headers["X-Api-Key"] = "caller-key"
    flow.request.headers["Cookie"] = "session=caller-cookie"
    flow.request.headers["X-Upstream-Token"] = "injected-secret"
    return flow


def test_caller_credentials_are_dropped_and_injected_ones_marked() -> None:
    flow = flow_with_credentials()
    flow.comment, flow.marked = "holdgate: x", ":m:"  # the flow's annotations are kept
    state = recorded_state(flow.get_state(), redaction(injected=("x-upstream-token",)))
    (copy,) = read_back(state)
    assert "authorization" not in copy.request.headers
    assert "x-api-key" not in copy.request.headers
    assert "cookie" not in copy.request.headers
    assert copy.request.headers["x-upstream-token"] == "[injected by holdgate]"
    assert (copy.comment, copy.marked, copy.id) == ("holdgate: x", ":m:", flow.id)
    raw = mitmio.tnetstring.dumps(state)
    for secret in (b"caller-token", b"caller-key", b"caller-cookie", b"injected-secret"):
        assert secret not in raw
    # the live flow is untouched
    assert flow.request.headers["authorization"] == "Bearer caller-token"


def test_a_backup_left_by_an_edit_is_not_recorded() -> None:
    flow = flow_with_credentials()
    flow.backup()
    flow.request.content = b'{"edited": true}'
    state = flow.get_state()
    assert state["backup"] is not None
    recorded = recorded_state(state, redaction())
    assert recorded["backup"] is None
    assert b"caller-token" not in mitmio.tnetstring.dumps(recorded)
    (copy,) = read_back(recorded)
    assert not copy.modified()


def test_the_request_body_is_masked_whole() -> None:
    body = b'{"id": 1, "method": "x", "params": {"_meta": {"q": "jane@example.com"}}}'
    flow = tflow.tflow(req=tflow.treq(content=body))
    state = recorded_state(flow.get_state(), redaction())
    (copy,) = read_back(state)
    assert copy.request.json() == {
        "id": 1,
        "method": "x",
        "params": {"_meta": {"q": "j***@example.com"}},
    }
    assert b"jane@example.com" not in mitmio.tnetstring.dumps(state)


def test_a_gzipped_request_body_is_masked_and_stored_gzipped() -> None:
    flow = tflow.tflow(req=tflow.treq(content=b""))
    flow.request.headers["content-encoding"] = "gzip"
    flow.request.content = b"mail jane@example.com"
    (copy,) = read_back(recorded_state(flow.get_state(), redaction()))
    assert copy.request.content == b"mail j***@example.com"
    assert gzip.decompress(copy.request.raw_content) == b"mail j***@example.com"


def test_a_body_that_is_not_text_is_left_out_and_said_so() -> None:
    flow = tflow.tflow(resp=tflow.tresp(content=b"\x89PNG\xff jane@example.com"))
    result = recorded(flow.get_state(), redaction(), RECORD)
    (copy,) = read_back(result.state)
    assert b"jane@example.com" not in copy.response.content
    assert b"left out of the record (not UTF-8 text)" in copy.response.content
    assert result.dropped == ("response body: not UTF-8 text",)


def test_an_exempt_callers_response_is_masked_in_the_record() -> None:
    flow = tflow.tflow(resp=tflow.tresp(content=b'{"result": {"email": "jane@example.com"}}'))
    flow.response.headers["X-Customer-Email"] = "jane@example.com"
    flow.response.headers["Set-Cookie"] = "session=cookie-value"
    flow.response.headers["X-Echo"] = "got injected-secret-0042"
    flow.metadata["holdgate"] = {
        "identity": {"user": "carol@corp.example", "groups": ["compliance"]},
        "messages": [{"target": "customers://jane@example.com"}],
    }
    state = recorded_state(flow.get_state(), redaction())
    raw = mitmio.tnetstring.dumps(state)
    for secret in (b"jane@example.com", b"cookie-value", b"injected-secret-0042"):
        assert secret not in raw
    (copy,) = read_back(state)
    assert copy.response.json() == {"result": {"email": "j***@example.com"}}
    assert copy.response.headers["x-customer-email"] == "j***@example.com"
    assert copy.response.headers["set-cookie"] == "[credential removed by holdgate]"
    assert copy.metadata["holdgate"]["identity"]["user"] == "carol@corp.example"  # the subject


def test_a_streamed_body_is_recorded_as_sent_with_its_length() -> None:
    flow = tflow.tflow(resp=True)
    flow.response.headers["content-length"] = "999"
    flow.response.headers["content-type"] = "text/event-stream"
    streamed = b"data: jane@example.com\n\n"
    (copy,) = read_back(recorded_state(flow.get_state(), redaction(streamed=streamed)))
    assert copy.response.content == b"data: j***@example.com\n\n"
    assert copy.response.headers["content-length"] == str(len(copy.response.content))


def test_a_streamed_body_is_stored_in_the_response_content_encoding() -> None:
    flow = tflow.tflow(resp=True)
    flow.response.headers["content-encoding"] = "gzip"
    (copy,) = read_back(recorded_state(flow.get_state(), redaction(streamed=b"masked body")))
    assert gzip.decompress(copy.response.raw_content) == b"masked body"
    assert copy.response.content == b"masked body"


def test_an_unknown_content_encoding_is_dropped_rather_than_mislabelled() -> None:
    flow = tflow.tflow(resp=True)
    flow.response.headers["content-encoding"] = "x-unknown"
    flow.response.headers["transfer-encoding"] = "chunked"
    (copy,) = read_back(recorded_state(flow.get_state(), redaction(streamed=b"masked body")))
    assert "content-encoding" not in copy.response.headers
    assert copy.response.headers["content-length"] == "7"  # chunked: left as it was
    assert copy.response.raw_content == b"masked body"


def test_writer_appends_per_session_and_recreates_a_removed_folder(tmp_path) -> None:
    folder = tmp_path / "rec"
    writer = RecordingWriter(folder)
    try:
        for session in ("s1", "s1", "../s2"):
            assert writer.submit(session, tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        names = sorted(p.name.split("+")[0] for p in folder.iterdir())
        assert names == [".._s2", "s1"]  # one segment each, closed by the flush
        assert len(flows_of(folder, "s1")) == 2 and len(flows_of(folder, "../s2")) == 1
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        assert writer.submit("s1", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        assert len(flows_of(folder, "s1")) == 1
        assert writer.healthy and writer.lost == 0
    finally:
        writer.close()


def test_a_folder_that_cannot_be_written_is_reported_and_counted(tmp_path) -> None:
    blocker = tmp_path / "rec"
    blocker.write_text("a file where the folder should be")
    writer = RecordingWriter(blocker)
    try:
        assert writer.submit("s1", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        assert not writer.healthy
        assert writer.lost == 1
        assert "s1" in (writer.last_error or "") and "NotADirectoryError" in writer.last_error
        blocker.unlink()  # the operator fixes it: the next flow is written
        assert writer.submit("s1", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        assert writer.healthy and len(flows_of(blocker, "s1")) == 1
        assert writer.failed == 1 and writer.lost == 1
    finally:
        writer.close()


def test_the_writer_process_stops_on_close_and_refuses_afterwards(tmp_path) -> None:
    writer = RecordingWriter(tmp_path / "rec")
    process = writer._process
    assert process.poll() is None
    writer.close()
    assert process.returncode == 0
    assert not writer.submit("s1", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
    assert writer.lost == 1 and not writer.flush()


def test_the_writer_process_ends_when_the_gateway_dies_without_closing(tmp_path) -> None:
    script = (
        "import os, sys\n"
        "from holdgate.recording.flowfiles import RecordingWriter\n"
        f"writer = RecordingWriter({str(tmp_path / 'rec')!r})\n"
        "print(writer._process.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ADDONS)},
    )
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and running(child):
        time.sleep(0.1)
    assert not running(child)


def running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_flow_that_cannot_be_handed_over_is_lost_alone(tmp_path) -> None:
    writer = RecordingWriter(tmp_path / "rec")
    try:
        odd = tflow.tflow(resp=True).get_state()
        odd["metadata"] = {"other-addon": lambda: None}  # not picklable
        assert writer.submit("s1", odd, redaction(), RECORD)
        assert writer.submit("s1", tflow.tflow(resp=True).get_state(), redaction(), RECORD)
        assert writer.flush()
        assert writer.lost == 1 and "cannot hand a flow over" in (writer.last_error or "")
        assert len(flows_of(tmp_path / "rec", "s1")) == 1
        assert writer.failed == 0  # it never reached the process
    finally:
        writer.close()


def test_a_body_left_out_is_counted_and_logged(tmp_path, caplog) -> None:
    writer = RecordingWriter(tmp_path / "rec")
    try:
        flow = tflow.tflow(resp=tflow.tresp(content=b"\xff\xfe binary"))
        assert writer.submit("s1", flow.get_state(), redaction(), RECORD)
        assert writer.flush()
        deadline = time.monotonic() + 5
        while writer.bodies_left_out == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the reply is read by another thread
        assert writer.bodies_left_out == 1 and writer.healthy
        assert "left out of a flow file: s1: response body: not UTF-8 text" in caplog.text
    finally:
        writer.close()


def test_the_process_writes_nothing_before_it_has_the_masking(tmp_path) -> None:
    frames = io.BytesIO()
    item = ("s1", tflow.tflow(resp=True).get_state(), redaction())
    frame = pickle.dumps(item)
    frames.write(struct.pack(">I", len(frame)) + frame)
    frames.seek(0)
    replies = io.StringIO()
    serve(tmp_path, frames, replies)
    assert not list(tmp_path.iterdir())
    assert replies.getvalue().startswith(
        "failed 1\tLookupError\ts1\tLookupError: no masking for the record"
    )
