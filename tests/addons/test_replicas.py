"""Replicas in process: the replica's name, its registration at configure, and heartbeats
that survive the store going away."""

from __future__ import annotations

import logging
import os
import socket

import psycopg
import pytest
from mitmproxy.exceptions import OptionsError

from helpers.configs import identity
from helpers.flows import UPSTREAM_URL, find, gateway
from holdgate import store
from holdgate.addons.audit_store import AuditStore
from holdgate.addons.recorder import Recorder
from holdgate.addons.replicas import (
    MAX_NAME,
    Replicas,
    exited_here,
    name_problem,
)
from holdgate.config.options import listen_addresses

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
hash_key: replicas-in-process-key
rules: []
"""
)


@pytest.mark.parametrize(
    ("modes", "host", "port", "shown"),
    [
        (["regular"], "", None, "8080"),
        (["regular"], "", 8443, "8443"),
        (["reverse:http://up"], "127.0.0.1", 8443, "127.0.0.1:8443"),
        # the address in the mode spec wins over listen_host/listen_port (#28)
        (["reverse:http://up@9101"], "", 8080, "9101"),
        (["reverse:http://up@127.0.0.1:9101"], "", None, "127.0.0.1:9101"),
        (["reverse:http://up@[::1]:9101"], "", None, "[::1]:9101"),
        (["reverse:http://a@9101", "reverse:http://b@9102"], "", None, "9101,9102"),
        (["local"], "", None, "local"),
    ],
)
def test_the_listen_address_is_each_modes_own(modes, host, port, shown) -> None:
    assert listen_addresses(modes, host, port) == shown


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("  ", "empty"),
        ("x" * (MAX_NAME + 1), f"at most {MAX_NAME}"),
        ("a\x1b[2Jb", 'name "a\\u001b[2Jb" has control characters'),
        ("a\nb", "control characters"),
    ],
)
def test_unusable_names_are_refused(name: str, problem: str) -> None:
    assert problem in (name_problem(name) or "")


def test_printable_odd_names_are_fine() -> None:
    assert name_problem('east "1" \u00fc; DROP TABLE replicas;--') is None


def test_a_bad_name_is_refused_and_the_registration_kept(tmp_path) -> None:
    with gateway(tmp_path, CONFIG, Recorder, Replicas, holdgate_replica="a") as tctx:
        replicas = find(tctx, Replicas)
        with pytest.raises(OptionsError, match="holdgate_replica: the replica name has 101"):
            tctx.configure(replicas, holdgate_replica="x" * 101)
        assert replicas.replica == "a"


def test_registers_at_configure_and_is_gone_at_shutdown(tmp_path) -> None:
    with gateway(tmp_path, CONFIG, Recorder, Replicas, holdgate_replica="a") as tctx:
        replicas = find(tctx, Replicas)
        assert replicas.replica == "a"
        [row] = find(tctx, AuditStore).store().replicas()
        assert row["alive"] and row["instance"] == replicas.instance
    with store.open_store(tmp_path / "audit.sqlite3") as db:
        assert db.replicas()[0]["gone"]


async def test_the_store_going_away_mid_heartbeat_is_logged_and_retried(
    tmp_path, pg_url, caplog
) -> None:
    with gateway(
        tmp_path, CONFIG, Recorder, Replicas, holdgate_replica="a", holdgate_store=pg_url
    ) as tctx:
        replicas = find(tctx, Replicas)
        await replicas.heartbeat()
        with psycopg.connect(pg_url, autocommit=True) as admin:  # the server drops us
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with caplog.at_level(logging.ERROR, logger="holdgate"):
            await replicas.heartbeat()
        assert 'replica "a" cannot heartbeat' in caplog.text and "retrying" in caplog.text
        before = find(tctx, AuditStore).store().replicas()[0]["heartbeat"]
        await replicas.heartbeat()  # reconnected
        assert find(tctx, AuditStore).store().replicas()[0]["heartbeat"] > before


async def test_a_name_taken_over_is_an_error(tmp_path, caplog) -> None:
    with gateway(tmp_path, CONFIG, Recorder, Replicas, holdgate_replica="a") as tctx:
        replicas = find(tctx, Replicas)
        db = find(tctx, AuditStore).store()
        db.register_replica(
            store.replica_records.ReplicaInfo("a", "other", "h", 1, "l", store.iso(), None, "1"),
            now=db.db_now() + 60,  # the other process's clock: our lease has lapsed for it
        )
        with caplog.at_level(logging.ERROR, logger="holdgate"):
            await replicas.heartbeat()
        assert "taken over by another process: two gateways run with one holdgate_replica" in (
            caplog.text
        )


def test_a_crashed_predecessor_on_this_host_is_known_gone(tmp_path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(done.stdout)
    host = socket.gethostname()
    assert exited_here(host, dead)
    assert not exited_here(host, os.getppid())  # alive
    assert not exited_here("another-host", dead)  # cannot tell: the lease decides
    with store.open_store(tmp_path / "audit.sqlite3") as db:
        now = db.db_now()
        old = store.replica_records.ReplicaInfo("a", "old", host, dead, "l", store.iso(), None, "1")
        db.register_replica(old, now=now)
        new = store.replica_records.ReplicaInfo(
            "a", "new", host, os.getpid(), "l", store.iso(), None, "1"
        )
        with pytest.raises(store.ReplicaNameTaken):
            db.register_replica(new, now=now)
        db.register_replica(new, now=now, process_gone=exited_here)
        assert db.replicas()[0]["instance"] == "new"
