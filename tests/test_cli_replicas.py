"""`holdgate replicas` over real stores (SQLite with CliRunner; PostgreSQL via the URL)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from holdgate import store
from holdgate.cli.main import main
from holdgate.store.replica_records import LEASE, ReplicaInfo

A_CONFIG = "a" * 64
B_CONFIG = "b" * 64


def info(replica: str, config_hash: str, pid: int) -> ReplicaInfo:
    return ReplicaInfo(
        replica, f"inst-{replica}", "host1", pid, "127.0.0.1:8080", store.iso(), config_hash, "1.0"
    )


def replicas(where: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["replicas", "--store", where], catch_exceptions=False)
    return result.exit_code, result.output


def test_lists_live_lapsed_and_gone_replicas(tmp_path: Path) -> None:
    where = str(tmp_path / "audit.sqlite3")
    with store.open_store(where) as db:
        now = db.db_now()
        db.register_replica(info("a", A_CONFIG, 11), now=now)
        db.register_replica(info("b", A_CONFIG, 12), now=now - LEASE - 5)
        db.register_replica(info("c", B_CONFIG, 13), now=now)
        db.retire_replica("c", "inst-c")
    code, output = replicas(where)
    assert code == 0
    a, b, c = output.splitlines()
    assert a.startswith('"a"  alive   heartbeat 0.')
    assert 'config aaaaaaaaaaaa  host "host1"  pid 11  listen "127.0.0.1:8080"' in a
    assert b.startswith('"b"  lapsed  heartbeat 15.') or b.startswith('"b"  lapsed  heartbeat 16.')
    assert c.startswith('"c"  gone    heartbeat stopped  config bbbbbbbbbbbb')
    assert "drift" not in output  # c is gone: only live replicas count


def test_marks_config_drift_between_live_replicas(tmp_path: Path) -> None:
    where = str(tmp_path / "audit.sqlite3")
    with store.open_store(where) as db:
        db.register_replica(info("a", A_CONFIG, 11))
        db.register_replica(info("b", B_CONFIG, 12))
    code, output = replicas(where)
    lines = output.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].endswith("* config drift") and lines[1].endswith("* config drift")
    assert lines[2].startswith("config drift: the live replicas run 2 different configs")


def test_no_replicas_and_no_store(tmp_path: Path) -> None:
    where = str(tmp_path / "audit.sqlite3")
    store.open_store(where).close()
    assert replicas(where) == (0, "no replicas have registered in this store\n")
    code, output = replicas(str(tmp_path / "missing.sqlite3"))
    assert code == 1 and "no audit store" in output and "--store" in output


def test_on_postgresql_by_environment(pg_url: str) -> None:
    with store.open_store(pg_url) as db:
        db.register_replica(info("east-1", A_CONFIG, 21))
    result = CliRunner().invoke(
        main, ["replicas"], env={"HOLDGATE_STORE": pg_url}, catch_exceptions=False
    )
    assert result.exit_code == 0
    assert result.output.startswith('"east-1"  alive')


def test_approving_a_hold_whose_holder_is_lost_exits_1(tmp_path: Path) -> None:
    where = str(tmp_path / "audit.sqlite3")
    with store.open_store(where) as db:
        db.register_replica(info("a", A_CONFIG, 11), now=db.db_now() - LEASE - 1)
        db.create_approval(
            {
                "approval_id": "lost1",
                "requester": "alice",
                "upstream": "db",
                "tool": "run_sql",
                "rule": "r",
                "approvers": '["dba"]',
                "via": "hold",
                "replica": "a",
            }
        )
    result = CliRunner().invoke(
        main,
        [
            "approvals",
            "approve",
            "lost1",
            "--as",
            "dana",
            "--break-glass",
            "--reason",
            "in a test",
            "--store",
            where,
        ],
    )
    assert result.exit_code == 1
    assert 'approval lost1 expired: holder lost: replica "a" stopped heartbeating' in result.output
