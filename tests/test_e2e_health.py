"""Health, readiness and status on a real gateway: `/healthz` and `/readyz` answer without
credentials and say nothing else, `/readyz` is never 200 before start-up is over and is 503
while PostgreSQL is down; a rejected reload moves the config metrics and `holdgate status`,
and a good file puts both right again."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from helpers.configs import ALICE, DEMO_KEYS, identity
from helpers.postgres import pause, start_again, start_postgres, stop_postgres
from helpers.processes import Gateway, free_port, holdgate_cli, wait_for_port
from holdgate.addons.config_loader import STARTED
from holdgate.telemetry.health import LEASE_LOST, STORE_FAILING

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob", groups={"alice": ["support", "oncall"]})
    + """upstreams:
  - name: demo
    url: {url}
{extra}rules:
  - name: reads
    match: {{tool: [get_customer]}}
    action: allow
"""
)
ALICE_TOKEN = DEMO_KEYS["alice"].key
BOB_TOKEN = DEMO_KEYS["bob"].key
PG_PASSWORD = "pg-password-never-shown-7d1f"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_until(check: Any, what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def start(gateway_factory: Any, url: str, extra: str = "", **options: str) -> tuple[Gateway, str]:
    admin_port = free_port()
    gw = gateway_factory(
        CONFIG.format(url=url, extra=extra),
        url,
        options={"holdgate_admin": f"127.0.0.1:{admin_port}", **options},
        wait_started=False,
    )
    wait_for_port(admin_port, gw.proc, gw.output)
    return gw, f"http://127.0.0.1:{admin_port}"


def test_the_probes_answer_without_credentials_and_ready_only_once_started(demo, gateway_factory):
    gw, admin = start(gateway_factory, demo.url)
    # From the moment the admin listener opens: never ready before start-up is over.
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = get(admin + "/readyz")
        seen.append(status)
        if status == 200:
            assert STARTED in gw.log_text(), "ready before mitmproxy's start-up was over"
            break
        assert status == 503 and json.loads(body)["status"] == "not ready", body
        time.sleep(0.05)
    assert seen[-1] == 200, seen
    assert json.loads(body) == {"status": "ready"}
    status, body = get(admin + "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "serving"})
    for probe in ("/healthz", "/readyz"):  # nothing else said: no path, version, store
        _, body = get(admin + probe)
        for secret in (str(gw.config), str(gw.db), "holdgate.yaml", "sqlite", "version"):
            assert secret not in body, (probe, body)
    for path in ("/healthz", "/readyz", "/status"):  # only GET
        refused = urllib.request.Request(admin + path, data=b"{}", method="POST")
        try:
            urllib.request.urlopen(refused, timeout=10)
            raise AssertionError(f"POST {path} was served")
        except urllib.error.HTTPError as err:
            assert err.code == 405 and f"GET {path}" in err.read().decode()
    # /status is not for anyone who reaches the listener
    status, body = get(admin + "/status")
    assert status == 401 and "authenticate" in json.loads(body)["error"]
    status, _ = get(admin + "/status", {"Authorization": "Bearer wrong-key"})
    assert status == 401


def test_ready_is_503_while_postgresql_is_down_and_200_once_it_is_back(demo, gateway_factory):
    server = start_postgres()  # the test's own: it is stopped and started again
    try:
        # trust authentication ignores the password: it is there to be looked for
        url = server.fresh_database().replace("holdgate@", f"holdgate:{PG_PASSWORD}@")
        gw, admin = start(
            gateway_factory,
            demo.url,
            extra="hash_key: health-test-hash-key\n",
            holdgate_store=url,
        )
        wait_until(lambda: get(admin + "/readyz")[0] == 200, "ready on PostgreSQL")
        pause(server)
        status, body = wait_until(
            lambda: (found := get(admin + "/readyz"))[0] == 503 and found, "503 with PG down"
        )
        assert json.loads(body) == {
            "status": "not ready",
            "reason": json.loads(body)["reason"],
        }
        assert json.loads(body)["reason"] in (STORE_FAILING, LEASE_LOST)
        assert str(server.port) not in body and "postgresql" not in body
        assert get(admin + "/healthz")[0] == 200  # the process still serves
        down = holdgate_cli("status", "--gateway", admin, "--token", ALICE_TOKEN)
        assert down.returncode == 0, down.stderr
        assert "NOT READY: the audit store" in down.stdout, down.stdout
        assert "cannot read the store" in down.stdout
        for said in (down.stdout, body, gw.log_text()):
            assert PG_PASSWORD not in said
        start_again(server)
        wait_until(lambda: get(admin + "/readyz")[0] == 200, "ready again", seconds=45)
        assert gw.proc.poll() is None  # the same gateway, never restarted
    finally:
        stop_postgres(server)


def metrics(admin: str) -> dict[str, float]:
    status, text = get(admin + "/metrics")
    assert status == 200, text
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("holdgate_config_")
    }


def status(admin: str, *args: str) -> Any:
    done = holdgate_cli("status", "--gateway", admin, "--token", ALICE_TOKEN, *args)
    assert done.returncode == 0, done.stderr
    assert ALICE_TOKEN not in done.stdout + done.stderr
    return done.stdout


def test_a_rejected_reload_moves_the_metrics_and_status_and_a_good_file_fixes_both(
    demo, gateway_factory
):
    gw, admin = start(gateway_factory, demo.url, holdgate_replica="gw-status")
    wait_until(lambda: get(admin + "/readyz")[0] == 200, "ready")
    good = gw.config.read_text()
    before = metrics(admin)
    assert before["holdgate_config_reload_failures_total"] == 0
    assert before["holdgate_config_file_in_force"] == 1
    report = json.loads(status(admin, "--format", "json"))
    assert report["replica"] == "gw-status" and report["not_ready"] is None
    assert report["config"]["file"] == str(gw.config)
    assert report["config"]["file_in_force"] is True
    assert report["config"]["last_reload_error"] is None
    assert report["store"]["backend"] == "sqlite" and report["store"]["writable"] is True
    assert report["approvals"] == {"pending": 0, "held_here": 0}

    time.sleep(1.1)  # a new mtime for the watcher
    broken = good.replace("    action: allow\n", "    action: alow\n")
    line = broken.splitlines().index("    action: alow") + 1
    gw.config.write_text(broken)
    wait_until(lambda: "reload rejected" in gw.log_text(), "the reload to be rejected")
    found = wait_until(
        lambda: (m := metrics(admin))["holdgate_config_file_in_force"] == 0 and m,
        "file_in_force 0",
    )
    assert found["holdgate_config_reload_failures_total"] == 1
    report = json.loads(status(admin, "--format", "json"))
    assert report["config"]["file_in_force"] is False
    assert report["config"]["reload_failures"] == 1
    assert f"{gw.config}:{line}:" in report["config"]["last_reload_error"]["error"]
    text = status(admin)
    assert "NOT IN FORCE" in text and f"{gw.config}:{line}:" in text, text
    assert "alow" in text  # what is wrong, as the log says it

    gw.config.unlink()  # the careless operator: the file is gone
    found = wait_until(
        lambda: (m := metrics(admin))["holdgate_config_reload_failures_total"] == 2 and m,
        "the missing file to count as a rejected reload",
    )
    assert found["holdgate_config_file_in_force"] == 0
    assert "(sha256 unreadable) is not the config in force" in status(admin)

    gw.config.write_text(good)
    found = wait_until(
        lambda: (m := metrics(admin))["holdgate_config_file_in_force"] == 1 and m,
        "file_in_force 1",
    )
    assert found["holdgate_config_reload_failures_total"] == 2  # a counter: it stays
    report = json.loads(status(admin, "--format", "json"))
    assert report["config"]["file_in_force"] is True
    assert "the file on disk is the config in force" in status(admin)


def test_status_needs_a_group_of_metrics_groups_when_the_config_names_them(demo, gateway_factory):
    gw, admin = start(
        gateway_factory, demo.url, extra="metrics: {auth: identity, groups: [oncall]}\n"
    )
    wait_until(lambda: get(admin + "/readyz")[0] == 200, "ready")
    bob = holdgate_cli("status", "--gateway", admin, "--token", BOB_TOKEN)
    assert bob.returncode == 1 and "403" in bob.stderr and "metrics.groups" in bob.stderr
    assert "bob" in bob.stderr and BOB_TOKEN not in bob.stderr
    assert "ready" in status(admin)
    assert get(admin + "/status", ALICE)[0] == 200  # the API key header counts too
