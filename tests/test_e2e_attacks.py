"""Attacks on a real gateway (issue 13): a low-privilege or unknown client, a hostile
upstream (`helpers.upstreams.hostile_answer`) and a careless operator. Each test ends by
checking that no injected credential, caller key or test PII reached the store, the flow
files or the log.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import brotli
import pytest

from helpers.clients import raw_post
from helpers.configs import ALICE, identity
from helpers.leaks import assert_nothing_leaked, spellings
from helpers.processes import Gateway, free_port, gateway_command, stop
from helpers.upstreams import ECHO_FORMS, PII_CARD, PII_EMAIL

TOKEN = "hg-upstream-secret-7f3a9c2e41"
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: hostile
    {where}
    inject:
      headers:
        Authorization: "Bearer ${{env:HOSTILE_TOKEN}}"
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email, phone, credit_card]
    strategy: redact
"""
)
NEVER_RECORDED = (TOKEN, ALICE["X-API-Key"], PII_EMAIL, PII_CARD.replace(" ", ""), PII_CARD)


def call(name: str = "lookup", msg_id: int = 1) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": {}},
    }


@pytest.fixture
def gateway(hostile, gateway_factory):
    return gateway_factory(
        CONFIG.format(where=f"url: {hostile.url}"), hostile.url, env={"HOSTILE_TOKEN": TOKEN}
    )


def rows(gw: Gateway, sql: str) -> list[tuple]:
    with sqlite3.connect(gw.db) as db:
        return db.execute(sql).fetchall()


# --- hostile upstream ----------------------------------------------------------------------


def test_reflected_credential_and_header_pii_never_reach_the_client(gateway, hostile):
    response = raw_post(gateway.url + "/echo", call(), ALICE)
    assert response.status == 200, response.body
    assert hostile.received[-1].headers["authorization"] == f"Bearer {TOKEN}"  # it was sent
    everything = response.body + json.dumps(response.headers).encode()
    assert TOKEN.encode() not in everything
    assert PII_EMAIL.encode() not in everything
    assert "Set-Cookie" not in response.headers  # the upstream may not set cookies
    assert "[REDACTED:injected_credential]" in response.json()["result"]["seen"]["authorization"]
    assert_nothing_leaked(gateway, *NEVER_RECORDED)


@pytest.mark.parametrize("path", ["/escaped-echo", "/escaped-sse"])
def test_a_credential_reflected_in_unicode_escapes_never_reaches_the_client(gateway, path):
    # Unchanged answers go out as the upstream's bytes; escapes must not hide a reflection.
    headers = {**ALICE, "Accept": "application/json, text/event-stream"}
    response = raw_post(gateway.url + path, call(), headers)
    assert response.status == 200, response.body
    body = response.body.decode()
    assert TOKEN not in body and hostile_spelled(TOKEN) not in body
    data = body.split("data: ", 1)[1] if path.endswith("sse") else body
    seen = json.loads(data)["result"]["seen"]
    assert TOKEN not in seen and "[REDACTED:injected_credential]" in seen
    assert_nothing_leaked(gateway, *NEVER_RECORDED)


def echoed_text(body: bytes) -> str:
    """What an echo tool's answer says, as a client puts it back together: the `text` and
    `data` strings of every message (JSON body or event stream), in order."""
    datas = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    messages = [json.loads(data) for data in datas] if datas else [json.loads(body)]
    return "".join(text for message in messages for text in _texts(message))


def _texts(value, key: str = "") -> list[str]:
    if isinstance(value, str):
        return [value] if key in ("text", "data") else []
    if isinstance(value, dict):
        return [s for name, item in value.items() for s in _texts(item, name)]
    if isinstance(value, list):
        return [s for item in value for s in _texts(item, key)]
    return []


def test_every_spelling_of_a_reflected_credential_is_replaced(gateway, hostile):
    # An echo or dump tool hands back the injected Authorization as base64 of a request
    # dump (at each byte alignment, both alphabets), hex, another letter case, escaped,
    # and cut in two content[] texts or two events of a stream.
    folded, exact = spellings(TOKEN)
    missed = []
    for form in ECHO_FORMS:
        for how in ("reflect", "reflect-parts", "reflect-sse"):
            response = raw_post(f"{gateway.url}/{how}/{form}", call(), ALICE)
            assert response.status == 200, (form, how, response.body)
            text = echoed_text(response.body)
            clear = [f for f in exact if f in text.encode()]
            clear += [f for f in folded if f in text.lower().encode()]
            if clear or "[REDACTED:injected_credential]" not in text:
                missed.append((how, form, clear))
    assert not missed
    assert len(hostile.received) == 3 * len(ECHO_FORMS)
    assert_nothing_leaked(gateway, *NEVER_RECORDED)


def hostile_spelled(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def test_202_with_a_body_is_masked_and_recorded(gateway):
    response = raw_post(gateway.url + "/accepted", call(), ALICE)
    assert response.status == 202
    text = response.json()["result"]["content"][0]["text"]
    assert PII_EMAIL not in text and "4111" not in text
    stop(gateway.proc)
    recorded = rows(gateway, "select masked from events where direction = 'response'")
    assert recorded and "email" in recorded[0][0]
    assert_nothing_leaked(gateway, *NEVER_RECORDED)


def test_event_stream_with_a_content_length_is_reframed_and_fully_masked(gateway):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    body = json.dumps(call()).encode()
    conn.request(
        "POST",
        "/sse-cl",
        body,
        {"Content-Type": "application/json", "Accept": "text/event-stream", **ALICE},
    )
    response = conn.getresponse()
    assert response.getheader("content-length") is None
    assert response.getheader("transfer-encoding") == "chunked"
    data = response.read()  # hangs (times out) if the framing is wrong
    assert b'"text": "mail' in data or b'"text":"mail' in data
    assert PII_EMAIL.encode() not in data
    assert b"comment about" not in data
    conn.request(
        "POST",
        "/plain",
        json.dumps(call(msg_id=2)).encode(),
        {"Content-Type": "application/json", **ALICE},
    )
    again = conn.getresponse()  # the kept-alive connection is still in step
    assert again.status == 200 and json.loads(again.read())["id"] == 2
    assert_nothing_leaked(gateway, *NEVER_RECORDED)


# --- hostile client ------------------------------------------------------------------------


def test_batch_whose_requests_share_an_id_is_refused(gateway, hostile):
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    ]
    response = raw_post(gateway.url + "/mcp", batch, ALICE)
    assert response.status == 400
    assert "share the id 1" in response.json()["error"]["message"]
    assert hostile.received == []


@pytest.mark.parametrize(
    "path", ["/public/../admin/mcp", "/%2e%2e/mcp", "/public/..%2fadmin", "/a//mcp", "/a/./mcp"]
)
def test_non_canonical_paths_are_refused(gateway, hostile, path):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("POST", path, json.dumps(call()), {"Content-Type": "application/json", **ALICE})
    response = conn.getresponse()
    assert response.status == 400
    assert "canonical" in json.loads(response.read())["error"]["message"]
    assert hostile.received == []


def test_get_with_a_body_is_refused(gateway, hostile):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("GET", "/mcp", json.dumps(call("exec_shell")), ALICE)
    response = conn.getresponse()
    assert response.status == 400
    assert hostile.received == []


def test_unauthenticated_requests_create_no_session_and_no_flow_file(gateway, hostile):
    for n in range(20):
        response = raw_post(
            gateway.url + "/mcp", call(), {"X-API-Key": "wrong", "Mcp-Session-Id": f"s-{n}"}
        )
        assert response.status == 401
    assert hostile.received == []
    stop(gateway.proc)
    assert rows(gateway, "select count(*) from sessions") == [(0,)]
    assert rows(gateway, "select count(*), count(session_id) from events") == [(20, 0)]
    assert not gateway.recordings.exists() or not any(gateway.recordings.iterdir())


def read_response(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (30 s at most)."""
    sock.settimeout(30)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize("credential", [b"", b"X-API-Key: wrong\r\n"], ids=["none", "wrong"])
def test_a_body_without_a_valid_key_is_answered_401_before_it_is_sent(gateway, hostile, credential):
    """Headers announcing an upload just under holdgate_max_body, and no body sent: the 401
    comes at once on the headers and the connection is closed, so the gateway never reads
    the body (before, it waited for all of it); the refusal is still recorded."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % gateway.port
        + b"Content-Type: application/json\r\n"
        + credential
        + b"Content-Length: 4000000\r\n\r\n"
    )
    answer = read_response(sock)  # nothing of the body was sent
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"connection: close" in head.lower() and b"www-authenticate: bearer" in head.lower()
    assert json.loads(body)["error"]["code"] == -32001
    with pytest.raises(OSError):  # closed: what the client still sends is refused
        for _ in range(64):
            sock.sendall(b" " * 65536)
            time.sleep(0.01)
    sock.close()
    assert hostile.received == []
    stop(gateway.proc)
    assert rows(gateway, "select decision, reason from events") == [
        (
            "unauthenticated",
            f"unauthorized: {'unknown API key' if credential else 'no credentials'}",
        )
    ]


def test_a_body_with_a_valid_key_is_still_read_and_forwarded(gateway, hostile):
    """Only an answer given on the headers closes early: a caller with a key is served."""
    body = json.dumps(call()).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        % gateway.port
        + b"Content-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\nConnection: close\r\n"
        + f"X-API-Key: {ALICE['X-API-Key']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    sock.sendall(body)
    answer = read_response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert len(hostile.received) == 1


def test_huge_chunked_body_is_cut_while_read_not_buffered(gateway, hostile):
    """64 MB announced in chunks with a bad key: refused on its headers and closed (the 401
    may be lost to the reset of a connection closed with unread data), RSS stays low."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % gateway.port + b"X-API-Key: wrong\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    sent = 0
    try:
        for _ in range(1024):  # at most 64 MB
            sock.sendall(chunk)
            sent += 65536
    except OSError:
        pass
    answer = sock.recv(65536)
    sock.close()
    assert sent < 16 * 1024 * 1024
    assert answer.startswith(b"HTTP/1.1 401") or answer == b""
    rss_kb = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{gateway.proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS")
        )
    )
    assert rss_kb < 300 * 1024
    assert hostile.received == []


def test_decompression_bomb_is_refused_before_it_inflates(gateway, hostile):
    bomb = brotli.compress(b" " * (300 * 1024 * 1024))
    assert len(bomb) < 2048
    response = raw_post(gateway.url + "/mcp", bomb, {**ALICE, "Content-Encoding": "br"})
    assert response.status == 413
    assert "inflates" in response.json()["error"]["message"]
    assert hostile.received == []


def test_a_connection_that_never_finishes_its_headers_is_closed(gateway):
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert sock.recv(1024) == b""  # closed by the gateway, not by our timeout
    # mitmproxy alone would wait for tcp_timeout (600 s).
    assert time.monotonic() - started < 25
    sock.close()
    stop(gateway.proc)  # flushes its log
    assert "no request headers in time" in gateway.log_text()


# --- regular proxy mode: the destination, never the Host header, picks the upstream ---------


def proxied(gw: Gateway, url: str, host: str | None = None) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": gw.url}))
    headers = {"Content-Type": "application/json", **ALICE, **({"Host": host} if host else {})}
    request = urllib.request.Request(url, data=json.dumps(call()).encode(), headers=headers)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_credentials_never_go_to_a_server_the_client_names(hostile, gateway_factory):
    gw = gateway_factory(
        CONFIG.format(where="host: mcp.example.test"),
        hostile.url,
        mode="regular",
        env={"HOSTILE_TOKEN": TOKEN},
    )
    status, _ = proxied(gw, hostile.url + "/mcp", host="mcp.example.test")
    assert status == 400  # Host names another server than the request goes to
    status, _ = proxied(gw, hostile.url + "/mcp")
    assert status == 404  # 127.0.0.1:<port> is not mcp.example.test
    assert TOKEN.encode() not in hostile.everything_received()
    assert hostile.received == []
    assert_nothing_leaked(gw, *NEVER_RECORDED)


def test_a_host_matched_upstream_gets_its_credentials(hostile, gateway_factory):
    gw = gateway_factory(
        CONFIG.format(where=f"host: 127.0.0.1:{hostile.port}"),
        hostile.url,
        mode="regular",
        env={"HOSTILE_TOKEN": TOKEN},
    )
    status, _ = proxied(gw, hostile.url + "/plain")
    assert status == 200
    assert hostile.received[-1].headers["authorization"] == f"Bearer {TOKEN}"


# --- careless operator ---------------------------------------------------------------------


def run_gateway(
    tmp_path: Path, *args: str, config: str | None = None
) -> subprocess.CompletedProcess:
    path = tmp_path / "c.yaml"
    path.write_text(config or CONFIG.format(where="url: http://127.0.0.1:9"))
    cmd = gateway_command(
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(free_port()),
        "--set",
        f"holdgate_store={tmp_path / 'a.sqlite3'}",
        "--set",
        "holdgate_admin=",
        *[a.replace("CONFIG", str(path)) for a in args],
    )
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"HOSTILE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "holdgate_config=CONFIG", "--set", "holdgate_config=CONFIG"],
            "option holdgate_config is set 2 times",
        ),
        (
            ["--set", "holdgate_confg=CONFIG"],
            "unknown option holdgate_confg (did you mean holdgate_config?)",
        ),
        (
            ["--set", "holdgate_config=CONFIG", "--set", "holdgate_max_bdy=1k"],
            "unknown option holdgate_max_bdy (did you mean holdgate_max_body?)",
        ),
        (  # the old name of holdgate_store, never released: unknown, not a second store
            ["--set", "holdgate_config=CONFIG", "--set", "holdgate_db=other.sqlite3"],
            "unknown option holdgate_db",
        ),
    ],
)
def test_a_mistyped_or_repeated_option_stops_the_gateway(tmp_path, args, message):
    done = run_gateway(tmp_path, *args)
    assert done.returncode == 1
    assert message in done.stdout + done.stderr


def test_an_open_ended_upstream_with_credentials_stops_a_regular_proxy(tmp_path):
    config = CONFIG.format(where="prefix: null").replace("    prefix: null\n", "")
    done = run_gateway(tmp_path, "--set", "holdgate_config=CONFIG", config=config)
    assert done.returncode == 1
    assert "injects credentials but has no `url` or `host`" in done.stdout + done.stderr


DROP_GATEWAY = """
from mitmproxy import ctx

def running():
    scripts = ctx.master.addons.get("scriptloader")
    for script in list(scripts.addons):
        if script.path.endswith("gateway.py"):
            ctx.master.addons.remove(script)
            scripts.addons.remove(script)
"""


def test_traffic_is_refused_if_the_bundle_is_dropped_after_start(
    tmp_path, hostile, gateway_factory
):
    dropper = tmp_path / "drop_gateway.py"
    dropper.write_text(DROP_GATEWAY)
    gw = gateway_factory(
        CONFIG.format(where=f"url: {hostile.url}"),
        hostile.url,
        env={"HOSTILE_TOKEN": TOKEN},
        extra_scripts=[str(dropper)],
        wait_started=False,  # the bundle is dropped during start-up: it never says so
    )
    response = raw_post(gw.url + "/plain", call("exec_shell"), {"X-API-Key": "nobody"})
    assert response.status == 503
    assert "not running its checks" in response.json()["error"]["message"]
    assert hostile.received == []


# --- sessions belong to the identity that opened them -------------------------------------

SESSIONS_CONFIG = """
version: 1
identity:
  api_keys:
    - {{name: alice, sha256: {alice}, groups: [support]}}
    - {{name: bob, sha256: {bob}, groups: [support]}}
upstreams:
  - name: demo
    url: {url}
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
"""
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def test_a_session_cannot_be_used_or_ended_by_another_identity(demo, gateway_factory):
    keys = {n: hashlib.sha256(f"key-{n}".encode()).hexdigest() for n in ("alice", "bob")}
    gw = gateway_factory(SESSIONS_CONFIG.format(url=demo.url, **keys), demo.url)
    opened = raw_post(gw.url + "/mcp", INITIALIZE, {"X-API-Key": "key-alice"})
    assert opened.status == 200
    session = {k.lower(): v for k, v in opened.headers.items()}["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    as_bob = raw_post(gw.url + "/mcp", listing, {"X-API-Key": "key-bob", "Mcp-Session-Id": session})
    assert as_bob.status == 404
    assert as_bob.json()["error"]["message"] == "session not found; initialize a new one"
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("DELETE", "/mcp", headers={"X-API-Key": "key-bob", "Mcp-Session-Id": session})
    assert conn.getresponse().status == 404
    as_alice = raw_post(
        gw.url + "/mcp", listing, {"X-API-Key": "key-alice", "Mcp-Session-Id": session}
    )
    assert as_alice.status == 200 and "tools" in as_alice.body.decode()
    stop(gw.proc)
    refused = rows(gw, "select user, decision from events where decision = 'foreign-session'")
    assert refused == [("bob", "foreign-session"), ("bob", "foreign-session")]
