"""The README's first steps, run as written (#28): `make run`'s script with the demo client,
the SDK example script and the CLI through `.venv/bin/holdgate`; `make web` started and
probed; the "run it yourself" command; and `make run` on a taken port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.processes import BIN, ROOT, free_port

README = (ROOT / "README.md").read_text()
PYTHON = str(BIN / "python")
RUNNING = "Holdgate is running."


def in_readme(command: str) -> str:
    """`command` as the README writes it (so the test and the page cannot drift apart)."""
    assert command in README, f"the README no longer says {command!r}"
    return command


class Demo:
    """`scripts/run_demo.py` (what `make run` / `make web` run), in a folder of its own."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.port, self.upstream, self.admin = free_port(), free_port(), free_port()
        self.output = folder / "run_demo.out"
        cmd = [PYTHON, str(ROOT / "scripts" / "run_demo.py"), "--port", str(self.port)]
        cmd += ["--upstream-port", str(self.upstream), "--admin-port", str(self.admin), *args]
        env = {k: v for k, v in os.environ.items() if k != "DEMO_UPSTREAM_TOKEN"}
        with self.output.open("wb") as sink:
            self.proc = subprocess.Popen(
                cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=folder, env=env
            )

    @property
    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_running(self) -> None:
        deadline = time.monotonic() + 60
        while RUNNING not in self.text:
            assert self.proc.poll() is None, self.text
            assert time.monotonic() < deadline, self.text
            time.sleep(0.2)

    def stop(self) -> None:
        """Ctrl-C, as a person stops it: it stops the gateway and the demo server too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def demo_run(tmp_path: Path) -> Iterator[Demo]:
    demo = Demo(tmp_path)
    try:
        demo.wait_running()
        yield demo
    finally:
        demo.stop()


def run(command: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A README command line, with `.venv/bin/` read as this checkout's venv."""
    words = [
        str(BIN / word.removeprefix(".venv/bin/")) if word.startswith(".venv/bin/") else word
        for word in command.split()
    ]
    words = [str(ROOT / w) if w.startswith(("scripts/", "policies/")) else w for w in words]
    return subprocess.run([*words, *extra], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_quick_start_runs_as_written(demo_run: Demo, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{demo_run.port}/mcp"
    client = run(
        in_readme(".venv/bin/python scripts/demo_client.py --key demo-alice-support"),
        tmp_path,
        "--url",
        url,
    )
    assert client.returncode == 0, client.stderr
    assert "exec_shell" in client.stdout and "refused by the gateway" in client.stdout
    sdk = run(in_readme(".venv/bin/python scripts/quickstart_client.py"), tmp_path, url)
    assert sdk.returncode == 0, sdk.stderr
    assert sdk.stdout.strip()
    snippet = README.split("```python\n", 1)[1].split("```", 1)[0]
    assert snippet in (ROOT / "scripts" / "quickstart_client.py").read_text()  # what ran
    for command in (
        ".venv/bin/holdgate sessions list",
        ".venv/bin/holdgate approvals list",
        ".venv/bin/holdgate verify",
    ):
        done = run(in_readme(command), tmp_path)  # the store `make run` writes, in its folder
        assert done.returncode == 0, (command, done.stderr)
    assert "alice" in run(".venv/bin/holdgate sessions list", tmp_path).stdout
    check = run(in_readme(".venv/bin/holdgate policy check policies/default.yaml"), tmp_path)
    assert check.returncode == 0, check.stderr
    assert "holdgate decision: alice tools/call exec_shell: deny (rule 'no shell')" in (
        demo_run.text
    )


def test_make_web_starts_mitmweb_with_a_link_that_opens_it(tmp_path: Path) -> None:
    in_readme("make web")
    web_port = free_port()
    demo = Demo(tmp_path, "--web", "--web-port", str(web_port))
    try:
        demo.wait_running()
        link = re.search(rf"mitmweb: (http://127\.0\.0\.1:{web_port}/\?token=\S+)", demo.text)
        assert link is not None, demo.text
        with urllib.request.urlopen(link.group(1), timeout=10) as page:
            assert page.status == 200
            assert b"mitmproxy" in page.read().lower()
        sdk = run(
            ".venv/bin/python scripts/quickstart_client.py",
            tmp_path,
            f"http://127.0.0.1:{demo.port}/mcp",
        )
        assert sdk.returncode == 0, sdk.stderr
    finally:
        demo.stop()
    assert demo.proc.returncode is not None
    for port in (demo.port, demo.upstream, web_port):  # everything it started has stopped
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_running_it_yourself_takes_the_demo_config(demo, gateway_factory, tmp_path) -> None:
    """The README's own-server command, with the credential it says to export."""
    block = README[README.index("export DEMO_UPSTREAM_TOKEN=") :]
    assert "--set holdgate_config=policies/default.yaml" in block.split("```")[0]
    config = (ROOT / "policies" / "default.yaml").read_text()
    gw = gateway_factory(config, demo.url, env={"DEMO_UPSTREAM_TOKEN": "yours"})
    sdk = run(".venv/bin/python scripts/quickstart_client.py", tmp_path, gw.url + "/mcp")
    assert sdk.returncode == 0, sdk.stderr


def test_make_run_on_a_taken_port_stops_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [PYTHON, str(ROOT / "scripts" / "run_demo.py"), "--port", str(port)]
        cmd += ["--upstream-port", str(free_port()), "--admin-port", str(free_port())]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"port {port} on 127.0.0.1 (the gateway) is in use: stop what listens there, or "
        f"choose another port, e.g. make run PORT={port + 10}"
    ]
    assert RUNNING not in done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing recorded
    dry = subprocess.run(
        ["make", "-n", "run", "PORT=8090", "UPSTREAM_PORT=9010", "ADMIN_PORT=8191"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert "run_demo.py --port 8090 --upstream-port 9010 --admin-port 8191" in dry.stdout
