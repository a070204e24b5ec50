"""`holdgate policy apply` on a running mitmdump: the new config confirmed in force through
the admin API (by two replicas sharing a PostgreSQL store too); a broken candidate, a wrong
credential and a reload the gateway rejects leave (or put back) the watched file as it was;
an unwatched file times out, named."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat

import pytest

from helpers.clients import META, MODERN, raw_post
from helpers.configs import ALICE, api_keys
from helpers.processes import free_port, holdgate_cli
from test_e2e_admin_http import wait_listening

BASE = (
    "version: 1\nidentity:\n"
    + api_keys("alice", "bob")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: everyone may initialize
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
  - name: support reads customers
    match: {{groups: [support], tool: get_customer}}
    action: {action}
"""
)
HEADERS = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer", **ALICE}
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "get_customer", "arguments": {"customer_id": 1}, "_meta": META},
}
TOKEN = ALICE["X-API-Key"]


def decision(gw) -> str:
    body = raw_post(gw.url + "/mcp", CALL, HEADERS).json()
    return "denied" if "error" in body else "allowed"


@pytest.fixture
def gw(demo, gateway_factory):
    gw = gateway_factory(
        BASE.format(url=demo.url, action="allow"),
        demo.url,
        options={"holdgate_admin": f"127.0.0.1:{free_port()}"},
    )
    wait_listening(gw.admin)
    os.chmod(gw.config, 0o640)
    return gw


def apply(gw, candidate, *more: str):
    return holdgate_cli(
        "policy", "apply", str(candidate), "--config", str(gw.config),
        "--gateway", f"http://{gw.admin}", "--token", TOKEN, *more,
    )  # fmt: skip


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apply_replaces_the_watched_file_and_ends_with_the_new_hash_confirmed(gw, demo, tmp_path):
    assert decision(gw) == "allowed"
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(BASE.format(url=demo.url, action="deny"))
    done = apply(gw, candidate, "--store", str(gw.db), "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    digest = sha256(candidate)
    lines = done.stdout.splitlines()
    assert lines[0] == f"{candidate}: ok (2 rules, sha256 {digest[:12]})"
    # the replay summary: the one recorded call would now be denied
    assert lines[1].startswith("1 recorded decisions replayed: 0 unchanged, 1 would change")
    assert "allow by 'support reads customers' -> deny by 'support reads customers': 1" in (
        done.stdout
    )
    assert lines[-1] == f"in force: the gateway and every live replica runs sha256 {digest[:12]}"
    assert gw.config.read_bytes() == candidate.read_bytes()
    assert stat.S_IMODE(gw.config.stat().st_mode) == 0o640  # the file's mode is kept
    assert not [p for p in gw.config.parent.iterdir() if p.name.startswith(".holdgate.yaml.")]
    assert decision(gw) == "denied"  # in force, as confirmed
    loaded = sqlite3.connect(gw.db).execute(
        "select outcome from config_versions where config_hash = ?", (digest,)
    )
    assert [row[0] for row in loaded] == ["reloaded"]
    assert TOKEN not in done.stdout + done.stderr


def test_a_broken_candidate_is_refused_before_anything_is_replaced(gw, demo, tmp_path):
    before = gw.config.read_bytes()
    candidate = tmp_path / "broken.yaml"
    candidate.write_text(BASE.format(url=demo.url, action="alow") + "    limit: 5/fortnight\n")
    done = apply(gw, candidate)
    assert done.returncode == 1
    assert f"{candidate}:19:5: rules['support reads customers'].action: expected one of" in (
        done.stderr
    )
    assert f"{candidate}:20:5: rules['support reads customers'].limit: expected a rate" in (
        done.stderr
    )
    assert f"{gw.config} was not replaced" in done.stderr
    assert gw.config.read_bytes() == before  # byte-identical
    assert decision(gw) == "allowed"


def test_a_wrong_credential_is_refused_before_anything_is_replaced(gw, demo, tmp_path):
    before = gw.config.read_bytes()
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(BASE.format(url=demo.url, action="deny"))
    done = holdgate_cli(
        "policy", "apply", str(candidate), "--config", str(gw.config),
        "--gateway", f"http://{gw.admin}", "--token", "not-a-key",
    )  # fmt: skip
    assert done.returncode == 1
    assert "the gateway refused (401)" in done.stderr
    assert "not-a-key" not in done.stdout + done.stderr
    assert gw.config.read_bytes() == before


def test_a_reload_the_gateway_rejects_is_reported_and_the_file_put_back(gw, demo, tmp_path):
    """The rules check cleanly without secrets; the gateway, which needs them, refuses."""
    before = gw.config.read_bytes()
    candidate = tmp_path / "candidate.yaml"
    text = BASE.format(url=demo.url, action="deny").replace(
        f"    url: {demo.url}\n",
        f"    url: {demo.url}\n    inject:\n"
        "      headers: {Authorization: '${env:HOLDGATE_APPLY_TEST_UNSET}'}\n",
    )
    candidate.write_text(text)
    done = apply(gw, candidate, "--timeout", "30")
    assert done.returncode == 1, done.stdout
    assert f"the gateway rejected sha256 {sha256(candidate)[:12]}" in done.stderr
    assert "HOLDGATE_APPLY_TEST_UNSET is not set" in done.stderr
    assert f"{gw.config} was put back as it was" in done.stderr
    assert gw.config.read_bytes() == before
    assert decision(gw) == "allowed"


def test_a_gateway_that_does_not_watch_the_file_times_out_naming_what_runs(gw, demo, tmp_path):
    elsewhere = tmp_path / "other" / "holdgate.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(gw.config.read_bytes())
    running = sha256(gw.config)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(BASE.format(url=demo.url, action="deny"))
    done = holdgate_cli(
        "policy", "apply", str(candidate), "--config", str(elsewhere),
        "--gateway", f"http://{gw.admin}", "--token", TOKEN, "--timeout", "1.5",
    )  # fmt: skip
    assert done.returncode == 1
    assert f"not confirmed after 1.5s: the gateway still runs sha256 {running[:12]}" in (
        done.stderr
    )
    assert f"(its file: {gw.config})" in done.stderr
    assert decision(gw) == "allowed"


def test_config_hash_route_needs_a_credential(gw):
    import httpx

    answer = httpx.get(f"http://{gw.admin}/config/hash", timeout=10)
    assert answer.status_code == 401
    assert set(answer.json()) == {"error"}
    answer = httpx.get(f"http://{gw.admin}/config/hash", headers=ALICE, timeout=10)
    assert answer.json() == {
        "config_hash": sha256(gw.config),
        "file": str(gw.config),
        "rejected": None,
    }
    assert json.dumps(answer.json()).count(TOKEN) == 0


def test_apply_waits_for_every_replica_sharing_the_store(demo, gateway_factory, pg_url, tmp_path):
    """Two gateways watch one file and share one PostgreSQL store: both must confirm."""
    shared = "hash_key: apply-test-shared-hash-key\n"
    gateways = [
        gateway_factory(
            BASE.format(url=demo.url, action="allow") + shared,
            demo.url,
            options={
                "holdgate_store": pg_url,
                "holdgate_replica": name,
                "holdgate_admin": f"127.0.0.1:{free_port()}",
            },
        )
        for name in ("gw-a", "gw-b")
    ]
    assert gateways[0].config == gateways[1].config  # one file, watched by both
    wait_listening(gateways[0].admin)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(BASE.format(url=demo.url, action="deny") + shared)
    done = apply(gateways[0], candidate, "--store", pg_url, "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    digest = sha256(candidate)
    assert done.stdout.splitlines()[-1] == (
        f"in force: the gateway and every live replica runs sha256 {digest[:12]}"
    )
    listed = holdgate_cli("replicas", "--store", pg_url).stdout
    assert listed.count(f"config {digest[:12]}") == 2, listed
    assert [decision(gw) for gw in gateways] == ["denied", "denied"]
