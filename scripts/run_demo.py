"""`make run` / `make web`: the demo MCP server behind the gateway, until Ctrl-C.

Starts scripts/demo_server.py on 127.0.0.1:9000 and `mitmdump -s addons/gateway.py` (or,
with --web, mitmweb) in reverse mode on 127.0.0.1:8080 with policies/default.yaml, prints
how to connect, and stops both on Ctrl-C (or when either exits). Every port it needs is
checked first: a port in use stops it before anything starts, naming the port.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def wait_for(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}; see its output above")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start listening on {HOST}:{port} within 30 s")


def port_problem(port: int, what: str, variable: str) -> str | None:
    """Why `port` cannot be used for `what` (None when it is free); says how to choose
    another through the make variable that sets it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc})"
            return (
                f"port {port} on {HOST} ({what}) {why}: stop what listens there, or choose "
                f"another port, e.g. make run {variable}={port + 10}"
            )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream-port", type=int, default=9000)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=8181)
    parser.add_argument("--web-port", type=int, default=8081, help="mitmweb's UI (with --web)")
    parser.add_argument("--config", default=str(ROOT / "policies" / "default.yaml"))
    parser.add_argument("--web", action="store_true", help="use mitmweb instead of mitmdump")
    args = parser.parse_args()

    ports = [
        (args.upstream_port, "the demo MCP server", "UPSTREAM_PORT"),
        (args.port, "the gateway", "PORT"),
        (args.admin_port, "the approvals API", "ADMIN_PORT"),
    ]
    if args.web:
        ports.append((args.web_port, "mitmweb's UI", "WEB_PORT"))
    for port, what, variable in ports:
        if problem := port_problem(port, what, variable):
            sys.exit(problem)

    env = {**os.environ}
    env.setdefault("DEMO_UPSTREAM_TOKEN", "demo-upstream-" + secrets.token_hex(8))
    demo_cmd = [sys.executable, str(ROOT / "scripts" / "demo_server.py")]
    demo_cmd += ["--host", HOST, "--port", str(args.upstream_port)]
    demo_cmd += ["--expect-token", env["DEMO_UPSTREAM_TOKEN"]]
    tool = "mitmweb" if args.web else "mitmdump"
    gateway_cmd = [str(BIN / tool), "-s", str(ROOT / "addons" / "gateway.py")]
    gateway_cmd += ["--mode", f"reverse:http://{HOST}:{args.upstream_port}"]
    gateway_cmd += ["--listen-host", HOST, "--listen-port", str(args.port)]
    gateway_cmd += ["--set", f"holdgate_config={args.config}"]
    gateway_cmd += ["--set", f"holdgate_admin={HOST}:{args.admin_port}"]
    web = ""
    if args.web:
        password = secrets.token_urlsafe(12)
        gateway_cmd += ["--web-host", HOST, "--web-port", str(args.web_port)]
        gateway_cmd += ["--no-web-open-browser", "--set", f"web_password={password}"]
        web = f"\n  mitmweb: http://{HOST}:{args.web_port}/?token={password}"

    demo = subprocess.Popen(demo_cmd, env=env)
    procs = [demo]
    try:
        wait_for(args.upstream_port, demo, "the demo MCP server")
        gateway = subprocess.Popen(gateway_cmd, env=env)
        procs.append(gateway)
        wait_for(args.port, gateway, "the gateway")
        if args.web:
            wait_for(args.web_port, gateway, "mitmweb")
        print(
            f"""
Holdgate is running.
  MCP endpoint (Streamable HTTP): http://{HOST}:{args.port}/mcp{web}
  Send a demo API key as a header, e.g.  X-API-Key: demo-alice-support
  (others: demo-dana-dba, demo-carol-compliance, demo-bob-engineer)
  Approvals API: http://{HOST}:{args.admin_port}/approvals
  Audit store: holdgate.sqlite3   Recordings: recordings/
  Try:  .venv/bin/python scripts/demo_client.py --key demo-alice-support
Press Ctrl-C to stop.
""",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
