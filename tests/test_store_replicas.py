"""Replicas in the store, on both backends: registration, heartbeats and leases by the
database clock, a start expiring only its own holds, holder lost, and decisions on a hold
nobody holds any more."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.approvals import approval_request
from holdgate import store
from holdgate.store.replica_records import LEASE, ReplicaInfo

NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def db(where: str) -> Iterator[store.Store]:
    with store.open_store(where) as opened:
        yield opened


def info(replica: str, instance: str = "i1", config_hash: str = "c" * 64) -> ReplicaInfo:
    return ReplicaInfo(
        replica, instance, "host1", 4242, "127.0.0.1:8080", store.iso(NOW), config_hash, "1.0"
    )


def held(approval_id: str, replica: str | None, via: str | None = "hold") -> dict[str, Any]:
    return approval_request(
        approval_id, NOW, expires=store.iso(NOW + 10**6), via=via, replica=replica
    )


def states(db: store.Store) -> dict[str, tuple[str, str | None]]:
    return {a["approval_id"]: (a["state"], a.get("reason")) for a in db.approvals()}


def test_register_heartbeat_lapse_and_retire(db: store.Store) -> None:
    db.register_replica(info("a"), now=NOW)
    [row] = db.replicas(now=NOW + 1)
    assert (row["replica"], row["alive"], row["gone"], row["age"]) == ("a", True, False, 1.0)
    assert (row["host"], row["pid"], row["listen"], row["version"]) == (
        "host1",
        4242,
        "127.0.0.1:8080",
        "1.0",
    )
    assert db.heartbeat("a", "i1", "d" * 64, now=NOW + 5)
    [row] = db.replicas(now=NOW + 5 + LEASE - 0.5)
    assert row["alive"] and row["config_hash"] == "d" * 64
    [row] = db.replicas(now=NOW + 5 + LEASE)
    assert not row["alive"] and not row["gone"]  # lapsed
    db.retire_replica("a", "i1")
    [row] = db.replicas(now=NOW + 6)
    assert row["gone"] and not row["alive"] and row["age"] is None
    assert not db.heartbeat("a", "i1", None, now=NOW + 7)  # a late beat does not revive it
    assert db.replicas(now=NOW + 7)[0]["gone"]


def test_a_live_name_is_refused_a_lapsed_one_taken_over(db: store.Store) -> None:
    db.register_replica(info("a", "i1"), now=NOW)
    with pytest.raises(
        store.ReplicaNameTaken, match=r'replica "a" is already in use.*holdgate_replica'
    ):
        db.register_replica(info("a", "i2"), now=NOW + 5)
    db.register_replica(info("a", "i1"), now=NOW + 6)  # the same instance re-registers
    db.register_replica(info("a", "i2"), now=NOW + 6 + LEASE)  # lapsed: taken over
    assert not db.heartbeat("a", "i1", None, now=NOW + 20)  # the old one learns it
    assert db.heartbeat("a", "i2", None, now=NOW + 20)
    db.retire_replica("a", "i1")  # the old one's shutdown leaves the new one alone
    assert db.replicas(now=NOW + 21)[0]["alive"]


def test_the_database_clock_judges(db: store.Store) -> None:
    db.register_replica(info("a"))  # by db_now
    assert db.replicas()[0]["alive"]
    assert db.replicas(now=db.db_now() + LEASE + 1)[0]["alive"] is False


def test_a_start_expires_only_its_own_previous_holds(db: store.Store) -> None:
    db.create_approval(held("mine", "a"))
    db.create_approval(held("theirs", "b"))
    db.create_approval(held("old", None, via=None))  # before schema v4: no replica
    db.create_approval(held("elicited", None, via="elicitation"))
    assert db.expire_own_holds("a", "gateway restarted") == 2
    assert states(db) == {
        "mine": ("expired", "gateway restarted"),
        "theirs": ("pending", None),
        "old": ("expired", "gateway restarted"),
        "elicited": ("pending", None),
    }


def test_holds_of_replicas_that_stopped_heartbeating_are_closed(db: store.Store) -> None:
    now = db.db_now()
    db.register_replica(info("live"), now=now)
    db.register_replica(info("dead"), now=now - LEASE - 1)
    db.register_replica(info("stopped"), now=now)
    db.retire_replica("stopped", "i1")
    for replica in ("live", "dead", "stopped", "unknown"):
        db.create_approval(held(replica, replica))
    db.create_approval(held("elicited", None, via="elicitation"))
    assert db.expire_lost_holds() == 3
    assert db.expire_lost_holds() == 0
    got = states(db)
    assert got["live"] == ("pending", None) and got["elicited"] == ("pending", None)
    assert got["dead"] == ("expired", 'holder lost: replica "dead" stopped heartbeating')
    assert got["stopped"][0] == got["unknown"][0] == "expired"


def test_deciding_a_hold_whose_holder_is_lost_answers_expired(db: store.Store) -> None:
    now = db.db_now()
    db.register_replica(info("live"), now=now)
    db.register_replica(info("dead"), now=now - LEASE - 1)
    db.create_approval(held("on-live", "live"))
    db.create_approval(held("on-dead", "dead"))
    with pytest.raises(store.ApprovalExpired, match=r'holder lost: replica "dead".*nobody holds'):
        db.decide_approval("on-dead", "approved", "dana", ["dba"])
    record = db.approval("on-dead")
    assert record is not None
    assert [h["state"] for h in record["history"]] == ["pending", "expired"]
    with pytest.raises(store.ApprovalNotPending):  # and stays closed
        db.decide_approval("on-dead", "approved", "dana", ["dba"])
    assert db.decide_approval("on-live", "approved", "dana", ["dba"])["state"] == "approved"


def test_odd_replica_names_are_stored_as_given_and_shown_quoted(db: store.Store) -> None:
    odd = "a'); DROP TABLE replicas;--\n\u00fc"
    db.register_replica(info(odd), now=NOW)
    db.create_approval(held("x", odd))
    assert db.replicas(now=NOW)[0]["replica"] == odd
    assert db.expire_lost_holds(now=NOW + LEASE) == 1
    reason = states(db)["x"][1]
    assert (
        reason
        == 'holder lost: replica "a\'); DROP TABLE replicas;--\\n\\u00fc" stopped heartbeating'
    )


def test_decisions_notify_other_processes_on_postgresql(where: str, db: store.Store) -> None:
    heard: list[str] = []
    got = threading.Event()

    def wake(approval_id: str) -> None:
        heard.append(approval_id)
        got.set()

    listener = db.approval_listener(wake)
    if where.startswith("postgresql"):
        assert listener is not None
    else:
        assert listener is None  # SQLite: decisions are only polled
        return
    try:
        # the listener connects on its own thread: change approvals until it hears one
        for attempt in range(100):
            db.create_approval(held(f"n{attempt}", None))
            db.append_approval_state(f"n{attempt}", "cancelled")
            if got.wait(0.1):
                break
        assert heard and heard[0].startswith("n")
        db.create_approval(held("decided", None))
        got.clear()
        db.decide_approval("decided", "denied", "dana", ["dba"])
        assert got.wait(10)
    finally:
        listener.close()
    assert heard[-1] == "decided"
