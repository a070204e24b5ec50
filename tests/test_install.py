"""Holdgate works installed, not only from the checkout: the wheel carries the addons and
the store, its `default_addons()` imports from a folder outside the checkout, and the
entry script runs from any folder.

The wheel is built from a copy of the sources (the checkout stays untouched), with the
build backend from the local package index (offline).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from helpers.clients import META, MODERN, raw_post
from helpers.configs import ALICE, identity
from helpers.processes import ROOT

LOCAL_INDEX = Path("/opt/pypi/simple")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (LOCAL_INDEX / "setuptools").is_dir():
        pytest.skip("no local package index with setuptools to build the wheel offline")
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(
        ROOT / "addons" / "holdgate",
        source / "addons" / "holdgate",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--index-url",
         LOCAL_INDEX.as_uri(), "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300, cwd=source,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("holdgate-*.whl")
    return found


def test_the_wheel_carries_the_addons_the_store_and_the_library(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "addons" / "holdgate"
    for module in sorted((package / "addons").glob("*.py")):
        assert f"holdgate/addons/{module.name}" in names
    for module in sorted((package / "store").glob("*.py")):
        assert f"holdgate/store/{module.name}" in names
    for folder in ("config", "protocol", "identity", "policy", "masking", "approvals", "telemetry"):
        assert f"holdgate/{folder}/__init__.py" in names, folder
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_the_installed_package_builds_the_gateway_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    away = tmp_path / "elsewhere"
    away.mkdir()
    script = textwrap.dedent(
        """
        import holdgate
        from holdgate.addons import default_addons
        print(holdgate.__file__)
        print(" ".join(type(a).__name__ for a in default_addons()))
        """
    )
    # The unpacked wheel first on the path: it, not the checkout's editable install, answers.
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=away,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    location, names = done.stdout.splitlines()
    assert Path(location).is_relative_to(site)
    assert names.split()[:5] == [
        "ConfigLoader",
        "AuditStore",
        "AdminApi",
        "EarlyAnswers",
        "ConnectionDeadlines",
    ]
    assert "Recorder" in names.split() and "ToolPinning" in names.split()


def test_the_entry_script_runs_started_from_another_folder(tmp_path, demo, gateway_factory):
    config = (
        "version: 1\n"
        + identity("alice")
        + textwrap.dedent(
            f"""\
        upstreams: [{{name: demo, url: "{demo.url}"}}]
        rules:
          - {{name: listing, match: {{method: tools/list}}, action: allow}}
          - {{name: reads, match: {{tool: get_customer}}, action: allow}}
        """
        )
    )
    gw = gateway_factory(config, demo.url)
    assert gw.cwd == tmp_path and not tmp_path.is_relative_to(ROOT)  # not the checkout
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    answer = raw_post(gw.url + "/mcp", listing, {**ALICE, **MODERN, "Mcp-Method": "tools/list"})
    assert answer.status == 200, answer.body
    assert "get_customer" in answer.body.decode()
    assert "holdgate: loaded" in gw.log_text()
