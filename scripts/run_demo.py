"""`make run`: the demo MCP server behind the gateway, until Ctrl-C.

Starts scripts/demo_server.py on 127.0.0.1:9000 and `mitmdump -s addons/gateway.py` in
reverse mode on 127.0.0.1:8080 with policies/default.yaml, prints how to connect, and
stops both on Ctrl-C (or when either exits).
"""

from __future__ import annotations

import argparse
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


def wait_for(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}; see its output above")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start listening on 127.0.0.1:{port} within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream-port", type=int, default=9000)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--config", default=str(ROOT / "policies" / "default.yaml"))
    parser.add_argument("--web", action="store_true", help="use mitmweb instead of mitmdump")
    args = parser.parse_args()

    env = {**os.environ}
    env.setdefault("DEMO_UPSTREAM_TOKEN", "demo-upstream-" + secrets.token_hex(8))
    demo_cmd = [sys.executable, str(ROOT / "scripts" / "demo_server.py")]
    demo_cmd += ["--host", "127.0.0.1", "--port", str(args.upstream_port)]
    demo_cmd += ["--expect-token", env["DEMO_UPSTREAM_TOKEN"]]
    tool = "mitmweb" if args.web else "mitmdump"
    gateway_cmd = [str(BIN / tool), "-s", str(ROOT / "addons" / "gateway.py")]
    gateway_cmd += ["--mode", f"reverse:http://127.0.0.1:{args.upstream_port}"]
    gateway_cmd += ["--listen-host", "127.0.0.1", "--listen-port", str(args.port)]
    gateway_cmd += ["--set", f"holdgate_config={args.config}"]

    demo = subprocess.Popen(demo_cmd, env=env)
    procs = [demo]
    try:
        wait_for(args.upstream_port, demo, "the demo MCP server")
        gateway = subprocess.Popen(gateway_cmd, env=env)
        procs.append(gateway)
        wait_for(args.port, gateway, "the gateway")
        print(
            f"""
Holdgate is running.
  MCP endpoint (Streamable HTTP): http://127.0.0.1:{args.port}/mcp
  Send a demo API key as a header, e.g.  X-API-Key: demo-alice-support
  (others: demo-dana-dba, demo-carol-compliance, demo-bob-engineer)
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
