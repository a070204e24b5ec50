"""Held flows decided in a real mitmweb: resume approves, kill denies, both on record."""

from __future__ import annotations

import http.cookiejar
import textwrap
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from conftest import BIN, ROOT, free_port, stop, wait_for_port
from holdgate import store
from mcpclient import connect
from test_e2e_approvals import ALICE, CONFIG, DELETE, sql_calls, wait_for_pending

pytestmark = pytest.mark.anyio

WEB_PASSWORD = "mitmweb-test-password"


class MitmwebAPI:
    """mitmweb's own REST API, authenticated like its UI (token, then XSRF cookie)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(f"{self.base}/?token={WEB_PASSWORD}", timeout=10).read()

    def post(self, path: str) -> int:
        # Tornado's XSRF check wants the same token in a cookie and a header; the UI's
        # JavaScript does exactly this.
        xsrf = "holdgate-test-xsrf"
        request = urllib.request.Request(
            self.base + path,
            data=b"",
            method="POST",
            headers={"X-XSRFToken": xsrf, "Cookie": f"_mitmproxy_xsrf={xsrf}; {self._auth()}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    def _auth(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


@pytest.fixture
def mitmweb(tmp_path, demo):
    port, web_port = free_port(), free_port()
    config = tmp_path / "holdgate.yaml"
    config.write_text(textwrap.dedent(CONFIG.format(url=demo.url, timeout="30s", grant="0s")))
    output = tmp_path / "mitmweb.out"
    cmd = [str(BIN / "mitmweb"), "-s", str(ROOT / "addons" / "gateway.py")]
    cmd += ["--mode", f"reverse:{demo.url}", "--listen-host", "127.0.0.1"]
    cmd += ["--listen-port", str(port), "--web-host", "127.0.0.1", "--web-port", str(web_port)]
    cmd += ["--no-web-open-browser", "--set", f"web_password={WEB_PASSWORD}"]
    cmd += ["--set", f"holdgate_config={config}", "--set", f"holdgate_db={tmp_path / 'a.db'}"]
    cmd += ["--set", f"holdgate_recordings={tmp_path / 'rec'}", "--set", "holdgate_admin="]
    import subprocess

    with output.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)
    wait_for_port(port, proc, output)
    wait_for_port(web_port, proc, output)
    yield f"http://127.0.0.1:{port}", MitmwebAPI(web_port), tmp_path / "a.db"
    stop(proc)


@pytest.mark.parametrize("action", ["resume", "kill"])
async def test_mitmweb_buttons_decide_held_flows(mitmweb, demo, action):
    url, api, db = mitmweb
    async with connect(url + "/mcp", ALICE) as client:
        async with anyio.create_task_group() as tg:
            outcome: list = []

            async def call():
                try:
                    outcome.append(await client.call_tool("run_sql", DELETE))
                except MCPError as exc:
                    outcome.append(exc)

            tg.start_soon(call)
            pending = await wait_for_pending(Path(db))
            assert api.post(f"/flows/{pending['flow_id']}/{action}") == 200
        # the session survives either way
        assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
    record = store.approval(db, pending["approval_id"])
    assert record["decider"] == "mitmweb operator"
    if action == "resume":
        assert record["state"] == "approved"
        assert not outcome[0].is_error
        assert sql_calls(demo) == [DELETE["query"]]
    else:
        assert record["state"] == "denied"
        assert isinstance(outcome[0], MCPError) and outcome[0].code == -32004
        assert sql_calls(demo) == []
