"""Who owns each task, on both backends: first claim wins, expired records go, a caller's
own tasks are listed (holdgate.store.task_records)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from holdgate import store
from holdgate.protocol.tasks import task_key

NOW = 1_800_000_000.0


@pytest.fixture
def db(where: str) -> Iterator[store.Store]:
    with store.open_store(where) as opened:
        yield opened


def record(owner: str, task_id: str, *, expires: float | None = None, created: float = NOW):
    return store.TaskRecord(
        task_key=task_key("reports", task_id),
        owner=owner,
        upstream="reports",
        session_id="s-1",
        tool="customer_report",
        call_flow_id=f"flow-{owner}",
        call_jsonrpc_id="1",
        created=created,
        expires=expires,
    )


def test_the_first_claim_of_a_task_wins(db: store.Store) -> None:
    alices = record("alice", "t-1")
    assert db.claim_task(alices, now=NOW) == alices
    assert db.claim_task(record("bob", "t-1"), now=NOW + 1) == alices  # bob was handed it too
    assert db.find_task(task_key("reports", "t-1"), now=NOW + 2) == alices
    assert db.find_task(task_key("other", "t-1"), now=NOW + 2) is None  # per upstream


def test_claims_racing_on_two_stores_agree_on_one_owner(where: str, db: store.Store) -> None:
    owners: list[str] = []  # `db` made the store: the replicas only open it

    def claim(owner: str) -> None:
        with store.open_store(where) as replica:
            owners.append(replica.claim_task(record(owner, "t-race"), now=NOW).owner)

    threads = [threading.Thread(target=claim, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(owners) == 2 and owners[0] == owners[1]


def test_an_expired_task_is_forgotten(db: store.Store) -> None:
    db.claim_task(record("alice", "t-old", expires=NOW + 10), now=NOW)
    assert db.find_task(task_key("reports", "t-old"), now=NOW + 9) is not None
    assert db.find_task(task_key("reports", "t-old"), now=NOW + 10) is None
    # once gone, the id is free: a new claim holds (the upstream may reuse it)
    assert db.claim_task(record("bob", "t-old"), now=NOW + 11).owner == "bob"


def test_a_callers_task_keys_are_theirs_on_that_upstream(db: store.Store) -> None:
    for n in range(3):
        db.claim_task(record("alice", f"a-{n}", created=NOW + n), now=NOW)
    db.claim_task(record("bob", "b-0"), now=NOW)
    db.claim_task(record("alice", "a-gone", expires=NOW + 1), now=NOW)
    keys = db.task_keys_of("alice", "reports", now=NOW + 5)
    assert keys == {task_key("reports", f"a-{n}") for n in range(3)}
    assert db.task_keys_of("alice", "other", now=NOW + 5) == set()


def test_a_task_id_is_never_stored_as_given(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with store.open_store(str(path)) as db:
        db.claim_task(record("alice", "secret-task-handle"), now=NOW)
    for written in tmp_path.iterdir():
        assert b"secret-task-handle" not in written.read_bytes(), written.name
