"""Benchmark: what the gateway costs on top of plain mitmproxy.

    .venv/bin/python scripts/bench.py [--quick] [--scenario NAME ...]

Scenarios (all on loopback, processes started and stopped here):
  proxy     tools/call through: direct, plain mitmdump, mitmdump + gateway (API-key
            identity, ~50 rules, masking and recorder on), at concurrency 1, 16, 64,
            interleaved round by round; requests/s, p50/p99 and proxy CPU per request
  masking   in-process mask_json MB/s on 1 MB and 10 MB tool results
  policy    decision time for 10, 100 and 1,000 tool-name and argument rules
Prints a table and writes bench-results/<time>.json for comparison across commits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "addons"))

from holdgate.configfile import parse_yaml  # noqa: E402
from holdgate.jsonrpc import parse_body  # noqa: E402
from holdgate.masking import mask_json, parse_masking  # noqa: E402
from holdgate.rules import parse_rules  # noqa: E402

RESULT = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {
        "content": [
            {"type": "text", "text": '{"name": "Ada", "email": "ada@example.com", "plan": "pro"}'}
        ]
    },
}
API_KEY = "bench-key-1"


class FastUpstream(BaseHTTPRequestHandler):
    """A raw JSON-RPC responder that does almost nothing, so the proxies' cost shows."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps(RESULT).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_config(upstream: str) -> str:
    import hashlib

    rules = "\n".join(
        f"  - name: rule {i}\n    match: {{groups: [team{i}], tool: [tool_{i}_*]}}\n"
        "    action: allow"
        for i in range(48)
    )
    return f"""version: 1
identity:
  api_keys:
    - name: bench
      sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}
      groups: [bench]
upstreams:
  - name: fast
    url: {upstream}
rules:
{rules}
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
  - name: bench calls
    match: {{groups: [bench], tool: get_customer}}
    action: allow
masking:
  - name: pii
    detectors: [email, phone, credit_card, iban, us_ssn]
    strategy: partial
  - name: secrets
    detectors: [aws_access_key, github_token, jwt, private_key, generic_secret]
    strategy: redact
"""


def start_proxy(tmp: Path, upstream: str, with_gateway: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [str(BIN / "mitmdump"), "-q", "--mode", f"reverse:{upstream}"]
    cmd += ["--listen-host", "127.0.0.1", "--listen-port", str(port)]
    if with_gateway:
        config = tmp / "bench.yaml"
        config.write_text(gateway_config(upstream))
        cmd += ["-s", str(ROOT / "addons" / "gateway.py"), "--set", f"holdgate_config={config}"]
        cmd += ["--set", f"holdgate_db={tmp / 'bench.sqlite3'}", "--set", "holdgate_admin="]
        cmd += ["--set", f"holdgate_recordings={tmp / 'rec'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("proxy did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port: int, concurrency: int, count: int, budget: float) -> dict:
    """POST tools/call with keep-alive connections; bounded by count and by time."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_customer", "arguments": {"customer_id": 1}},
        }
    )
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-API-Key": API_KEY,
        "MCP-Protocol-Version": "2025-06-18",
    }
    per_worker = max(1, count // concurrency)
    deadline = time.monotonic() + budget

    def worker(_: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out = []
        for _ in range(per_worker):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            conn.request("POST", "/mcp", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            out.append(time.perf_counter() - start)
        conn.close()
        return out

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for part in pool.map(worker, range(concurrency)) for x in part]
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def scenario_proxy(quick: bool) -> dict:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FastUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        plain, plain_port = start_proxy(tmp, upstream, with_gateway=False)
        gateway, gateway_port = start_proxy(tmp, upstream, with_gateway=True)
        targets = {
            "direct": (None, server.server_address[1]),
            "mitmdump": (plain, plain_port),
            "gateway": (gateway, gateway_port),
        }
        try:
            for concurrency in (1, 16, 64):
                count = (200 if quick else 2000) * (1 if concurrency == 1 else 2)
                rounds = 1 if quick else 3
                for _proc, port in targets.values():
                    drive(port, concurrency, 50, 5)  # warm-up
                for _ in range(rounds):  # interleaved to cancel machine noise
                    for name, (proc, port) in targets.items():
                        before = cpu_seconds(proc.pid) if proc else 0.0
                        run = drive(port, concurrency, count, 60)
                        run["cpu_ms_per_request"] = (
                            1000 * (cpu_seconds(proc.pid) - before) / run["requests"]
                            if proc
                            else None
                        )
                        results.setdefault(f"c{concurrency}", {}).setdefault(name, []).append(run)
        finally:
            for proc in (plain, gateway):
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=15)
            server.shutdown()
    summary = {}
    for level, by_target in results.items():
        summary[level] = {
            name: {
                k: statistics.median([r[k] for r in runs]) if runs[0][k] is not None else None
                for k in runs[0]
            }
            for name, runs in by_target.items()
        }
        summary[level]["ratio_rps_gateway_vs_mitmdump"] = (
            summary[level]["gateway"]["rps"] / summary[level]["mitmdump"]["rps"]
        )
        summary[level]["added_p50_ms"] = (
            summary[level]["gateway"]["p50_ms"] - summary[level]["mitmdump"]["p50_ms"]
        )
    return summary


def tool_result(size: int) -> dict:
    record = {
        "id": 1,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0958",
        "card": "4111 1111 1111 1111",
        "note": "customer since 2019, prefers e-mail contact; " * 2,
    }
    records = []
    while len(json.dumps(records)) < size:
        records.append(record)
    return {"content": [{"type": "text", "text": json.dumps(records)}]}


def scenario_masking(quick: bool) -> dict:
    doc = parse_yaml(
        "masking:\n  - name: pii\n    detectors: [email, phone, credit_card, iban, us_ssn]\n"
        "    strategy: partial\n  - name: secrets\n    detectors: [aws_access_key, github_token,"
        " jwt, private_key, generic_secret]\n    strategy: redact\n",
        "bench",
    )
    policy = parse_masking(doc.root.child("masking"), doc.root.child("detectors"))
    effect = policy.profiles_for("x", "t", ())
    out = {}
    for mb in (1, 10):
        value = tool_result(mb * 1_000_000)
        size = len(json.dumps(value))
        start = time.perf_counter()
        mask_json(value, effect)
        out[f"{mb}MB_json_MBps"] = size / 1e6 / (time.perf_counter() - start)
    return out


def scenario_policy(quick: bool) -> dict:
    out = {}
    call = parse_body(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "target_tool", "arguments": {"q": "x"}},
            }
        ).encode(),
        max_bytes=1 << 20,
    ).messages[0]

    class Caller:
        user, groups, method = "u", ("g",), "api_key"

    for kind in ("tool", "args"):
        for n in (10, 100, 1000):
            if kind == "tool":
                rules = "".join(
                    f"  - name: r{i}\n    match: {{tool: tool_{i}}}\n    action: allow\n"
                    for i in range(n)
                )
            else:
                rules = "".join(
                    f"  - name: r{i}\n    match: {{args: {{'$.q': {{equals: v{i}}}}}}}"
                    "\n    action: allow\n"
                    for i in range(n)
                )
            policy = parse_rules(parse_yaml("rules:\n" + rules, "b").root.child("rules"))
            repeats = 200 if quick else 2000
            start = time.perf_counter()
            for _ in range(repeats):
                policy.evaluate(Caller(), "up", call)
            out[f"{kind}_rules_{n}_us"] = 1e6 * (time.perf_counter() - start) / repeats
    return out


SCENARIOS = {"proxy": scenario_proxy, "masking": scenario_masking, "policy": scenario_policy}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "cpu": _cpu_model(),
        },
    }
    for name in args.scenario or list(SCENARIOS):
        report[name] = SCENARIOS[name](args.quick)
        print(f"== {name}")
        print(json.dumps(report[name], indent=2, default=lambda v: round(v, 3)))
    folder = ROOT / "bench-results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{report['when'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written to {path}")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
