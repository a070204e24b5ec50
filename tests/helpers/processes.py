"""Subprocesses for end-to-end tests: the demo MCP server and a real gateway.

Every process is started on a free loopback port and stopped, by its pid, by whoever
started it (the fixtures in conftest.py); nothing else is touched.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from holdgate.addons.config_loader import STARTED

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MITMDUMP = str(BIN / "mitmdump")
HOLDGATE = str(BIN / "holdgate")
GATEWAY_SCRIPT = str(ROOT / "addons" / "gateway.py")
STARTUP_TIMEOUT = 30.0
# How often an in-process test server's serve_forever looks for shutdown(): socketserver's
# default (0.5 s) is otherwise waited out, half of it on average, at every stop.
SERVER_POLL = 0.05


# A lock file per port handed out, in a folder every test process on the host shares.
PORT_LOCKS = Path(tempfile.gettempdir()) / "holdgate-test-ports"
PORT_RESERVED_FOR = 2 * STARTUP_TIMEOUT  # long enough for whatever was given it to bind it
_reserved: list[tuple[float, int]] = []  # (when, the lock's file descriptor)


def free_port() -> int:
    """A loopback port nothing listens on, and no other test process is handed for a while.

    The kernel picks a free one (bind to port 0); an exclusive lock on PORT_LOCKS/PORT,
    held by this process for PORT_RESERVED_FOR seconds, keeps every other `free_port` on
    the host (pytest-xdist workers, another checkout's run) from handing out the same port
    in the moment between this answer and the bind of the server it is meant for.
    """
    now = time.monotonic()
    while _reserved and now - _reserved[0][0] > PORT_RESERVED_FOR:
        os.close(_reserved.pop(0)[1])
    PORT_LOCKS.mkdir(mode=0o1777, exist_ok=True)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        lock = os.open(PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another test process has just been given it
            os.close(lock)
            continue
        _reserved.append((now, lock))
        return port
    raise RuntimeError(f"no free loopback port that is not reserved in {PORT_LOCKS}")


def wait_for_started(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the gateway says mitmproxy's start-up is over: mitmproxy exits on an error
    logged before then, so a test whose first request is meant to fail waits for this."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if STARTED in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"no start-up line after {STARTUP_TIMEOUT}s:\n{log.read_text()}")


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
    """Stop a process this test run started (SIGINT, so mitmdump flushes; then kill)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


_stopping: list[threading.Thread] = []


def stop_soon(proc: subprocess.Popen[bytes]) -> None:
    """`stop` in a thread, for a fixture's teardown: the next test starts while a gateway
    drains (its writers, its recordings process) instead of after. `wait_for_stops` joins
    them; the session does at its end."""
    thread = threading.Thread(target=stop, args=(proc,), name=f"stop-{proc.pid}")
    thread.start()
    _stopping.append(thread)


def wait_for_stops() -> None:
    """Wait until every process handed to `stop_soon` has stopped."""
    while _stopping:
        _stopping.pop().join()


def holdgate_cli(
    *args: str, cwd: Path | None = None, env_store: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed `holdgate` command, as an operator runs it (`env_store`: the store in
    $HOLDGATE_STORE instead of an option)."""
    env = {**os.environ, "HOLDGATE_STORE": env_store} if env_store else None
    return subprocess.run(
        [HOLDGATE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )


@dataclass
class DemoServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    transport: str = "streamable-http"
    since: int = 0  # where this test's part of the log starts (a server shared by a module)
    db: Path | None = None  # its customer database

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Every HTTP request the server received (since `since`), as logged by the demo
        server."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as log:
            log.seek(self.since)
            text = log.read().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def received_bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests() if r.get("body")]

    def messages(self) -> list[dict[str, Any]]:
        """Every JSON-RPC message the server received, batches flattened."""
        out: list[Any] = []
        for body in self.received_bodies():
            out.extend(body if isinstance(body, list) else [body])
        return [m for m in out if isinstance(m, dict)]

    def calls_to(self, tool: str) -> list[dict[str, Any]]:
        """The arguments of every `tools/call` of `tool` that reached the server."""
        return [
            m["params"].get("arguments", {})
            for m in self.messages()
            if m.get("method") == "tools/call" and m.get("params", {}).get("name") == tool
        ]


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
    return DemoServer(port, log, proc, transport, db=tmp / "demo.sqlite3")


class SharedDemo:
    """One demo server for the tests of a module, each shown only the requests it made (the
    log from where it stood when the test began). A test may stop it (an upstream outage):
    the next test gets a new one. Its data is shared, so a module whose tests change the
    demo's data sets `DEMO_PER_TEST = True` (see conftest.py's `demo`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server: DemoServer | None = None

    def for_a_test(self, tmp: Path) -> DemoServer:
        """The server, for a test whose folder is `tmp`: its database is linked there as
        `demo.sqlite3`, where a demo of the test's own would keep it."""
        if self.server is None or self.server.proc.poll() is not None:
            self.server = start_demo(self.folder)
        if self.server.db is not None:
            (tmp / "demo.sqlite3").symlink_to(self.server.db)
        log = self.server.log
        return replace(self.server, since=log.stat().st_size if log.exists() else 0)

    def stop(self) -> None:
        if self.server is not None:
            stop_soon(self.server.proc)


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen[bytes]
    config: Path
    db: Path
    recordings: Path
    output: Path
    cwd: Path
    options: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        """HOST:PORT of the approvals API (empty when disabled)."""
        return self.options.get("holdgate_admin", "")

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")


def gateway_command(*args: str, script: str = GATEWAY_SCRIPT, tool: str = MITMDUMP) -> list[str]:
    """`mitmdump -s addons/gateway.py ARGS` by absolute paths, to run from any folder."""
    return [tool, "-s", script, *args]


def start_gateway(
    tmp: Path,
    config_text: str,
    upstream_url: str,
    *,
    options: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    mode: str | None = None,
    extra_scripts: list[str] | None = None,
    wait_started: bool = True,
    listen_in_mode: bool = False,
) -> Gateway:
    """A real gateway, started with `tmp` as its working folder (not the checkout); with
    `wait_started`, returned once it says mitmproxy's start-up is over. `listen_in_mode`:
    its address given in the mode spec (`reverse:URL@127.0.0.1:PORT`), not as options."""
    port = free_port()
    config = tmp / "holdgate.yaml"
    config.write_text(textwrap.dedent(config_text))
    db = tmp / "audit.sqlite3"
    recordings = tmp / "recordings"
    output = tmp / f"mitmdump-{port}.out"
    opts = {
        "holdgate_config": str(config),
        "holdgate_store": str(db),
        "holdgate_recordings": str(recordings),
        "holdgate_admin": "",
        **(options or {}),
    }
    cmd = gateway_command("--set", "flow_detail=0")
    for script in extra_scripts or []:
        cmd += ["-s", script]
    spec = mode or f"reverse:{upstream_url}"
    if listen_in_mode:
        cmd += ["--mode", f"{spec}@127.0.0.1:{port}"]
    else:
        cmd += ["--mode", spec, "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    cmd += ["--set", "termlog_verbosity=info"]
    for key, value in opts.items():
        cmd += ["--set", f"{key}={value}"]
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    wait_for_port(port, proc, output)
    if wait_started:
        wait_for_started(proc, output)
    return Gateway(port, proc, config, db, recordings, output, tmp, opts)
