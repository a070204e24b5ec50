"""A stream's notifications recorded per time slice, through a real mitmdump: the rows in
order (slices, then the answer, then the outcome), every event findable by its number with
`holdgate sessions event`, masked values in none of them, and any event changed inside a
slice row caught by `holdgate verify`."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from typing import Any

import httpx
from click.testing import CliRunner

from helpers.configs import ALICE, identity
from helpers.processes import stop
from helpers.raw_upstreams import RawUpstream, reset
from helpers.upstreams import Reply, Request, sse_reply
from holdgate.cli.main import main
from holdgate.store.event_slices import SLICE_EVENTS, recorded_messages

TOKEN = "sse-slices-upstream-token-77f0"
EMAIL = "mary.jackson@example.com"
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: crm
    url: {url}
    inject:
      headers: {{Authorization: "Bearer """
    + TOKEN
    + """"}}
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
"""
)
COUNT = SLICE_EVENTS * 2 + 100


def progress(i: int, text: str = "") -> dict[str, Any]:
    params = {"progressToken": "job", "progress": i, "message": text or f"step {i}"}
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


def call(msg_id: int = 7) -> dict[str, Any]:
    params = {"name": "export", "arguments": {"all": True}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


def streamed(gw, msg_id: int = 7) -> list[dict[str, Any]]:
    with httpx.Client(timeout=60) as client:
        response = client.post(
            gw.url + "/mcp",
            json=call(msg_id),
            headers={**ALICE, "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 200, response.text[:300]
    return [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]


def rows_of(gw) -> list[dict[str, Any]]:
    """The stream's rows, once the gateway stopped (its writer flushed)."""
    stop(gw.proc)
    with sqlite3.connect(gw.db) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM events WHERE direction != 'request' ORDER BY seq")
        return [dict(r) for r in rows]


def test_a_long_stream_is_recorded_in_slices_each_event_findable_and_chained(
    fake_upstream, gateway_factory
):
    messages = [progress(i, f"mail {EMAIL}" if i == 41 else "") for i in range(COUNT)]
    messages[77] = progress(77, f"echo Bearer {TOKEN}")  # reflected: never on record
    final = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "ok"}]}}

    def answer(request: Request) -> Reply:
        return sse_reply([*messages, final], framing="chunked")

    upstream = fake_upstream(answer)
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    got = streamed(gw)
    assert len(got) == COUNT + 1 and got[-1]["id"] == 7
    assert EMAIL not in json.dumps(got) and TOKEN not in json.dumps(got)
    rows = rows_of(gw)
    kinds = [r["direction"] for r in rows]
    slices = kinds.count("server_notification")
    assert 3 <= slices <= COUNT // 2 and kinds == ["server_notification"] * slices + [
        "response",
        "outcome",
    ]
    recorded = [m for r in rows[:-1] for m in recorded_messages(r)]
    assert [m.n for m in recorded] == list(range(1, COUNT + 2))  # each once, in order
    assert EMAIL not in json.dumps(rows) and TOKEN not in json.dumps(rows)
    assert recorded[41].masked == {"email": 1}
    assert sum(json.loads(r["masked"] or "{}").get("email", 0) for r in rows[:-2]) == 1

    runner = CliRunner()
    db = ["--db", str(gw.db)]
    session = rows[0]["session_id"]
    shown = runner.invoke(main, ["sessions", "show", session, *db], catch_exceptions=False)
    assert f"events #1-#{len(json.loads(rows[0]['extra'])['events'])}" in shown.output
    one = runner.invoke(main, ["sessions", "event", session, "42", *db], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    assert "message #42" in one.output and "[REDACTED:email]" in one.output
    assert "masked email=1" in one.output and EMAIL not in one.output
    last = runner.invoke(main, ["sessions", "event", session[:12], str(COUNT + 1), *db])
    assert last.exit_code == 0 and '"id": 7' in last.output and "response" in last.output
    missing = runner.invoke(main, ["sessions", "event", session, str(COUNT + 5), *db])
    assert missing.exit_code == 1 and f"no stream message #{COUNT + 5}" in missing.output

    # The export and its SQLite file carry each slice row whole: its events and messages.
    exported = runner.invoke(main, ["export", *db], catch_exceptions=False)
    lines = [json.loads(line) for line in exported.output.splitlines()]
    batches = [line for line in lines if line["direction"] == "server_notification"]
    assert [len(b["extra"]["events"]) for b in batches] == [len(b["args_masked"]) for b in batches]
    assert sum(len(b["args_masked"]) for b in batches) == COUNT
    copy = gw.db.parent / "export.sqlite3"
    runner.invoke(main, ["export", *db, "--format", "sqlite", "-o", str(copy)])
    with sqlite3.connect(copy) as conn:
        texts = conn.execute(
            "SELECT args_masked FROM events WHERE direction = 'server_notification'"
        ).fetchall()
    assert sum(len(json.loads(text)) for (text,) in texts) == COUNT

    ok = runner.invoke(main, ["verify", *db], catch_exceptions=False)
    assert ok.exit_code == 0 and "hash chain intact" in ok.output
    seq = recorded[600].seq  # one event deep inside a slice (the slices end by count or time)
    with sqlite3.connect(gw.db) as conn:
        changed = conn.execute(
            "UPDATE events SET args_masked = replace(args_masked, '\"step 600\"', '\"step 6\"')"
            " WHERE seq = ?",
            [seq],
        ).rowcount
    assert changed == 1
    broken = runner.invoke(main, ["verify", *db])
    assert broken.exit_code == 1 and f"events seq {seq}" in broken.output


def test_a_quiet_stream_writes_its_slice_at_the_time_limit(fake_upstream, gateway_factory):
    final = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}

    def answer(request: Request) -> Reply:  # 0.6 s between events: a slice each
        return sse_reply([progress(0), progress(1), final], pause=0.6, framing="chunked")

    upstream = fake_upstream(answer)
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    assert len(streamed(gw)) == 3
    rows = rows_of(gw)
    assert [(r["direction"], [m.n for m in recorded_messages(r)]) for r in rows[:3]] == [
        ("server_notification", [1]),
        ("server_notification", [2]),
        ("response", [3]),
    ]
    # each written when its time was up, not when the stream ended
    first, second = (json.loads(r["extra"])["events"][0] for r in rows[:2])
    assert first["t"] == second["t"] == 0.0


def test_a_stream_cut_mid_slice_still_has_its_slice_on_record(gateway_factory):
    def events_then_reset(conn: socket.socket, request: bytes) -> None:
        data = b"".join(
            f"event: message\ndata: {json.dumps(progress(i))}\n\n".encode() for i in range(3)
        )
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(data):x}\r\n".encode() + data + b"\r\n"
        )
        time.sleep(0.1)  # within the slice's time
        reset(conn)

    with RawUpstream(events_then_reset) as upstream:
        gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
        got = streamed(gw, msg_id=11)
    assert [m.get("method") for m in got[:3]] == ["notifications/progress"] * 3
    assert got[-1]["id"] == 11 and "error" in got[-1]
    rows = rows_of(gw)
    assert [r["direction"] for r in rows] == ["server_notification", "outcome"]
    assert [m.n for m in recorded_messages(rows[0])] == [1, 2, 3]
    assert json.loads(rows[1]["extra"])["refused"]["kind"] == "upstream-failed"
