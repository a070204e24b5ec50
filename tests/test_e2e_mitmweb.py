"""Held flows decided in a real mitmweb: resume approves, kill denies, both on record."""

from __future__ import annotations

import html
import http.cookiejar
import json
import re
import sqlite3
import subprocess
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from helpers import oneshot
from helpers.approvals import APPROVALS_CONFIG, DELETE, sql_calls, wait_for_pending
from helpers.browser import dump_dom, screenshot
from helpers.clients import connect
from helpers.configs import ALICE
from helpers.processes import (
    BIN,
    free_port,
    gateway_command,
    stop,
    wait_for_port,
    wait_for_started,
)
from holdgate.cli.records_cli import timeline_line

pytestmark = pytest.mark.anyio

WEB_PASSWORD = "mitmweb-test-password"
WAIT_FOR_UI = "--virtual-time-budget=5000"  # mitmweb fills its list from a WebSocket


class MitmwebAPI:
    """mitmweb's own REST API, authenticated like its UI (token, then XSRF cookie)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(f"{self.base}/?token={WEB_PASSWORD}", timeout=10).read()

    def get(self, path: str) -> bytes:
        with self.opener.open(self.base + path, timeout=10) as response:
            return response.read()

    def post(self, path: str) -> int:
        return self.send("POST", path, b"")

    def put(self, path: str, update: dict) -> int:
        return self.send("PUT", path, json.dumps(update).encode())

    def send(self, method: str, path: str, data: bytes) -> int:
        # Tornado's XSRF check wants the same token in a cookie and a header; the UI's
        # JavaScript does exactly this.
        xsrf = "holdgate-test-xsrf"
        headers = {"X-XSRFToken": xsrf, "Cookie": f"_mitmproxy_xsrf={xsrf}; {self._auth()}"}
        headers["Content-Type"] = "application/json"
        url = self.base + path
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    def _auth(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


@pytest.fixture
def mitmweb(tmp_path, demo):
    proc, url, api, db = start_mitmweb(tmp_path, demo)
    yield url, api, db
    stop(proc)


def start_mitmweb(
    tmp_path: Path, demo, *options: str
) -> tuple[subprocess.Popen[bytes], str, MitmwebAPI, Path]:
    port, web_port = free_port(), free_port()
    config = tmp_path / "holdgate.yaml"
    config.write_text(
        textwrap.dedent(APPROVALS_CONFIG.format(url=demo.url, timeout="30s", grant="0s"))
    )
    output = tmp_path / "mitmweb.out"
    cmd = gateway_command(tool=str(BIN / "mitmweb"))
    cmd += ["--mode", f"reverse:{demo.url}", "--listen-host", "127.0.0.1"]
    cmd += ["--listen-port", str(port), "--web-host", "127.0.0.1", "--web-port", str(web_port)]
    cmd += ["--no-web-open-browser", "--set", f"web_password={WEB_PASSWORD}"]
    cmd += ["--set", f"holdgate_config={config}", "--set", f"holdgate_store={tmp_path / 'a.db'}"]
    cmd += ["--set", f"holdgate_recordings={tmp_path / 'rec'}", "--set", "holdgate_admin="]
    for option in options:
        cmd += ["--set", option]
    with output.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)
    wait_for_port(port, proc, output)
    wait_for_port(web_port, proc, output)
    return proc, f"http://127.0.0.1:{port}", MitmwebAPI(web_port), tmp_path / "a.db"


async def held_delete(client, db: Path, act: Callable[[str], None]) -> tuple[Any, dict]:
    """Call the held DELETE and let `act` work on its flow in mitmweb (given the flow's API
    path) while it waits; returns what the call got and the approval that held it."""
    outcome: list = []
    async with anyio.create_task_group() as tg:

        async def call():
            try:
                outcome.append(await client.call_tool("run_sql", DELETE))
            except MCPError as exc:
                outcome.append(exc)

        tg.start_soon(call)
        pending = await wait_for_pending(db)
        act(f"/flows/{pending['flow_id']}")
    return outcome[0], pending


@pytest.mark.parametrize("action", ["resume", "kill"])
async def test_mitmweb_buttons_decide_held_flows(mitmweb, demo, action):
    url, api, db = mitmweb

    def press(flow_path: str) -> None:
        assert api.post(f"{flow_path}/{action}") == 200

    async with connect(url + "/mcp", ALICE) as client:
        outcome, pending = await held_delete(client, db, press)
        # the session survives either way
        assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
    record = oneshot.approval(db, pending["approval_id"])
    assert record["decider"] == "mitmweb operator"
    if action == "resume":
        assert record["state"] == "approved"
        assert not outcome.is_error
        assert sql_calls(demo) == [DELETE["query"]]
    else:
        assert record["state"] == "denied"
        assert isinstance(outcome, MCPError) and outcome.code == -32004
        assert sql_calls(demo) == []


async def test_held_flow_edited_in_mitmweb_is_void_and_never_forwarded(mitmweb, demo, tmp_path):
    url, api, db = mitmweb

    def edit_then_resume(flow_path: str) -> None:
        held = json.loads(api.get(flow_path + "/request/content.data"))
        held["params"]["arguments"]["query"] = "DELETE FROM orders"  # every order, now
        assert api.put(flow_path, {"request": {"content": json.dumps(held)}}) == 200
        assert api.post(flow_path + "/resume") == 200

    async with connect(url + "/mcp", ALICE) as client:
        outcome, pending = await held_delete(client, db, edit_then_resume)
        assert isinstance(outcome, MCPError) and outcome.code == -32004
        assert "approval void" in outcome.error.message
        assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
    assert sql_calls(demo) == []
    assert oneshot.approval(db, pending["approval_id"])["state"] == "approved"
    with sqlite3.connect(db) as conn:
        query = "SELECT * FROM events WHERE approval_id = ? AND direction = 'request'"
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute(query, [pending["approval_id"]]).fetchone())
    assert json.loads(row["extra"])["refused"]["kind"] == "tampered"
    assert "approve by 'destructive SQL needs a DBA'" in timeline_line(row)
    assert timeline_line(row).endswith("[200] refused: tampered")
    recorded = await recorded_flow(tmp_path / "rec", pending["flow_id"])
    # mitmweb keeps a backup of an edited flow: the caller's key must not ride along in it
    assert ALICE["X-API-Key"].encode() not in recorded


async def recorded_flow(folder: Path, flow_id: str) -> bytes:
    """The flow files once they hold `flow_id` (they are written after the flow ends)."""
    with anyio.fail_after(15):
        while flow_id.encode() not in (found := b"".join(map(Path.read_bytes, folder.glob("*")))):
            await anyio.sleep(0.1)
    return found


def comment_cells(dom: str) -> list[str]:
    """The text of each row's comment cell in mitmweb's flow list."""
    return [html.unescape(cell) for cell in re.findall(r'<td class="col-comment">([^<]*)', dom)]


async def test_the_flow_list_shows_each_decision_in_its_comment_column(mitmweb, demo, tmp_path):
    """A denied, an approved and a held call, as mitmweb's list shows them in Chromium
    (#28): the comment column is there without the operator asking, each row naming the
    caller, the tool and the decision."""
    url, api, db = mitmweb
    page = f"{api.base}/?token={WEB_PASSWORD}"
    second = {"query": "DELETE FROM orders WHERE id = 2"}

    def approve(flow_path: str) -> None:
        assert api.post(f"{flow_path}/resume") == 200

    async with connect(url + "/mcp", ALICE) as client:
        with pytest.raises(MCPError):
            await client.call_tool("exec_shell", {"command": "id"})
        outcome, _ = await held_delete(client, db, approve)
        assert not outcome.is_error
        refused: list[MCPError] = []

        async def call_held() -> None:
            try:
                await client.call_tool("run_sql", second)
            except MCPError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_held)
            held = await wait_for_pending(db)
            with anyio.fail_after(30):
                while True:  # the UI fills the list over its WebSocket
                    dom = await anyio.to_thread.run_sync(lambda: dump_dom(page, WAIT_FOR_UI))
                    cells = [c for c in comment_cells(dom) if "tools/call" in c]
                    if len(cells) == 3:
                        break
                    await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(
                lambda: screenshot(page, str(tmp_path / "mitmweb-list.png"), WAIT_FOR_UI)
            )
            assert api.post(f"/flows/{held['flow_id']}/kill") == 200  # Abort: denied
    assert refused[0].code == -32004
    assert (tmp_path / "mitmweb-list.png").read_bytes().startswith(b"\x89PNG")
    assert '<th class="col-comment"' in dom
    denied = next(c for c in cells if "exec_shell" in c)
    assert denied.startswith("holdgate: alice tools/call exec_shell: deny (rule 'default-deny')")
    approved = [c for c in cells if "run_sql: approved" in c]
    assert len(approved) == 1
    assert approved[0].startswith(
        "holdgate: alice tools/call run_sql: approved by mitmweb operator"
    )
    waiting = [c for c in cells if "run_sql: hold" in c]
    assert len(waiting) == 1
    assert f"approval {held['approval_id']}; approvers dba; expires " in waiting[0]


@pytest.mark.parametrize(
    ("options", "columns"),
    [
        ((), ["tls", "icon", "path", "method", "status", "size", "time", "comment"]),
        (("web_columns=path", "web_columns=status"), ["path", "status"]),  # the operator's
    ],
)
def test_the_comment_column_is_added_unless_the_operator_chose_columns(
    tmp_path, demo, options, columns
):
    proc, _, api, _ = start_mitmweb(tmp_path, demo, *options)
    try:
        wait_for_started(proc, tmp_path / "mitmweb.out")
        assert json.loads(api.get("/options.json"))["web_columns"]["value"] == columns
    finally:
        stop(proc)
