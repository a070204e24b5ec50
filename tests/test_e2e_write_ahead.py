"""Write-ahead decisions, end to end: a gateway killed (SIGKILL, its whole process group) at
random moments during traffic to a slow upstream leaves no call the upstream received
without its decision row, and the chain verifies after every crash.

The gateway runs in a process group of its own, started here, so the kill reaches it and
every child it started (and nothing else). Each call carries a unique argument value no
detector masks, so the store's masked arguments still name the call.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from helpers.configs import ALICE, identity
from helpers.processes import (
    free_port,
    gateway_command,
    holdgate_cli,
    wait_for_port,
    wait_for_started,
)
from helpers.upstreams import FakeUpstream, Reply, Request, json_reply

TOOL_TIME = 0.2  # each tool call takes this long at the upstream
CONCURRENCY = 16
KILLS = 4
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: slow
    url: {url}
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
"""
)


class SlowUpstream:
    """Logs every JSON-RPC call as it arrives (before answering it, slowly)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def answer(self, request: Request) -> Reply:
        body = request.json()
        messages = body if isinstance(body, list) else [body]
        with self._lock:
            for message in messages:
                if isinstance(message, dict) and message.get("method") == "tools/call":
                    self.calls.append(message["params"]["arguments"]["call"])
        time.sleep(TOOL_TIME)
        first = messages[0] if messages and isinstance(messages[0], dict) else {}
        return json_reply({"jsonrpc": "2.0", "id": first.get("id"), "result": {"content": []}})


def start_gateway_group(
    tmp: Path, upstream_url: str, port: int, round_: int
) -> subprocess.Popen[bytes]:
    """A real gateway on `port` (the same store every time), leader of its own group,
    once its start-up is over (mitmproxy listens before that: a kill then would find no
    store, and nothing forwarded)."""
    config = tmp / "holdgate.yaml"
    config.write_text(CONFIG.format(url=upstream_url))
    cmd = gateway_command("--set", "flow_detail=0", "--mode", f"reverse:{upstream_url}")
    cmd += ["--listen-host", "127.0.0.1", "--listen-port", str(port)]
    for key, value in {
        "holdgate_config": str(config),
        "holdgate_store": str(tmp / "audit.sqlite3"),
        "holdgate_recordings": "",
        "holdgate_admin": "",
    }.items():
        cmd += ["--set", f"{key}={value}"]
    log = tmp / f"mitmdump.{round_}.out"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True
        )
    wait_for_port(port, proc, log)
    wait_for_started(proc, log)
    return proc


def client(port: int, name: str, stop: threading.Event, sent: list[str]) -> None:
    """Calls one after another until told to stop; the gateway dying is expected."""
    n = 0
    while not stop.is_set():
        n += 1
        value = f"wal-{name}-{n:05d}"
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": n,
                "method": "tools/call",
                "params": {"name": "lookup", "arguments": {"call": value}},
            }
        )
        sent.append(value)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request(
                "POST",
                "/mcp",
                body,
                {"Content-Type": "application/json", "Accept": "application/json", **ALICE},
            )
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):  # killed under us, or not up yet
            time.sleep(0.02)
        finally:
            conn.close()


def recorded_calls(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT args_masked FROM events WHERE direction = 'request' AND decision = 'allow'"
        ).fetchall()
    return {json.loads(args)["call"] for (args,) in rows if args}


def test_no_call_reaches_the_upstream_without_its_decision_row_across_kills(tmp_path):
    rng = random.Random(os.environ.get("WAL_SEED", "15"))
    upstream = SlowUpstream()
    port = free_port()
    sent: list[str] = []
    kills = 0
    with FakeUpstream(upstream.answer) as server:
        for round_ in range(KILLS):
            proc = start_gateway_group(tmp_path, server.url, port, round_)
            pgid = os.getpgid(proc.pid)
            assert pgid == proc.pid  # ours alone: the kill reaches nothing else
            stop = threading.Event()
            clients = [
                threading.Thread(target=client, args=(port, f"{round_}.{i}", stop, sent))
                for i in range(CONCURRENCY)
            ]
            for thread in clients:
                thread.start()
            time.sleep(rng.uniform(0.6, 1.6))
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            stop.set()
            for thread in clients:
                thread.join(timeout=10)
            verified = holdgate_cli("verify", "--db", str(tmp_path / "audit.sqlite3"))
            assert verified.returncode == 0, verified.stdout + verified.stderr
        time.sleep(TOOL_TIME * 2)  # calls still at the upstream when the gateway died
    received = set(upstream.calls)
    missing = sorted(received - recorded_calls(tmp_path / "audit.sqlite3"))
    print(f"kills: {kills}, calls sent: {len(sent)}, received upstream: {len(received)}")
    print(f"received without a decision row: {len(missing)}")
    assert kills == KILLS and len(received) > KILLS * CONCURRENCY
    assert missing == [], f"{len(missing)} calls reached the upstream unrecorded: {missing[:5]}"
