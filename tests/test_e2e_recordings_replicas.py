"""Flow files of two replicas on one PostgreSQL store: a session spread over both is
gathered from the files' names and from the store's `recordings` rows, and a file edited
after it was closed is shown as changed by `holdgate sessions show --recordings`; the
files a stopping gateway closes are on record too."""

from __future__ import annotations

import hashlib
import socket

import anyio
import pytest
from mitmproxy.io import FlowReader

from helpers.clients import raw_post
from helpers.configs import ALICE, identity
from helpers.processes import holdgate_cli, stop
from holdgate import store
from holdgate.recording.flowfiles import recording_files
from holdgate.recording.segments import replica_stem

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
hash_key: recordings-replicas-key-91c2
rules:
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list]}}
    action: allow
  - name: support
    match: {{groups: [support], tool: get_customer}}
    action: allow
"""
)
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
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def call(n: int) -> dict:
    params = {"name": "get_customer", "arguments": {"customer_id": n}}
    return {"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call", "params": params}


async def recorded(pg_url: str, session: str, files: int) -> list[store.RecordingRow]:
    """The session's `recordings` rows, once there are `files` of them (segments close
    after a second without a flow)."""
    with anyio.fail_after(30):
        while True:
            with store.open_store(pg_url, create=False) as opened:
                rows = opened.session_recordings([session])
            if len(rows) >= files:
                return rows
            await anyio.sleep(0.2)


async def test_a_session_over_two_replicas_is_gathered_and_an_edited_file_shows(
    demo, gateway_factory, pg_url
):
    options = {"holdgate_store": pg_url}
    first = gateway_factory(CONFIG.format(url=demo.url), demo.url, options=options)
    second = gateway_factory(CONFIG.format(url=demo.url), demo.url, options=options)
    opened = raw_post(first.url + "/mcp", INITIALIZE, ALICE)
    assert opened.status == 200
    session = {k.lower(): v for k, v in opened.headers.items()}["mcp-session-id"]
    headers = {**ALICE, "Mcp-Session-Id": session}
    assert raw_post(first.url + "/mcp", INITIALIZED, headers).status == 202
    assert raw_post(first.url + "/mcp", call(1), headers).status == 200
    assert raw_post(second.url + "/mcp", call(2), headers).status == 200  # the other replica

    rows = await recorded(pg_url, session, 2)
    host = socket.gethostname()
    replicas = {f"{host}:127.0.0.1:{first.port}", f"{host}:127.0.0.1:{second.port}"}
    assert {row["replica"] for row in rows} == replicas
    folder = first.recordings  # both replicas write into one folder here
    files = recording_files(folder, session)
    assert sorted(p.name for p in files) == sorted(row["file"] for row in rows)
    for row in rows:
        assert row["file"].endswith(f"+{replica_stem(row['replica'] or '')}.mitm")
    calls = []
    for path in files:
        with path.open("rb") as fh:
            flows = list(FlowReader(fh).stream())
        assert len(flows) == next(r["flows"] for r in rows if r["file"] == path.name)
        calls += [f for f in flows if b"tools/call" in (f.request.content or b"")]
    assert len(calls) == 2
    with store.open_store(pg_url, create=False) as opened_store:
        assert opened_store.verify().ok  # the rows are in the chain

    shown = holdgate_cli(
        "sessions", "show", session, "--recordings", str(folder), "--store", pg_url
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("  ok  ") == len(rows)
    for replica in replicas:
        assert replica in shown.stdout

    edited = folder / rows[-1]["file"]
    edited.write_bytes(edited.read_bytes().replace(b"get_customer", b"get_kustomer"))
    (folder / rows[0]["file"]).unlink()
    shown = holdgate_cli(
        "sessions", "show", session, "--recordings", str(folder), "--store", pg_url
    )
    assert shown.returncode == 1
    assert f'CHANGED  {rows[-1]["replica"]}  "{rows[-1]["file"]}"' in shown.stdout
    assert f'MISSING  {rows[0]["replica"]}  "{rows[0]["file"]}"' in shown.stdout
    assert "not as they were recorded" in shown.stderr


async def test_a_hostile_session_id_stays_in_the_recordings_folder(demo, gateway_factory, pg_url):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url, options={"holdgate_store": pg_url})
    hostile = "../../escaped+x/..%2f..\\evil"
    answered = raw_post(gw.url + "/mcp", call(1), {**ALICE, "Mcp-Session-Id": hostile})
    assert answered.status in (400, 404)  # the upstream does not know it; still recorded
    rows = await recorded(pg_url, hostile, 1)
    assert [row["session_id"] for row in rows] == [hostile]
    name = rows[0]["file"]
    assert "/" not in name and "\\" not in name and name.count("+") == 2
    assert (gw.recordings / name).is_file()
    assert not list(gw.cwd.parent.glob("escaped*")) and not list(gw.cwd.glob("escaped*"))
    assert recording_files(gw.recordings, hostile) == [gw.recordings / name]
    shown = holdgate_cli(
        "sessions", "show", hostile, "--recordings", str(gw.recordings), "--store", pg_url
    )
    assert shown.returncode == 0, shown.stderr
    assert f'  ok  {rows[0]["replica"]}  "{name}"' in shown.stdout


async def test_the_files_closed_at_shutdown_are_on_record(demo, gateway_factory):
    """The recordings process closes its open files as the gateway stops; their rows must
    still reach the store (it used to be closed first, and the last files went unrecorded)."""
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    opened = raw_post(gw.url + "/mcp", INITIALIZE, ALICE)
    session = {k.lower(): v for k, v in opened.headers.items()}["mcp-session-id"]
    assert raw_post(gw.url + "/mcp", call(1), {**ALICE, "Mcp-Session-Id": session}).status == 200
    stop(gw.proc)  # at once: the session's file is still open
    assert "was not recorded in the store" not in gw.log_text()
    files = recording_files(gw.recordings, session)
    assert len(files) == 1
    with store.open_store(str(gw.db), create=False) as opened_store:
        rows = opened_store.session_recordings([session])
        assert opened_store.verify().ok
    assert [row["file"] for row in rows] == [files[0].name]
    assert rows[0]["sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()
