"""Peers on the official MCP SDK 1.x (its experimental tasks), run from `.venv-mcp1`.

The SDK 1.x cannot live in the test venv (SDK 2.x), so its server
(scripts/tasks_server_mcp1.py) and client (scripts/tasks_client_mcp1.py) run as
subprocesses of that venv's python, which `make test` builds.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.processes import ROOT, free_port, wait_for_port

MCP1_PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
SERVER = ROOT / "scripts" / "tasks_server_mcp1.py"
CLIENT = ROOT / "scripts" / "tasks_client_mcp1.py"


def mcp1_python() -> str:
    if not MCP1_PYTHON.exists():
        raise RuntimeError(
            f"{MCP1_PYTHON} is missing: build it with `make .venv-mcp1/.installed-stamp` "
            "(`make test` does)"
        )
    return str(MCP1_PYTHON)


@dataclass
class TasksServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[dict[str, Any]]:
        """Every JSON-RPC message the server received (batches flattened)."""
        if not self.log.exists():
            return []
        out: list[Any] = []
        for line in self.log.read_text().splitlines():
            value = json.loads(line)
            out.extend(value if isinstance(value, list) else [value])
        return [m for m in out if isinstance(m, dict)]

    def asked_about(self, task_id: str) -> list[str]:
        """The tasks/* methods the server received naming `task_id`."""
        return [
            m["method"]
            for m in self.received()
            if str(m.get("method", "")).startswith("tasks/")
            and (m.get("params") or {}).get("taskId") == task_id
        ]


def start_tasks_server(tmp: Path) -> TasksServer:
    port = free_port()
    log = tmp / f"tasks-server-{port}.jsonl"
    out = tmp / f"tasks-server-{port}.out"
    cmd = [mcp1_python(), str(SERVER), "--port", str(port), "--log", str(log)]
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, out)
    return TasksServer(port, log, proc)


def client_command(url: str, headers: dict[str, str], action: str, *args: str) -> list[str]:
    cmd = [mcp1_python(), str(CLIENT), url, action, *args]
    for name, value in headers.items():
        cmd += ["--header", f"{name}={value}"]
    return cmd


def run_client(url: str, headers: dict[str, str], action: str, *args: str) -> dict[str, Any]:
    """One action of the SDK 1.x client; its JSON outcome (an SDK error as {"error"})."""
    done = subprocess.run(
        client_command(url, headers, action, *args), capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"the SDK 1.x client failed ({done.returncode}):\n{done.stderr}")
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome
