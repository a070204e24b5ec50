"""Start-up errors through a real mitmdump: one line saying what, where and how to fix it,
exit 1, no Python traceback; a start that fails records no config version (#28)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from helpers.configs import identity
from helpers.processes import free_port, gateway_command

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
{extra}rules:
  - name: handshake
    match: {{method: [initialize, ping]}}
    action: allow
"""
)
UNSET = "HOLDGATE_TEST_NEVER_SET_TOKEN"


def failed_start(tmp_path: Path, config: str, *options: str) -> str:
    """mitmdump with the bundle must stop by itself with exit 1: its stdout and stderr."""
    cmd = gateway_command("--listen-host", "127.0.0.1", "--listen-port", str(free_port()))
    cmd += ["--set", f"holdgate_config={config}", "--set", "holdgate_admin="]
    for option in options:
        cmd += ["--set", option]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and "error in script" not in output, output
    assert sum("cannot start" in line for line in output.splitlines()) == 1, output
    return output


def the_error(output: str) -> str:
    return next(line for line in output.splitlines() if "holdgate cannot start: " in line)


def test_a_missing_config_file_is_one_line(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    line = the_error(failed_start(tmp_path, str(missing)))
    assert f"holdgate_config: {missing}: cannot read the file" in line
    assert "check the path" in line


def test_an_unset_environment_reference_is_one_line(tmp_path, monkeypatch, demo):
    monkeypatch.delenv(UNSET, raising=False)
    extra = f'    inject:\n      headers:\n        Authorization: "Bearer ${{env:{UNSET}}}"\n'
    path = tmp_path / "holdgate.yaml"
    path.write_text(CONFIG.format(url=demo.url, extra=extra))
    line = the_error(failed_start(tmp_path, str(path)))
    assert f"{path}:" in line and "upstreams[0].inject.headers.Authorization" in line
    assert f"environment variable {UNSET} is not set; export it before start" in line


def test_a_replica_name_in_use_is_one_line_and_records_no_config_version(
    tmp_path, demo, gateway_factory
):
    where = str(tmp_path / "shared.sqlite3")
    options = {"holdgate_store": where, "holdgate_replica": "gw-a"}
    text = CONFIG.format(url=demo.url, extra="")
    first = gateway_factory(text, demo.url, options=options)
    second = tmp_path / "second"
    second.mkdir()
    (second / "holdgate.yaml").write_text(text)
    output = failed_start(
        second,
        str(second / "holdgate.yaml"),
        f"holdgate_store={where}",
        "holdgate_replica=gw-a",
        "holdgate_recordings=",
    )
    line = the_error(output)
    assert 'holdgate_replica: replica "gw-a" is already in use by a live gateway' in line
    assert "give each gateway its own holdgate_replica" in line
    assert first.proc.poll() is None
    with sqlite3.connect(where) as conn:
        versions = conn.execute("SELECT detail FROM config_versions").fetchall()
    assert versions == [("loaded at start",)]  # the first gateway's only
