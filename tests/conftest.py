"""End-to-end harness: a real demo MCP server and a real `mitmdump -s addons/gateway.py`.

Every process is started on a free loopback port and stopped by the fixture that
started it; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MITMDUMP = str(BIN / "mitmdump")
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready after {STARTUP_TIMEOUT}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class DemoServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    transport: str = "streamable-http"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict]:
        """Every HTTP request the server received, as logged by the demo server."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def received_bodies(self) -> list[object]:
        return [json.loads(r["body"]) for r in self.requests() if r.get("body")]


def start_demo(
    tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> DemoServer:
    """The demo server on a free port, or on `port` again (a restarted upstream)."""
    port = port or free_port()
    log = tmp / f"upstream-{port}.jsonl"
    out = tmp / f"upstream-{port}.out"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo_server.py"), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--db", str(tmp / "demo.sqlite3"), "--log", str(log), *args]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    wait_for_port(port, proc, out)
    transport = "sse" if "sse" in args else "streamable-http"
    return DemoServer(port, log, proc, transport)


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen[bytes]
    config: Path
    db: Path
    recordings: Path
    output: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")


def start_gateway(
    tmp: Path,
    config_text: str,
    upstream_url: str,
    *,
    options: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    mode: str | None = None,
    extra_scripts: list[str] | None = None,
) -> Gateway:
    port = free_port()
    config = tmp / "holdgate.yaml"
    config.write_text(textwrap.dedent(config_text))
    db = tmp / "audit.sqlite3"
    recordings = tmp / "recordings"
    output = tmp / f"mitmdump-{port}.out"
    opts = {
        "holdgate_config": str(config),
        "holdgate_db": str(db),
        "holdgate_recordings": str(recordings),
        "holdgate_admin": "",
        **(options or {}),
    }
    cmd = [MITMDUMP, "-s", str(ROOT / "addons" / "gateway.py"), "--set", "flow_detail=0"]
    for script in extra_scripts or []:
        cmd += ["-s", script]
    cmd += ["--mode", mode or f"reverse:{upstream_url}", "--listen-host", "127.0.0.1"]
    cmd += ["--listen-port", str(port), "--set", "termlog_verbosity=info"]
    for key, value in opts.items():
        cmd += ["--set", f"{key}={value}"]
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**os.environ, **(env or {})},
        )
    wait_for_port(port, proc, output)
    return Gateway(port, proc, config, db, recordings, output)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoServer]:
    server = start_demo(tmp_path)
    yield server
    stop(server.proc)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Gateway] = []

    def factory(config_text: str, upstream_url: str, **kwargs: object) -> Gateway:
        gw = start_gateway(tmp_path, config_text, upstream_url, **kwargs)  # type: ignore[arg-type]
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        stop(gw.proc)
