"""Benchmark: what the gateway costs on top of plain mitmproxy.

    .venv/bin/python scripts/bench.py [--quick] [--scenario NAME ...]     (or: make bench)
    .venv/bin/python scripts/bench.py --scenario proxy --against REV     (before/after a change)
    .venv/bin/python scripts/bench.py --scenario policy --pure-vs-compiled   (mypyc: #31)

Scenarios (all on loopback; every process is started and stopped here):
  proxy    tools/call through: direct to the upstream, plain mitmdump, and mitmdump + gateway
           (JWT identity, ~50 rules, masking and recorder on), at concurrency 1, 16 and 64,
           interleaved round by round; requests/s, p50/p99, proxy CPU per request
  mix      the same three ways at concurrency 16 to the demo server (official MCP SDK), cycling
           tools/list, get_customer (PII, masked), search_customers and a SQL read
  sse      one tools/call answered by a 100 MB stream of 100k SSE events (1,000/s, or
           --sse-rate): gateway RSS growth, per-event latency and gateway CPU per event,
           against plain mitmdump (streaming) and direct
  audit    sustained calls at concurrency 16: rows/s the audit store keeps up with, and the
           writer's deepest queue (bounded, 10,000)
  writeahead  the cost of write-ahead decisions: the gateway with `audit: required` (each
           call's decision committed before it is forwarded) against `audit: best_effort`
           (rows queued, never awaited) and plain mitmdump, c1 p50 and c16 req/s,
           interleaved round by round
  holds    normal traffic at concurrency 16 with and without 200 held approvals open
  chain    the hash chain's sustained rows/s with 1, 2 and 4 writer processes, each with a
           store of its own appending 100-row batches as the audit writer does: on
           PostgreSQL (one chain for all replicas, fsync on) and on SQLite for comparison
  replicas one gateway against two behind HAProxy, both on one PostgreSQL store: c16 req/s
           and p50, interleaved round by round (only with --scenario replicas: it needs
           HAProxy, `scripts/system-deps.sh --bench`)
  metrics  a scrape of /metrics after traffic (µs per scrape, series), and c16 req/s with
           and without a scraper hitting it every second, interleaved round by round
  tracing  c16 req/s, p50 and CPU per request with tracing off and on (every span exported
           over OTLP/HTTP to a local sink that accepts them), interleaved round by round
  shadow   the shadow policy's cost: c16 req/s, p50 and CPU per request with no candidate,
           candidates with 10 more tool-name rules, 10 or 100 more argument rules, and one
           that differs on every call, interleaved round by round; the candidate's own
           decision time per call (in-process) and the calls it evaluated and skipped
  masking  in-process masking MB/s on 1 MB and 10 MB tool results, PII-dense and clean, and
           the per-event cost of masking a stream of 1 KB SSE events
  policy   decision time for 10, 100 and 1,000 tool-name and argument rules
  cli      the CPU `holdgate --help` and `holdgate approvals list` cost to start, best and
           median of fresh processes (scripts/bench_cli.py, which also runs on its own)
  approvals  reads from a SQLite store holding 20,000 approvals: the held calls' sweep of
           10, the pending list, the whole list (scripts/bench_approvals.py; --against REV)
The upstream is scripts/bench_upstream.py in its own process. Prints tables and writes
bench-results/<time>.json so runs can be compared across commits.

CPU per request comes three ways: the proxy with its child processes (what the host pays),
the proxy process alone (all its threads: they share one interpreter lock) and its main
thread alone (mitmproxy's event loop: one core, a replica's ceiling). From the c16 figures a
projection says what N cores would give with one replica per core's worth of loop (printed
as projected: this 2-core machine cannot measure it). The run ends with the targets table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "addons"))
sys.path.insert(0, str(ROOT / "tests"))  # helpers.postgres: the suite's PostgreSQL, reused

import bench_cli  # noqa: E402
import bench_masking  # noqa: E402
from holdgate.config.gateway_config import parse_config_text  # noqa: E402
from holdgate.configfile import parse_yaml  # noqa: E402
from holdgate.masking.masker import StreamMasker  # noqa: E402
from holdgate.policy.rules import Policy, parse_rules  # noqa: E402
from holdgate.protocol.jsonrpc import dumps, loads_strict_text, parse_body  # noqa: E402
from holdgate.protocol.sse import SSEDecoder, SSEEvent, encode_event  # noqa: E402
from holdgate.protocol.verbatim import verbatim  # noqa: E402
from holdgate.store import PostgresStore, SqliteStore, StoreUnavailable, normalize_row  # noqa: E402

ISSUER = "https://bench.invalid/realm"
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "get_customer", "arguments": {"customer_id": 1}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {proc.args}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready after {seconds}s: {proc.args}")


def wait_until_ready(admin_port: int, seconds: float = 60) -> None:
    """Wait for a gateway's `/readyz` on its admin port to answer 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2):
                return
        except OSError:  # not listening yet, or 503 (urllib's HTTPError is an OSError)
            time.sleep(0.1)
    raise RuntimeError(f"the gateway on admin port {admin_port} not ready after {seconds}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def upstream(*args: str) -> Iterator[str]:
    port = free_port()
    script = ROOT / "scripts" / "bench_upstream.py"
    proc = subprocess.Popen([sys.executable, str(script), "--port", str(port), *args])
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


class Signer:
    """An RSA key served to the gateway as a JWKS file, and a token it signs."""

    def __init__(self, tmp: Path) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.jwks = tmp / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [{**public, "kid": "bench", "use": "sig"}]}))
        claims = {
            "iss": ISSUER,
            "aud": "holdgate",
            "sub": "bench-user",
            "groups": ["bench"],
            "exp": int(time.time()) + 3600,
        }
        self.token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})


# The profiles every gateway of the bench masks with (docs/guide.md's masking example, trimmed).
MASKING = """masking:
  - name: pii
    detectors: [email, phone, credit_card, iban, us_ssn]
    strategy: partial
  - name: secrets
    detectors: [aws_access_key, github_token, jwt, private_key, generic_secret]
    strategy: redact
"""


def gateway_config(upstream_url: str, jwks: Path, extra_rules: str = "") -> str:
    rules = "\n".join(
        f"  - name: rule {i}\n    match: {{groups: [team{i}], tool: [tool_{i}_*]}}\n"
        "    action: allow"
        for i in range(48)
    )
    return f"""version: 1
identity:
  oidc:
    - issuer: {ISSUER}
      audience: holdgate
      jwks_file: {jwks}
      algorithms: [RS256]
      groups_claim: groups
upstreams:
  - name: fast
    url: {upstream_url}
rules:
{rules}
{extra_rules}
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
  - name: bench calls
    match: {{groups: [bench], tool: [get_customer, stream_tool]}}
    action: allow
{MASKING}"""


class Proxy:
    """A mitmdump in reverse mode: plain, or with the gateway and a config."""

    def __init__(
        self,
        tmp: Path,
        upstream_url: str,
        config: str | None,
        *options: str,
        store: str = "",
        script: Path = ROOT / "addons" / "gateway.py",
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.db = tmp / f"audit-{self.port}.sqlite3"
        self.log = tmp / f"mitmdump-{self.port}.log"
        cmd = [str(BIN / "mitmdump"), "--mode", f"reverse:{upstream_url}"]
        cmd += ["--listen-host", "127.0.0.1", "--listen-port", str(self.port)]
        cmd += ["--set", "termlog_verbosity=info", "--set", "flow_detail=0"]
        if config is not None:
            path = tmp / f"gateway-{self.port}.yaml"
            path.write_text(config)
            cmd += ["-s", str(script), "--set", f"holdgate_config={path}"]
            cmd += ["--set", f"holdgate_store={store or self.db}"]
            if not any(option.startswith("holdgate_admin=") for option in options):
                cmd += ["--set", "holdgate_admin="]
            cmd += ["--set", f"holdgate_recordings={tmp / f'rec-{self.port}'}"]
        for option in options:
            cmd += ["--set", option]
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env={**os.environ, **(env or {})},
            )
        wait_for_port(self.port, self.proc)

    def cpu_seconds(self) -> float:
        """CPU of the proxy and its child processes (the gateway's recordings writer)."""
        stats: dict[int, list[str]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, ValueError):
                continue  # a process that just ended
        children: dict[int, list[int]] = {}
        for pid, fields in stats.items():
            children.setdefault(int(fields[1]), []).append(pid)
        family, ticks = [self.proc.pid], 0
        while family:
            pid = family.pop()
            family += children.get(pid, [])
            if pid in stats:
                ticks += int(stats[pid][11]) + int(stats[pid][12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def loop_cpu_seconds(self) -> float:
        """CPU of the proxy's main thread alone: mitmproxy's event loop, one core's ceiling
        for a replica (child processes can use the other cores)."""
        return _stat_cpu(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat"))

    def own_cpu_seconds(self) -> float:
        """CPU of the proxy process, all its threads, no child: they share one interpreter
        lock, so what its other threads do in Python the loop cannot do meanwhile."""
        return _stat_cpu(Path(f"/proc/{self.proc.pid}/stat"))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> str:
        stop(self.proc)
        return self.log.read_text(errors="replace")


def _stat_cpu(stat_file: Path) -> float:
    """utime + stime of a /proc stat file, in seconds."""
    fields = stat_file.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the load generator: asyncio, raw HTTP/1.1 keep-alive (cheap next to threads) ---------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(
        (k.strip().lower(), v.strip())
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
    )
    if b"content-length" in headers:
        return status, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        parts = []
        async for part in chunks(reader):
            parts.append(part)
        return status, b"".join(parts)
    return status, await reader.read()


async def chunks(reader: asyncio.StreamReader):  # type: ignore[no-untyped-def]
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


def request_bytes(body: dict, headers: dict[str, str], port: int = 80) -> bytes:
    data = json.dumps(body).encode()
    lines = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        "MCP-Protocol-Version: 2025-06-18",
        f"Content-Length: {len(data)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def drive_async(
    port: int,
    concurrency: int,
    count: int,
    budget: float,
    headers: dict[str, str],
    messages: tuple[dict, ...] = (CALL,),
) -> dict:
    """`count` requests over `concurrency` keep-alive connections, within `budget` s,
    cycling through `messages`."""
    payloads = [request_bytes(message, headers, port) for message in messages]
    per_connection = max(1, count // concurrency)
    deadline = time.monotonic() + budget
    latencies: list[float] = []

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(per_connection):
                if time.monotonic() > deadline:
                    return
                began = time.perf_counter()
                writer.write(payloads[(offset + i) % len(payloads)])
                status, body = await read_response(reader)
                if status != 200 or b'"error"' in body:
                    raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
                latencies.append(time.perf_counter() - began)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*map(connection, range(concurrency))), budget + 30)
    elapsed = time.perf_counter() - began
    return summarise(latencies, elapsed)


def drive(
    port: int,
    concurrency: int,
    count: int,
    budget: float,
    headers: dict,
    messages: tuple[dict, ...] = (CALL,),
) -> dict:
    return asyncio.run(drive_async(port, concurrency, count, budget, headers, messages))


def summarise(latencies: list[float], elapsed: float) -> dict:
    latencies = sorted(latencies)
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def table(title: str, rows: list[list[object]], head: list[str]) -> None:
    print(f"\n== {title}")
    cells = [[_cell(c) for c in row] for row in [head, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def median_runs(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if runs[0][k] is not None}


def cpu_split(proxy: Proxy) -> Callable[[int], dict[str, float]]:
    """Call before a run; the returned function, called after it with the requests made,
    gives the CPU ms per request of the process and its children, of the process alone,
    and of its event loop thread alone."""
    before = proxy.cpu_seconds(), proxy.own_cpu_seconds(), proxy.loop_cpu_seconds()

    def per_request(requests: int) -> dict[str, float]:
        after = proxy.cpu_seconds(), proxy.own_cpu_seconds(), proxy.loop_cpu_seconds()
        ms = [1000 * (a - b) / max(1, requests) for a, b in zip(after, before, strict=True)]
        return {
            "cpu_ms_per_request": ms[0],
            "own_cpu_ms_per_request": ms[1],
            "loop_cpu_ms_per_request": ms[2],
        }

    return per_request


def interleaved_c16(gateways: dict, auth: dict[str, str], count: int, quick: bool) -> dict:
    """Each gateway warmed, then driven at c16 in interleaved rounds (machine noise falls
    on all alike): per gateway, the median run with its CPU per request."""
    runs: dict[str, list[dict]] = {name: [] for name in gateways}
    for gateway in gateways.values():
        drive(gateway.port, 16, 160, 10, auth)
    for _ in range(1 if quick else 3):
        for name, gateway in gateways.items():
            spent = cpu_split(gateway)
            run = drive(gateway.port, 16, count, 60, auth)
            runs[name].append({**run, **spent(run["requests"])})
    return {name: median_runs(r) for name, r in runs.items()}


# --- scenarios ------------------------------------------------------------------------------


def scenario_proxy(
    quick: bool, against: Baseline | None = None, levels: tuple[int, ...] = (1, 16, 64)
) -> dict:
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        config = gateway_config(up, signer.jwks)
        runs = compare_proxies(tmp, up, config, signer, levels, quick, (CALL,), against)
    return summarise_comparison("proxy: tools/call to the minimal upstream", runs)


def scenario_hooks(quick: bool, against: Baseline | None = None) -> dict:
    """The gateway's own work per call without sockets: the proxy scenario's call driven
    through mitmproxy's addon manager in-process (`scripts/bench_hooks.py`, one process per
    measurement), CPU per call: the process's, its event loop thread's, its children's
    (best of rounds, each alone). Steadier than req/s on a shared machine, so levers are
    compared here first: the Pipeline against the same addons dispatched one by one by
    mitmproxy, the audit writer in a process against a thread, and (`--against`) the
    gateway at another revision; interleaved rounds."""
    calls = 300 if quick else 3000
    targets: dict[str, tuple[Path, str, str | None]] = {
        "pipeline": (ROOT, "pipeline", None),
        "pipeline, process writer": (ROOT, "pipeline", "process"),
        "addons one by one": (ROOT, "addons", None),
    }
    if against is not None:
        targets[f"gateway@{against.revision}"] = (against.script.parent.parent, "pipeline", None)
    results: dict[str, list[dict]] = {name: [] for name in targets}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        config = tmp / "gateway.yaml"
        config.write_text(gateway_config("http://127.0.0.1:9", signer.jwks))
        token = tmp / "token"
        token.write_text(signer.token)
        for _ in range(1 if quick else 3):
            for name, (tree, dispatch, writer) in targets.items():
                cmd = [sys.executable, str(ROOT / "scripts" / "bench_hooks.py")]
                cmd += ["--tree", str(tree), "--config", str(config), "--token", str(token)]
                cmd += ["--calls", str(calls), "--dispatch", dispatch]
                cmd += ["--writer", writer] if writer else []
                done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp)
                results[name].append(json.loads(done.stdout.splitlines()[-1]))
    keys = ("cpu_us_per_call", "loop_cpu_us_per_call", "children_cpu_us_per_call")
    summary = {
        name: {key: min(r[key] for r in runs if key in r) for key in keys if key in runs[0]}
        for name, runs in results.items()
    }
    rows = [
        [name, *(f"{value[key]:.0f}" if key in value else "-" for key in keys)]
        for name, value in summary.items()
    ]
    table(
        "hooks: one tools/call through the gateway's hooks, in-process",
        rows,
        ["dispatch", "process µs/call", "loop thread µs/call", "children µs/call"],
    )
    return summary


def mcp_call(tool: str, **arguments: object) -> dict:
    return {**CALL, "params": {"name": tool, "arguments": arguments}}


# A realistic mix for the demo server: discovery, PII-heavy records (masked), searches and
# SQL reads checked by an argument rule.
DEMO_MIX = (
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    mcp_call("get_customer", customer_id=3),
    mcp_call("search_customers", query="example.org", limit=5),
    mcp_call("run_sql", query="SELECT id, name, country FROM customers LIMIT 5"),
    mcp_call("get_customer", customer_id=7),
)

DEMO_RULES = """  - name: no SQL writes
    match:
      tool: run_sql
      args: {"$.query": {search: "(?i)\\\\b(insert|update|delete|drop|alter)\\\\b"}}
    action: deny
  - name: discovery
    match: {method: [tools/list, initialize, "notifications/*"]}
    action: allow
  - name: demo reads
    match: {groups: [bench], tool: [search_customers, run_sql]}
    action: allow
"""


@contextmanager
def demo_server(tmp: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "scripts" / "demo_server.py"), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--json-response", "--stateless", "--db", str(tmp / "demo.db")]
    with (tmp / "demo.log").open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def scenario_mix(quick: bool, against: Baseline | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with demo_server(tmp) as up:
            signer = Signer(tmp)
            config = gateway_config(up, signer.jwks, DEMO_RULES)
            runs = compare_proxies(tmp, up, config, signer, (16,), quick, DEMO_MIX, against)
    return summarise_comparison("mix: the demo server (MCP SDK), 5-message mix", runs)


def compare_proxies(
    tmp: Path,
    up: str,
    config: str,
    signer: Signer,
    levels: tuple[int, ...],
    quick: bool,
    messages: tuple[dict, ...],
    against: Baseline | None = None,
) -> dict[str, dict[str, list[dict]]]:
    """Direct, plain mitmdump and gateway (and the gateway at `against`'s revision),
    interleaved round by round at each level."""
    auth = {"Authorization": f"Bearer {signer.token}"}
    plain = Proxy(tmp, up, None)
    gateway = Proxy(tmp, up, config)
    up_port = int(up.rsplit(":", 1)[1])
    targets = {"direct": (None, up_port), "mitmdump": (plain, plain.port)}
    proxies = [plain, gateway]
    if against is not None:
        before = Proxy(tmp, up, config, script=against.script)
        proxies.append(before)
        targets[f"gateway@{against.revision}"] = (before, before.port)
    targets["gateway"] = (gateway, gateway.port)
    runs: dict[str, dict[str, list[dict]]] = {}
    try:
        for concurrency in levels:
            count = (300 if quick else 3000) * (1 if concurrency == 1 else 2)
            for _, port in targets.values():
                drive(port, concurrency, 2 * concurrency, 10, auth, messages)  # warm-up
            for _ in range(1 if quick else 3):  # interleaved to cancel machine noise
                for name, (proxy, port) in targets.items():
                    spent = cpu_split(proxy) if proxy else None
                    run = drive(port, concurrency, count, 60, auth, messages)
                    if spent is not None:
                        run.update(spent(run["requests"]))
                    runs.setdefault(f"c{concurrency}", {}).setdefault(name, []).append(run)
    finally:
        for proxy in proxies:
            proxy.stop()
    return runs


@dataclass(frozen=True)
class Target:
    """One figure issue #18 asks for, read from the scenario that measures it."""

    name: str
    scenario: str
    figure: Callable[[dict], float | None]
    met: Callable[[float], bool]
    unit: str


def _dig(summary: dict, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(summary, dict) or key not in summary:
            return None
        summary = summary[key]
    return summary if isinstance(summary, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


TARGETS = (
    Target(
        "gateway req/s vs plain mitmdump at c16 (>= 85%)",
        "proxy",
        lambda r: _dig(r, "c16", "ratio_rps_gateway_vs_mitmdump"),
        lambda v: v >= 0.85,
        "%",
    ),
    Target(
        "gateway loop-thread CPU per request vs mitmdump's at c16 (<= 1.18x, i.e. 85%)",
        "proxy",
        lambda r: _ratio(
            _dig(r, "c16", "gateway", "loop_cpu_ms_per_request"),
            _dig(r, "c16", "mitmdump", "loop_cpu_ms_per_request"),
        ),
        lambda v: v <= 1 / 0.85,
        "x",
    ),
    Target(
        "p50 added at c1 (<= 1 ms)",
        "proxy",
        lambda r: _dig(r, "c1", "added_p50_ms"),
        lambda v: v <= 1.0,
        "ms",
    ),
    Target(
        "masking, PII-dense 1 MB JSON, default profiles (>= 50 MB/s)",
        "masking",
        lambda r: _dig(r, "1MB pii design example profiles", "json_MBps"),
        lambda v: v >= 50,
        "MB/s",
    ),
    Target(
        "masking, clean 1 MB tool result (>= 200 MB/s)",
        "masking",
        lambda r: _dig(r, "1MB clean design example profiles", "json_MBps"),
        lambda v: v >= 200,
        "MB/s",
    ),
    Target(
        "SSE: masked and recorded 1 KB events per gateway CPU-second (>= 5,000)",
        "sse",
        lambda r: _dig(r, "gateway", "events_per_cpu_second"),
        lambda v: v >= 5000,
        "events/s",
    ),
    Target(
        "SSE: events per loop-thread CPU-second (>= 5,000)",
        "sse",
        lambda r: _dig(r, "gateway", "events_per_loop_cpu_second"),
        lambda v: v >= 5000,
        "events/s",
    ),
    Target(
        "SSE: p99 added per event at the paced rate (< 5 ms at 1,000/s)",
        "sse",
        lambda r: _dig(r, "gateway", "added_p99_ms"),
        lambda v: v < 5,
        "ms",
    ),
    Target(
        "SSE: gateway RSS growth over a 100 MB stream (< 50 MB)",
        "sse",
        lambda r: _dig(r, "gateway", "rss_growth_mb"),
        lambda v: v < 50,
        "MB",
    ),
    Target(
        "200 held approvals change other traffic's p50 by (< 10%)",
        "holds",
        lambda r: _dig(r, "p50_change"),
        lambda v: v < 0.10,
        "%",
    ),
    Target(
        "1,000 tool-name rules vs 10 (<= 2x)",
        "policy",
        lambda r: _ratio(_dig(r, "tool_rules_1000_us"), _dig(r, "tool_rules_10_us")),
        lambda v: v <= 2,
        "x",
    ),
)


def print_targets(report: dict) -> dict:
    """The issue's targets against this run's figures (only those whose scenario ran)."""
    rows, out = [], {}
    for target in TARGETS:
        if target.scenario not in report:
            continue
        value = target.figure(report[target.scenario])
        if value is None:
            rows.append([target.name, "not measured", ""])
            continue
        shown = f"{value:.0%}" if target.unit == "%" else f"{value:,.2f} {target.unit}"
        verdict = "met" if target.met(value) else "MISSED"
        out[target.name] = {"value": value, "met": target.met(value)}
        rows.append([target.name, shown, verdict])
    if rows:
        table("targets (issues #18 and #31)", rows, ["target", "this run", ""])
    return out


@dataclass(frozen=True)
class Baseline:
    """The gateway at another git revision, checked out beside this one (`--against`)."""

    revision: str
    script: Path


@contextmanager
def baseline(revision: str) -> Iterator[Baseline]:
    """A detached worktree of `revision` for the `--against` comparison, removed after."""
    short = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp_name:
        tree = Path(tmp_name) / "tree"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(tree), short], check=True, capture_output=True)
        try:
            yield Baseline(short, tree / "addons" / "gateway.py")
        finally:
            subprocess.run([*git, "remove", "--force", str(tree)], check=False)


def summarise_comparison(title: str, runs: dict[str, dict[str, list[dict]]]) -> dict:
    summary: dict = {}
    rows = []
    for level, by_target in runs.items():
        summary[level] = {name: median_runs(r) for name, r in by_target.items()}
        plain_run = summary[level]["mitmdump"]
        gateways = [name for name in by_target if name.startswith("gateway")]
        for name in gateways:
            suffix = name.removeprefix("gateway")
            gw = summary[level][name]
            summary[level][f"ratio_rps_gateway{suffix}_vs_mitmdump"] = gw["rps"] / plain_run["rps"]
            summary[level][f"added_p50_ms{suffix}"] = gw["p50_ms"] - plain_run["p50_ms"]
        for name, result in list(summary[level].items()):
            if isinstance(result, dict):
                cpu = result.get("cpu_ms_per_request", "-")
                row = [level, name, result["rps"], result["p50_ms"], result["p99_ms"], cpu]
                rows.append([*row, _loop(result)])
        for name in gateways:
            suffix = name.removeprefix("gateway")
            ratio = f"{summary[level][f'ratio_rps_gateway{suffix}_vs_mitmdump']:.0%}"
            added = f"+{summary[level][f'added_p50_ms{suffix}']:.2f}"
            rows.append([level, f"{name}/mitmdump", ratio, added, "", "", ""])
    table(
        title,
        rows,
        ["level", "target", "req/s", "p50 ms", "p99 ms", "cpu ms/req", "loop / own ms/req"],
    )
    if "c16" in summary and "loop_cpu_ms_per_request" in summary["c16"].get("gateway", {}):
        summary["projection"] = print_projection(summary["c16"])
    return summary


def _loop(result: dict) -> object:
    """The loop thread's CPU ms per request, and the process's own (all its threads)."""
    loop, own = result.get("loop_cpu_ms_per_request"), result.get("own_cpu_ms_per_request")
    return "-" if loop is None or own is None else f"{loop:.2f} / {own:.2f}"


PROJECTED_CORES = (2, 4, 8, 16, 32)


def print_projection(c16: dict) -> dict:
    """What N cores would give, from this run's CPU per request: projected, not measured.

    A replica's ceiling is its event loop: one core, 1000 / (loop ms per request) req/s.
    The rest of its CPU (the audit writer, the recordings process, mitmproxy's threads) runs
    on other cores. N cores then hold N / (process ms per request) * 1000 req/s, from
    ceil(N * loop / process) replicas, before the load balancer, the upstream and the
    store take their share (none of which is counted here).
    """
    out: dict = {}
    rows = []
    for name in ("mitmdump", "gateway"):
        result = c16.get(name, {})
        loop, own = result.get("loop_cpu_ms_per_request"), result.get("own_cpu_ms_per_request")
        total = result.get("cpu_ms_per_request")
        if not loop or not own or not total:
            continue
        # The loop's ceiling lies between 1000/own (the process's threads hold the
        # interpreter lock while they run Python) and 1000/loop (they never do).
        ceiling = (1000 / own, 1000 / loop)
        out[name] = {"replica_ceiling_rps": ceiling, "by_cores": {}}
        for cores in PROJECTED_CORES:
            rps = cores * 1000 / total
            replicas = max(1, math.ceil(cores * own / total))
            out[name]["by_cores"][cores] = {"rps": rps, "replicas": replicas}
            shown = f"{ceiling[0]:.0f}-{ceiling[1]:.0f}"
            rows.append([name, cores, replicas, round(rps), shown])
    if rows:
        table(
            "projection from c16 CPU per request (PROJECTED, not measured: one core per "
            "replica's process; load balancer, upstream and store not counted)",
            rows,
            ["target", "cores", "replicas", "req/s projected", "per-replica ceiling"],
        )
    return out


SSE_RATE = 1000  # the rate issue #18's latency target names
SENT = re.compile(rb'"sent_ns":\s*(\d+)')


async def read_stream(port: int, headers: dict[str, str]) -> dict:
    """One stream_tool call; per-event latency from the upstream's timestamps."""
    call = {**CALL, "params": {"name": "stream_tool", "arguments": {}}}
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    writer.write(request_bytes(call, headers, port))
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"stream refused: {head!r} {await reader.read(500)!r}")
    latencies: list[float] = []
    pending = b""
    received = 0
    began = time.perf_counter()
    async for part in chunks(reader):
        now = time.time_ns()
        received += len(part)
        pending += part
        *events, pending = pending.split(b"\n\n")
        for event in events:
            found = SENT.search(event)
            if found:
                latencies.append((now - int(found.group(1))) / 1e6)
    writer.close()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "events": len(latencies),
        "mb": received / 1e6,
        "seconds": elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "max_ms": latencies[-1],
    }


def scenario_sse(quick: bool, rate: int = SSE_RATE, against: Baseline | None = None) -> dict:
    events = 10_000 if quick else 100_000
    # Paced below what one gateway core sustains with masking and a row per event (about
    # 4-5k events/s here), so latency shows the per-event cost, not a growing backlog.
    stream_args = ("--sse-events", str(events), "--sse-bytes", "1000", "--sse-rate", str(rate))
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name, upstream(*stream_args) as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        up_port = int(up.rsplit(":", 1)[1])
        results["direct"] = asyncio.run(read_stream(up_port, auth))
        plain = Proxy(tmp, up, None, "stream_large_bodies=1")
        try:
            cpu = plain.cpu_seconds()
            results["mitmdump"] = asyncio.run(read_stream(plain.port, auth))
            results["mitmdump"]["cpu_us_per_event"] = per_event(plain, cpu, results["mitmdump"])
        finally:
            plain.stop()
        config = gateway_config(up, signer.jwks)
        results["gateway"] = sse_through_gateway(Proxy(tmp, up, config), auth)
        if against is not None:  # the gateway at another revision, the same stream after
            before = Proxy(tmp, up, config, script=against.script)
            results[f"gateway@{against.revision}"] = sse_through_gateway(before, auth)
    for name in results:
        if name == "direct":
            continue
        for key in ("p50_ms", "p99_ms"):
            results[name][f"added_{key}"] = results[name][key] - results["direct"][key]
    rows = [
        [
            name,
            r["events"],
            r["mb"],
            r["seconds"],
            r["p50_ms"],
            r["p99_ms"],
            r.get("added_p99_ms", "-"),
            r.get("rss_growth_mb", "-"),
            r.get("cpu_us_per_event", "-"),
            r.get("loop_cpu_us_per_event", "-"),
            r.get("events_per_cpu_second", "-"),
        ]
        for name, r in results.items()
    ]
    table(
        f"sse: {events} events, ~1 KB each, paced at {rate}/s",
        rows,
        [
            "target",
            "events",
            "MB",
            "s",
            "p50 ms",
            "p99 ms",
            "added p99",
            "RSS growth MB",
            "CPU us/event",
            "loop us/event",
            "events/CPU-s",
        ],
    )
    results["rate_per_s"] = rate
    return results


def sse_through_gateway(gateway: Proxy, auth: dict[str, str]) -> dict:
    """One stream through a gateway: latency, RSS growth, CPU per event (stopped after)."""
    try:
        drive(gateway.port, 1, 5, 10, auth)  # warm-up: imports, JWKS, store
        baseline = gateway.rss_mb()
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], gateway.rss_mb())

        sampler = threading.Thread(target=sample)
        sampler.start()
        cpu, loop = gateway.cpu_seconds(), gateway.loop_cpu_seconds()
        try:
            result = asyncio.run(read_stream(gateway.port, auth))
        finally:
            done.set()
            sampler.join()
        result["cpu_us_per_event"] = per_event(gateway, cpu, result)
        loop_spent = (gateway.loop_cpu_seconds() - loop) / max(1, result["events"])
        result["loop_cpu_us_per_event"] = loop_spent * 1e6
        result["events_per_loop_cpu_second"] = 1 / loop_spent if loop_spent else None
        result["rss_before_mb"] = baseline
        result["rss_growth_mb"] = peak[0] - baseline
        # one core's worth: how many events the gateway's CPU per event makes a second
        spent = result["cpu_us_per_event"]
        result["events_per_cpu_second"] = 1e6 / spent if spent else None
        return result
    finally:
        gateway.stop()


def per_event(proxy: Proxy, cpu_before: float, result: dict) -> float:
    """The proxy's CPU (with its children) per event read, in microseconds."""
    return (proxy.cpu_seconds() - cpu_before) / max(1, result["events"]) * 1e6


def count_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def scenario_audit(quick: bool) -> dict:
    seconds = 5 if quick else 20
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        gateway = Proxy(tmp, up, gateway_config(up, signer.jwks))
        try:
            drive(gateway.port, 4, 40, 10, auth)
            time.sleep(1)
            before = count_rows(gateway.db)
            run = drive(gateway.port, 16, 10**7, seconds, auth)
            during = count_rows(gateway.db) - before
        finally:
            log = gateway.stop()
        total = count_rows(gateway.db) - before
    writer = writer_capacity(20_000 if quick else 100_000)
    depth = re.search(r"max queue depth (\d+)", log)
    lost = re.search(r"(\d+) rows lost", log)
    elapsed = run["requests"] / run["rps"]
    result = {
        "seconds": elapsed,
        "calls": run["requests"],
        "rows_produced_per_s": total / elapsed,
        "rows_written_during_load_per_s": during / elapsed,
        "rows_total": total,
        "max_queue_depth": int(depth.group(1)) if depth else None,
        "queue_bound": 10_000,
        "rows_lost": int(lost.group(1)) if lost else None,
        "writer_alone": writer,
    }
    table(
        "audit: the writer alone, one producer thread as fast as it can",
        [[writer["rows"], writer["rows_per_s"], writer["max_queue_depth"], writer["refused"]]],
        ["rows", "rows/s", "max queue", "refused (queue full)"],
    )
    table(
        "audit: sustained calls at concurrency 16 (3 rows per call: decision, answer, outcome)",
        [
            [
                result[k]
                for k in (
                    "calls",
                    "rows_produced_per_s",
                    "rows_written_during_load_per_s",
                    "max_queue_depth",
                    "rows_lost",
                )
            ]
        ],
        ["calls", "rows/s produced", "rows/s written", "max queue", "lost"],
    )
    return result


def writer_capacity(rows: int) -> dict:
    """Rows/s the audit writer stores when fed without pause; the queue stays bounded."""
    row = {
        "flow_id": "f" * 36,
        "session_id": "s" * 32,
        "direction": "response",
        "user": "bench-user",
        "groups": '["bench"]',
        "upstream": "fast",
        "method": "tools/call",
        "decision": "pass",
        "config_hash": "c" * 64,
        "args_masked": json.dumps({"content": [{"type": "text", "text": "x" * 800}]}),
    }
    with tempfile.TemporaryDirectory() as tmp, SqliteStore(Path(tmp) / "writer.sqlite3") as db:
        writer = db.writer()
        refused = 0
        began = time.perf_counter()
        for _ in range(rows):
            while not writer.submit("events", row):  # full: wait, as a paced producer would
                refused += 1
                time.sleep(0.001)
        writer.flush(120)
        elapsed = time.perf_counter() - began
        writer.close()
    return {
        "rows": rows,
        "rows_per_s": rows / elapsed,
        "max_queue_depth": writer.max_queue_depth_seen,
        "refused": refused,
    }


def scenario_writeahead(quick: bool) -> dict:
    """Write-ahead (audit: required) against best effort, same config otherwise."""
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        required = gateway_config(up, signer.jwks)
        best_effort = required.replace("version: 1\n", "version: 1\naudit: best_effort\n", 1)
        proxies = {
            "mitmdump": Proxy(tmp, up, None),
            "best_effort": Proxy(tmp, up, best_effort),
            "write_ahead": Proxy(tmp, up, required),
        }
        runs: dict[str, dict[str, list[dict]]] = {}
        try:
            for concurrency in (1, 16):
                count = (300 if quick else 3000) * (1 if concurrency == 1 else 2)
                for proxy in proxies.values():
                    drive(proxy.port, concurrency, 2 * concurrency, 10, auth)  # warm-up
                for _ in range(1 if quick else 3):
                    for name, proxy in proxies.items():
                        run = drive(proxy.port, concurrency, count, 60, auth)
                        runs.setdefault(f"c{concurrency}", {}).setdefault(name, []).append(run)
        finally:
            for proxy in proxies.values():
                proxy.stop()
    summary = {
        level: {name: median_runs(r) for name, r in by_name.items()}
        for level, by_name in runs.items()
    }
    c1, c16 = summary["c1"], summary["c16"]
    summary["added_c1_p50_ms"] = c1["write_ahead"]["p50_ms"] - c1["best_effort"]["p50_ms"]
    summary["c16_rps_ratio"] = c16["write_ahead"]["rps"] / c16["best_effort"]["rps"]
    rows = [
        [level, name, r["rps"], r["p50_ms"], r["p99_ms"]]
        for level in ("c1", "c16")
        for name, r in summary[level].items()
    ]
    rows.append(["c1", "write-ahead adds (p50)", "", f"+{summary['added_c1_p50_ms']:.2f}", ""])
    rows.append(["c16", "write-ahead/best effort", f"{summary['c16_rps_ratio']:.0%}", "", ""])
    table(
        "writeahead: decisions committed before forwarding vs audit: best_effort",
        rows,
        ["level", "target", "req/s", "p50 ms", "p99 ms"],
    )
    return summary


HELD_RULE = """  - name: held for ops
    match: {tool: held_tool}
    action: approve
    approvers: [ops]
    timeout: 30m
"""


def pending(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return int(
            conn.execute("SELECT count(*) FROM v_approvals WHERE state = 'pending'").fetchone()[0]
        )


def wait_until(check, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def scenario_holds(quick: bool) -> dict:
    holds = 200
    count = 1000 if quick else 4000
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        gateway = Proxy(tmp, up, gateway_config(up, signer.jwks, HELD_RULE))
        runs: dict[str, list[dict]] = {"no holds": [], f"{holds} holds": []}
        held_call = request_bytes({**CALL, "params": {"name": "held_tool"}}, auth, gateway.port)
        try:
            drive(gateway.port, 16, 160, 10, auth)

            async def measure_with_holds() -> dict:
                conns = [
                    await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(holds)
                ]
                try:
                    for _, writer in conns:
                        writer.write(held_call)
                    ok = await asyncio.to_thread(
                        wait_until, lambda: pending(gateway.db) >= holds, 60
                    )
                    if not ok:
                        raise RuntimeError(f"only {pending(gateway.db)} of {holds} holds pending")
                    return await drive_async(gateway.port, 16, count, 60, auth)
                finally:
                    for _, writer in conns:  # the client goes away: each hold is cancelled
                        writer.close()

            for _ in range(1 if quick else 3):  # interleaved
                runs["no holds"].append(drive(gateway.port, 16, count, 60, auth))
                runs[f"{holds} holds"].append(asyncio.run(measure_with_holds()))
                if not wait_until(lambda: pending(gateway.db) == 0, 60):
                    raise RuntimeError("held requests were not cancelled")
        finally:
            gateway.stop()
    summary = {name: median_runs(r) for name, r in runs.items()}
    base, held = summary["no holds"], summary[f"{holds} holds"]
    summary["p50_change"] = held["p50_ms"] / base["p50_ms"] - 1
    table(
        "holds: normal tools/call at concurrency 16",
        [[n, r["rps"], r["p50_ms"], r["p99_ms"]] for n, r in summary.items() if isinstance(r, dict)]
        + [["p50 change", "", f"{summary['p50_change']:+.1%}", ""]],
        ["condition", "req/s", "p50 ms", "p99 ms"],
    )
    return summary


def scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def scenario_metrics(quick: bool) -> dict:
    count = 1000 if quick else 4000
    scrapes = 50 if quick else 300
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        admin = free_port()
        gateway = Proxy(
            tmp, up, gateway_config(up, signer.jwks), f"holdgate_admin=127.0.0.1:{admin}"
        )
        url = f"http://127.0.0.1:{admin}/metrics"
        runs: dict[str, list[dict]] = {"no scraper": [], "scraped every 1 s": []}
        try:
            wait_for_port(admin, gateway.proc)
            drive(gateway.port, 16, count, 60, auth)
            body = scrape(url)
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            began = time.perf_counter()
            for _ in range(scrapes):
                scrape(url)
            per_scrape_us = 1e6 * (time.perf_counter() - began) / scrapes
            for _ in range(1 if quick else 3):  # interleaved
                runs["no scraper"].append(drive(gateway.port, 16, count, 60, auth))
                stopping = threading.Event()
                thread = threading.Thread(target=scrape_every, args=(url, stopping), daemon=True)
                thread.start()
                try:
                    runs["scraped every 1 s"].append(drive(gateway.port, 16, count, 60, auth))
                finally:
                    stopping.set()
                    thread.join()
        finally:
            gateway.stop()
    summary: dict = {name: median_runs(r) for name, r in runs.items()}
    summary["scrape_us"] = per_scrape_us
    summary["series"] = series
    summary["scrape_bytes"] = len(body)
    table(
        "metrics: a scrape, and tools/call at concurrency 16 while scraped",
        [[n, r["rps"], r["p50_ms"], r["p99_ms"]] for n, r in runs_summary(summary)]
        + [[f"one scrape ({series} series, {len(body)} B)", "", f"{per_scrape_us:.0f} us", ""]],
        ["condition", "req/s", "p50 ms", "p99 ms"],
    )
    return summary


def scrape_every(url: str, stopping: threading.Event, seconds: float = 1.0) -> None:
    while not stopping.wait(seconds):
        scrape(url)


def runs_summary(summary: dict) -> list[tuple[str, dict]]:
    return [(n, r) for n, r in summary.items() if isinstance(r, dict)]


class OtlpSink:
    """Accepts OTLP/HTTP exports and answers 200, counting them (the spans are not read)."""

    def __init__(self) -> None:
        sink = self
        self.exports = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scenario_tracing(quick: bool) -> dict:
    count = 1000 if quick else 4000
    sink = OtlpSink()
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        config = gateway_config(up, signer.jwks)
        gateways = {
            "tracing off": Proxy(tmp, up, config),
            "tracing on": Proxy(
                tmp, up, config, env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
            ),
        }
        try:
            summary: dict = interleaved_c16(gateways, auth, count, quick)
        finally:
            for gateway in gateways.values():
                gateway.stop()
            sink.close()
    summary["exports"] = sink.exports
    summary["rps_change"] = summary["tracing on"]["rps"] / summary["tracing off"]["rps"] - 1
    table(
        "tracing: tools/call at concurrency 16, spans exported over OTLP/HTTP",
        [
            [n, r["rps"], r["p50_ms"], r["p99_ms"], r["cpu_ms_per_request"], _loop(r)]
            for n, r in runs_summary(summary)
        ]
        + [["req/s change", f"{summary['rps_change']:+.1%}", "", "", "", ""]],
        ["condition", "req/s", "p50 ms", "p99 ms", "cpu ms/req", "loop / own ms/req"],
    )
    return summary


def shadow_candidates(upstream_url: str, jwks: Path) -> dict[str, str]:
    """Candidate configs for the shadow scenario: the bench config with N more rules ahead
    of the one that decides the bench call, each of which must be checked (the caller's
    group matches it, its tool glob or argument condition does not); and one that denies
    every bench call (every row then carries `extra.shadow`)."""

    def tool_rules(n: int) -> str:
        return "".join(
            f"  - name: shadow tool {i}\n    match: {{groups: [bench], tool: [other_{i}_*]}}\n"
            "    action: deny\n"
            for i in range(n)
        )

    def arg_rules(n: int) -> str:
        return "".join(
            f"  - name: shadow args {i}\n    match: {{groups: [bench], tool: get_customer, "
            f"args: {{'$.customer_id': {{equals: {i + 2}}}}}}}\n    action: deny\n"
            for i in range(n)
        )

    differs = "  - name: shadow denies\n    match: {tool: get_customer}\n    action: deny\n"
    return {
        "10 tool-name rules": gateway_config(upstream_url, jwks, tool_rules(10)),
        "10 argument rules": gateway_config(upstream_url, jwks, arg_rules(10)),
        "100 argument rules": gateway_config(upstream_url, jwks, arg_rules(100)),
        "differs on every call": gateway_config(upstream_url, jwks, differs),
    }


def shadow_counts(db: Path) -> dict[str, int]:
    """The candidate's summary rows summed: evaluated, changed, skipped, errors."""
    counts = dict.fromkeys(("evaluated", "changed", "skipped", "errors"), 0)
    with sqlite3.connect(db) as conn:
        for (detail,) in conn.execute(
            "SELECT detail FROM config_versions WHERE role = 'candidate' AND outcome = 'summary'"
        ):
            summary = json.loads(detail)
            for key in counts:
                counts[key] += summary[key]
    return counts


def scenario_shadow(quick: bool) -> dict:
    count = 1000 if quick else 4000
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        config = gateway_config(up, signer.jwks)
        candidates = shadow_candidates(up, signer.jwks)
        decision_us = shadow_decision_us(candidates, quick)
        gateways = {"no candidate": Proxy(tmp, up, config)}
        for name, text in candidates.items():
            path = tmp / f"candidate-{len(gateways)}.yaml"
            path.write_text(text)
            gateways[name] = Proxy(tmp, up, config, f"holdgate_shadow={path}")
        counts: dict[str, dict[str, int]] = {}
        try:
            summary: dict = interleaved_c16(gateways, auth, count, quick)
        finally:
            for name, gateway in gateways.items():
                gateway.stop()  # writes the candidate's last summary row
                if name != "no candidate":
                    counts[name] = shadow_counts(gateway.db)
    base = summary["no candidate"]
    rows = []
    for name, result in runs_summary(summary):
        result["rps_change"] = result["rps"] / base["rps"] - 1
        result["decision_us"] = decision_us.get(name)
        result["candidate"] = counts.get(name)
        seen = counts.get(name)
        rows.append(
            [
                name,
                result["rps"],
                f"{result['rps_change']:+.1%}",
                result["p50_ms"],
                result["cpu_ms_per_request"],
                _loop(result),
                "" if name not in decision_us else f"{decision_us[name]:.0f}",
                "" if seen is None else f"{seen['evaluated']}/{seen['skipped']}",
            ]
        )
    table(
        "shadow: tools/call at concurrency 16 with a candidate decided beside the policy",
        rows,
        [
            "candidate",
            "req/s",
            "change",
            "p50 ms",
            "cpu ms/req",
            "loop / own ms/req",
            "decision µs",
            "evaluated/skip",
        ],
    )
    return summary


def shadow_decision_us(candidates: dict[str, str], quick: bool) -> dict[str, float]:
    """In-process: one candidate decision of the bench call, best of rounds."""
    call = parse_body(json.dumps(CALL).encode(), max_bytes=1 << 20).messages[0]

    class Caller:
        user, groups, method = "bench-user", ("bench",), "jwt"

    out = {}
    repeats = 200 if quick else 2000
    for name, text in candidates.items():
        policy = parse_config_text(text).policy

        def decide(p: Policy = policy) -> None:
            for _ in range(repeats):
                p.evaluate(Caller(), "fast", call)

        out[name] = 1e6 * best_of(3 if quick else 7, decide) / repeats
    return out


class TokenEndpoint:
    """Answers every token exchange at once with one signed token for `bench-user` (the
    gateway's cache keeps it warm: the bench measures the calls, not the IdP)."""

    def __init__(self) -> None:
        endpoint = self
        self.exchanges = 0
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        claims = {"sub": "bench-user", "aud": "bench-mcp", "exp": int(time.time()) + 7200}
        body = json.dumps(
            {
                "access_token": jwt.encode(claims, key, algorithm="RS256"),
                "token_type": "Bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "expires_in": 7200,
            }
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.exchanges += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scenario_exchange(quick: bool) -> dict:
    """c16 `tools/call` with a per-user token exchanged (cache warm) against the static
    `inject:` credential, the same gateway otherwise."""
    count = 1000 if quick else 4000
    idp = TokenEndpoint()
    with tempfile.TemporaryDirectory() as tmp_name, upstream() as up:
        tmp = Path(tmp_name)
        signer = Signer(tmp)
        auth = {"Authorization": f"Bearer {signer.token}"}
        base = gateway_config(up, signer.jwks)
        block = f"upstreams:\n  - name: fast\n    url: {up}\n"
        static = base.replace(
            block,
            block
            + '    inject:\n      headers:\n        Authorization: "Bearer ${env:BENCH_TOKEN}"\n',
        )
        exchange = base.replace(
            block,
            "credential_providers:\n  - name: bench-sso\n"
            f"    token_url: {idp.url}\n    client_id: holdgate\n"
            '    client_secret: "${env:BENCH_TOKEN}"\n'
            + block
            + "    credentials:\n      exchange: bench-sso\n      audience: bench-mcp\n",
        )
        env = {"BENCH_TOKEN": "bench-static-credential-0123456789"}
        gateways = {
            "static injection": Proxy(tmp, up, static, env=env),
            "exchange, cache warm": Proxy(tmp, up, exchange, env=env),
        }
        try:
            summary: dict = interleaved_c16(
                gateways, auth, count, quick
            )  # the warm-up makes the one exchange
        finally:
            for gateway in gateways.values():
                gateway.stop()
            idp.close()
    summary["exchanges"] = idp.exchanges
    summary["rps_change"] = (
        summary["exchange, cache warm"]["rps"] / summary["static injection"]["rps"] - 1
    )
    table(
        "exchange: tools/call at concurrency 16, per-user token (cache warm) vs static",
        [
            [n, r["rps"], r["p50_ms"], r["p99_ms"], r["cpu_ms_per_request"], _loop(r)]
            for n, r in runs_summary(summary)
        ]
        + [
            ["req/s change", f"{summary['rps_change']:+.1%}", "", "", "", ""],
            ["exchanges asked of the IdP", idp.exchanges, "", "", "", ""],
        ],
        ["condition", "req/s", "p50 ms", "p99 ms", "cpu ms/req", "loop / own ms/req"],
    )
    return summary


def scenario_masking(quick: bool) -> dict:
    """bench_masking.py's tool results (PII-dense and clean) as the response path handles them
    (strict parse, mask, the upstream's bytes when nothing changed), as JSON and as one SSE
    event; and the per-event cost of a stream of 1 KB events (decode, parse, mask, encode)."""
    out: dict = {}
    rows = []
    for mb in (1, 10):
        for kind in ("pii", "clean"):
            body = bench_masking.tool_result(mb * 1_000_000, pii=kind == "pii")
            wire = b"event: message\ndata: " + body.encode() + b"\n\n"
            for label, effect in bench_masking.effects().items():
                json_s = best_of(1 if quick else 3, lambda b=body, e=effect: mask_body(b, e))
                sse_s = best_of(1 if quick else 3, lambda w=wire, e=effect: mask_event(w, e))
                key = f"{mb}MB {kind} {label}"
                out[key] = {
                    "json_MBps": len(body) / 1e6 / json_s,
                    "sse_MBps": len(wire) / 1e6 / sse_s,
                }
                rows.append([f"{mb} MB", kind, label, out[key]["json_MBps"], out[key]["sse_MBps"]])
    table(
        "masking: one core, parse + mask + write (or forward as received)",
        rows,
        ["body", "kind", "profiles", "JSON MB/s", "SSE MB/s"],
    )
    events = 2_000 if quick else 20_000
    effect = bench_masking.effects()["design example profiles"]
    stream = sse_stream(events)
    seconds = best_of(1 if quick else 3, lambda: mask_stream(stream, effect))
    out["sse_event_us"] = seconds / events * 1e6
    table(
        f"masking: {events} SSE events of ~1 KB, decode + parse + mask + encode, one core",
        [["design example profiles", out["sse_event_us"], 1 / (seconds / events)]],
        ["profiles", "us/event", "events/s"],
    )
    stages = sse_through_stages(events, 1 if quick else 3)
    out["sse_stages_us"] = {k: v / events * 1e6 for k, v in stages.items()}
    table(
        f"masking: {events} SSE events through the gateway's response stages in process "
        "(CPU of every thread, the audit writer's included; no mitmproxy I/O)",
        [[name, us] for name, us in out["sse_stages_us"].items()],
        ["stages", "CPU us/event"],
    )
    return out


SSE_CONFIG = (
    """version: 1
{identity}upstreams:
  - name: crm
    url: {url}
rules:
  - name: reads
    match: {{tool: "get_*"}}
    action: allow
"""
    + MASKING
)


def sse_through_stages(events: int, repeat: int) -> dict[str, float]:
    """Best CPU seconds to pass a 1 KB-event stream through SSEPass with the real addons
    (the tests' in-process gateway), with every stage and with the Recorder a no-op."""
    from unittest import mock

    from mitmproxy import http

    from helpers.configs import ALICE, identity
    from helpers.flows import UPSTREAM_URL, answer, call, finish, gateway, mcp_flow, send
    from holdgate.addons.recorder import Recorder

    stream = sse_stream(events)
    config = SSE_CONFIG.format(identity=identity("alice"), url=UPSTREAM_URL)

    async def once(folder: Path, recorder: bool) -> float:
        with gateway(folder, config) as tctx:
            flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
            streamed = http.Response.make(200, b"", {"Content-Type": "text/event-stream"})
            await answer(tctx, flow, streamed)
            off = mock.patch.object(Recorder, "on_message", lambda self, f, m, c: m)
            with off if not recorder else ExitStack():
                began = time.process_time()
                for start in range(0, len(stream), 16384):
                    flow.response.stream(stream[start : start + 16384])
                finish(tctx)  # the audit writer drains: its CPU counts
                return time.process_time() - began

    async def runs() -> dict[str, float]:
        best = {"all stages": float("inf"), "all but the Recorder": float("inf")}
        for _ in range(repeat):
            for name in best:
                with tempfile.TemporaryDirectory() as folder:
                    seconds = await once(Path(folder), name == "all stages")
                best[name] = min(best[name], seconds)
        return best

    return asyncio.run(runs())


def mask_body(body: str, effect) -> bytes:  # type: ignore[no-untyped-def]
    return bench_masking.response_path(body.encode(), effect)


def mask_event(wire: bytes, effect) -> bytes:  # type: ignore[no-untyped-def]
    decoder = SSEDecoder(max_event_bytes=len(wire) + 1)
    return b"".join(mask_one_event(e, StreamMasker(), effect) for e in decoder.feed(wire))


def mask_one_event(event: SSEEvent, masker: StreamMasker, effect) -> bytes:  # type: ignore[no-untyped-def]
    """What SSEPass does with one event, less the other response stages and the audit row."""
    message = loads_strict_text(event.data or "")
    masked = masker.mask(message, effect).value
    raw = (event.data or "").encode()
    data = event.data if verbatim(raw, [message], [masked]) else dumps(masked).decode()
    return encode_event(replace(event, data=data))


def sse_stream(events: int) -> bytes:
    """Events like the sse scenario's upstream sends: ~1 KB progress notifications."""
    pad = "x" * 860
    return b"".join(
        b"data: "
        + json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": 1, "progress": i, "sent_ns": time.time_ns()},
                "pad": pad,
            }
        ).encode()
        + b"\n\n"
        for i in range(events)
    )


def mask_stream(stream: bytes, effect) -> int:  # type: ignore[no-untyped-def]
    decoder, masker, sent = SSEDecoder(), StreamMasker(), 0
    for start in range(0, len(stream), 16384):  # as chunks arrive
        for event in decoder.feed(stream[start : start + 16384]):
            sent += len(mask_one_event(event, masker, effect))
    return sent


def best_of(repeat: int, run) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def scenario_approvals(quick: bool, against: Baseline | None = None) -> dict:
    """Reading approvals from a store that has seen many (`scripts/bench_approvals.py`, one
    process per tree): the held calls' sweep of 10 approvals, the pending list and the whole
    list, best of rounds; with `--against`, the same at REV on the same machine."""
    count = 2_000 if quick else 20_000
    trees = {"gateway": ROOT}
    if against is not None:
        trees[f"gateway@{against.revision}"] = against.script.parent.parent
    out: dict = {}
    for name, tree in trees.items():
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_approvals.py"), "--tree", str(tree)]
        cmd += ["--approvals", str(count), "--repeat", "3" if quick else "7"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(done.stdout.splitlines()[-1])
    table(
        f"approvals: reads from a SQLite store holding {count:,} approvals (best of rounds)",
        [
            [name, r["sweep_10_ms"], r["pending_ms"], r["all_ms"], r["inbox_ms"]]
            for name, r in out.items()
        ],
        ["tree", "sweep of 10 ms", "pending list ms", "whole list ms", "inbox page ms"],
    )
    return out


def scenario_cli(quick: bool) -> dict:
    results = bench_cli.measure(ROOT, 5 if quick else bench_cli.RUNS)
    bench_cli.print_table(ROOT, results)
    return results


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

            def decide(p: Policy = policy, repeats: int = repeats) -> None:
                for _ in range(repeats):
                    p.evaluate(Caller(), "up", call)

            # best of rounds: a few microseconds are easily doubled by a busy neighbour
            seconds = best_of(3 if quick else 7, decide)
            out[f"{kind}_rules_{n}_us"] = 1e6 * seconds / repeats
    table(
        "policy: one decision that no rule matches (the worst case)",
        [
            [kind] + [out[f"{kind}_rules_{n}_us"] for n in (10, 100, 1000)]
            for kind in ("tool", "args")
        ],
        ["rules on", "10 (µs)", "100 (µs)", "1,000 (µs)"],
    )
    return out


BENCH_ROW = {
    "ts": "2026-12-01T00:00:00.000000Z",
    "flow_id": "f" * 36,
    "session_id": "s" * 32,
    "direction": "response",
    "user": "bench-user",
    "groups": '["bench"]',
    "upstream": "fast",
    "method": "tools/call",
    "decision": "pass",
    "config_hash": "c" * 64,
    "args_masked": json.dumps({"content": [{"type": "text", "text": "x" * 800}]}),
}
CHAIN_BATCH = 100


def chain_writer(location: str, start_at: float, seconds: float) -> tuple[int, int]:
    """One writer process: 100-row batches into the chain until the time is up (bounded in
    count too); the rows it wrote, and the batches it had to retry because the store stayed
    locked past its busy timeout (SQLite with several writer processes), as the audit
    writer retries them. Its own store, as each replica's audit writer has."""
    rows = [("events", normalize_row("events", BENCH_ROW))] * CHAIN_BATCH
    store_class = PostgresStore if location.startswith("postgresql://") else SqliteStore
    with store_class(location) as db:
        time.sleep(max(0.0, start_at - time.time()))
        batches = retried = 0
        while time.time() < start_at + seconds and batches < 100_000:
            try:
                db.append_batch(rows)
            except StoreUnavailable:
                retried += 1
                continue
            batches += 1
    return batches * CHAIN_BATCH, retried


def chain_rate(location: str, writers: int, seconds: float) -> float:
    """Rows/s that `writers` processes append together to the store at `location` (lock
    timeouts retried, and said)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(writers) as pool:
        start_at = time.time() + 2  # every process connected before the clock starts
        done = [pool.submit(chain_writer, location, start_at, seconds) for _ in range(writers)]
        results = [f.result(timeout=seconds + 120) for f in done]
    retried = sum(r for _, r in results)
    if retried:
        print(f"  {location}: {writers} writers, {retried} batches retried (store locked)")
    return sum(rows for rows, _ in results) / seconds


def scenario_chain(quick: bool) -> dict:
    from helpers.postgres import start_postgres, stop_postgres

    seconds = 3 if quick else 10
    result: dict[str, dict[str, float]] = {"postgresql": {}, "sqlite": {}}
    server = start_postgres(durable=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for writers in (1, 2, 4):
                url = server.fresh_database()
                PostgresStore(url).close()  # the schema, made once before the writers start
                result["postgresql"][str(writers)] = chain_rate(url, writers, seconds)
                path = str(Path(tmp) / f"chain-{writers}.sqlite3")
                SqliteStore(path).close()
                result["sqlite"][str(writers)] = chain_rate(path, writers, seconds)
    finally:
        stop_postgres(server)
    table(
        f"chain: rows/s appended by concurrent writers ({CHAIN_BATCH}-row batches, fsync on)",
        [[backend, *rates.values()] for backend, rates in result.items()],
        ["store", "1 writer", "2 writers", "4 writers"],
    )
    return result


def haproxy_config(port: int, backends: list[tuple[int, int]]) -> str:
    """HAProxy in front of the replicas (docs/operations.md, "Running replicas", shows this one):
    a session's requests go to one replica (hashed on its Mcp-Session-Id; round robin for
    requests without one), only while its `/readyz` (on its admin port) answers 200.
    `backends`: each replica's proxy port and admin port."""
    servers = "\n".join(
        f"    server gw{n} 127.0.0.1:{backend} check port {admin} inter 2s"
        for n, (backend, admin) in enumerate(backends, 1)
    )
    return f"""global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend mcp
    bind 127.0.0.1:{port}
    default_backend holdgate
backend holdgate
    balance hdr(Mcp-Session-Id)
    hash-type consistent
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""


@contextmanager
def haproxy(tmp: Path, backends: list[tuple[int, int]]) -> Iterator[int]:
    """HAProxy in the foreground on a loopback port; stopped (by its pid) at the end."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise SystemExit("the replicas scenario needs HAProxy: run scripts/system-deps.sh --bench")
    port = free_port()
    config = tmp / f"haproxy-{port}.cfg"
    config.write_text(haproxy_config(port, backends))
    proc = subprocess.Popen([binary, "-db", "-f", str(config)])
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        stop(proc)


def scenario_replicas(quick: bool) -> dict:
    from helpers.postgres import start_postgres, stop_postgres

    server = start_postgres(durable=True)
    runs: dict[str, list[dict]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name, upstream() as up, ExitStack() as stack:
            tmp = Path(tmp_name)
            signer = Signer(tmp)
            auth = {"Authorization": f"Bearer {signer.token}"}
            # the clients name HAProxy's address in `Host`, which is not the gateways' own
            config = gateway_config(up, signer.jwks) + (
                "hash_key: bench-shared-hash-key\nallowed_hosts: ['127.0.0.1:*']\n"
            )
            url = server.fresh_database()
            admins = [free_port() for _ in range(2)]
            gateways = [
                Proxy(tmp, up, config, f"holdgate_admin=127.0.0.1:{admin}", store=url)
                for admin in admins
            ]
            for gateway in gateways:
                stack.callback(gateway.stop)
            backends = [(g.port, admin) for g, admin in zip(gateways, admins, strict=True)]
            for _, admin in backends:
                wait_until_ready(admin)
            fronts = {
                "1 replica": stack.enter_context(haproxy(tmp, backends[:1])),
                "2 replicas": stack.enter_context(haproxy(tmp, backends)),
            }
            for port in fronts.values():
                drive(port, 16, 64, 20, auth)  # warm-up
            for _ in range(1 if quick else 3):
                for name, port in fronts.items():
                    runs.setdefault(name, []).append(
                        drive(port, 16, 1000 if quick else 4000, 90, auth)
                    )
    finally:
        stop_postgres(server)
    summary = {name: median_runs(r) for name, r in runs.items()}
    summary["speedup"] = summary["2 replicas"]["rps"] / summary["1 replica"]["rps"]
    table(
        "replicas: tools/call at c16 through HAProxy, gateways on one PostgreSQL store",
        [
            [name, r["rps"], r["p50_ms"], r["p99_ms"]]
            for name, r in summary.items()
            if isinstance(r, dict)
        ]
        + [["2 / 1", f"{summary['speedup']:.2f}x", "", ""]],
        ["behind HAProxy", "req/s", "p50 ms", "p99 ms"],
    )
    return summary


SCENARIOS = {
    "proxy": scenario_proxy,
    "mix": scenario_mix,
    "sse": scenario_sse,
    "audit": scenario_audit,
    "writeahead": scenario_writeahead,
    "holds": scenario_holds,
    "metrics": scenario_metrics,
    "exchange": scenario_exchange,
    "tracing": scenario_tracing,
    "shadow": scenario_shadow,
    "masking": scenario_masking,
    "hooks": scenario_hooks,
    "policy": scenario_policy,
    "cli": scenario_cli,
    "approvals": scenario_approvals,
    "chain": scenario_chain,
    "replicas": scenario_replicas,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--sse-rate",
        type=int,
        default=SSE_RATE,
        help=f"events/s of the sse scenario's stream (default {SSE_RATE})",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="proxy, mix, hooks and sse: also run the gateway as it was at this git revision "
        "(before/after for a change; interleaved in the same run, sse: its stream after)",
    )
    parser.add_argument(
        "--levels",
        default="1,16,64",
        help="proxy: the concurrency levels, comma-separated (default 1,16,64; "
        "`--levels 16` for a quicker before/after)",
    )
    parser.add_argument(
        "--pure-vs-compiled",
        action="store_true",
        help="run each scenario in child processes with HOLDGATE_PURE_PYTHON=1 and without "
        "(the mypyc build in build/compiled), interleaved round by round; every figure side "
        "by side",
    )
    parser.add_argument("--report-to", type=Path, help=argparse.SUPPRESS)  # for those children
    args = parser.parse_args()
    try:
        args.levels = tuple(int(level) for level in args.levels.split(","))
    except ValueError:
        parser.error(f"--levels: {args.levels!r} is not a comma-separated list of integers")
    if args.pure_vs_compiled:
        pure_vs_compiled(args)
        return
    with ExitStack() as stack:
        against = stack.enter_context(baseline(args.against)) if args.against else None
        run_scenarios(args, against)


def run_scenarios(args: argparse.Namespace, against: Baseline | None) -> None:
    scenarios = {
        **SCENARIOS,
        "sse": partial(scenario_sse, rate=args.sse_rate, against=against),
        "proxy": partial(scenario_proxy, against=against, levels=args.levels),
        "mix": partial(scenario_mix, against=against),
        "hooks": partial(scenario_hooks, against=against),
        "approvals": partial(scenario_approvals, against=against),
    }
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "cpu": _cpu_model(),
        },
    }
    # replicas needs HAProxy (scripts/system-deps.sh --bench): only when asked for
    for name in args.scenario or [name for name in SCENARIOS if name != "replicas"]:
        report[name] = scenarios[name](args.quick)
    report["targets"] = print_targets(report)
    if args.report_to is not None:
        args.report_to.write_text(json.dumps(report))
        return
    folder = ROOT / "bench-results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{report['when'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written to {path}")


def pure_vs_compiled(args: argparse.Namespace) -> None:
    """Each scenario run in a child with the pure modules and in one with the compiled ones
    (`holdgate.compiled`), alternating; every figure's median of rounds, side by side."""
    modes = {"pure": {"HOLDGATE_PURE_PYTHON": "1"}, "compiled": {"HOLDGATE_PURE_PYTHON": ""}}
    for name in args.scenario or [name for name in SCENARIOS if name != "replicas"]:
        figures: dict[str, dict[str, list[float]]] = {mode: {} for mode in modes}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(1 if args.quick else 3):
                for mode, env in modes.items():
                    out = Path(tmp) / f"{mode}.json"
                    cmd = [sys.executable, __file__, "--scenario", name, "--report-to", str(out)]
                    cmd += ["--quick"] if args.quick else []
                    subprocess.run(
                        cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL
                    )
                    for key, value in _leaves(json.loads(out.read_text())[name]):
                        figures[mode].setdefault(key, []).append(value)
        rows = []
        for key, pure in figures["pure"].items():
            before = statistics.median(pure)
            after = statistics.median(figures["compiled"].get(key, [before]))
            change = f"{100 * (after - before) / before:+.0f}%" if before else "-"
            rows.append([key, before, after, change])
        table(
            f"{name}: pure Python against compiled (mypyc)",
            rows,
            ["figure", "pure", "compiled", "change"],
        )


def _leaves(value: object, prefix: str = "") -> Iterator[tuple[str, float]]:
    """The numbers in a scenario's summary, by their path of keys."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, f"{prefix}{key} " if prefix or key else prefix)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield prefix.strip(), float(value)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
