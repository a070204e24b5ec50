"""The store interface on both backends: SQLite (a file) and PostgreSQL (a real server
started by the suite). The same calls, the same answers; on PostgreSQL also several stores
on one database appending to one chain, as replicas do."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers.approvals import approval_request
from holdgate import store
from holdgate.store import pg_schema, schema
from holdgate.store.errors import StoreError
from holdgate.store.sqlconn import to_pyformat

NOW = 1_800_000_000.0


@pytest.fixture
def db(where: str) -> Iterator[store.Store]:
    with store.open_store(where) as opened:
        yield opened


def approval(approval_id: str, **extra: Any) -> dict[str, Any]:
    return approval_request(approval_id, NOW, **extra)


def event(user: str, ts: float, **extra: Any) -> dict[str, Any]:
    return {
        "ts": store.iso(ts),
        "flow_id": "f",
        "session_id": f"s-{user}",
        "direction": "request",
        "user": user,
        "upstream": "db",
        "method": "tools/call",
        "target": "run_sql",
        "decision": "allow",
        **extra,
    }


def test_rows_chain_verify_and_read_back(db: store.Store) -> None:
    assert db.append("events", event("alice", NOW)) == 1
    assert db.append("events", event("bob", NOW + 1, decision="deny")) == 2
    db.append("sessions", {"session_id": "s-alice", "user": "alice", "first_seen": store.iso(NOW)})
    assert db.verify().ok and db.verify().rows_checked == 3
    assert [e["user"] for e in db.events(user="alice")] == ["alice"]  # "user", not current_user
    assert [e["seq"] for e in db.events(since=store.iso(NOW + 0.5))] == [2]
    assert len(db.events()) == 2 and db.event(2)["decision"] == "deny"  # type: ignore[index]
    sessions = {s["session_id"]: s for s in db.sessions()}
    assert sessions["s-bob"]["denials"] == 1 and sessions["s-alice"]["events"] == 1
    assert sessions["s-alice"]["kind"] == "mcp"
    assert [e["seq"] for e in db.session_events("s-bob")] == [2]
    head = db.chain_head()
    assert head[0] == 3 and db.row_hashes([1, 3, 99]).keys() == {1, 3}
    assert len(db.store_id) == 32


def test_the_approval_state_machine(db: store.Store) -> None:
    db.create_approval(approval("a1"))
    with pytest.raises(store.SelfApproval):
        db.decide_approval("a1", "approved", "alice", ["dba"], now=NOW)
    decided = db.decide_approval("a1", "approved", "dana", ["dba"], reason="ok", now=NOW)
    assert (decided["state"], decided["decider"]) == ("approved", "dana")
    with pytest.raises(store.ApprovalNotPending):
        db.decide_approval("a1", "denied", "dana", ["dba"], now=NOW)
    assert db.redeem_approval("a1", "alice", "used") and not db.redeem_approval("a1", "alice", "x")
    record = db.approval("a1")
    assert record is not None
    assert [h["state"] for h in record["history"]] == [
        "pending",
        "refused_attempt",
        "approved",
        "refused_attempt",
        "redeemed",
    ]
    db.create_approval(approval("a2"))
    db.create_approval(approval("a3", via="elicitation", expires=store.iso(NOW + 10)))
    assert [r["approval_id"] for r in db.approvals(pending_only=True)] == ["a2", "a3"]
    assert db.expire_pending("gateway restarted") == 1
    assert db.expire_overdue("late", now=NOW + 20) == 1
    assert db.approval_states(["a2", "a3", "zz"]).keys() == {"a2", "a3"}
    assert db.verify().ok


def test_purge_keeps_the_chain_verifiable(db: store.Store) -> None:
    for i in range(5):
        db.append("events", event("alice", NOW + i))
    report = db.purge(older_than_seconds=2.5, now=NOW + 5)
    assert report.removed["events"] == 3  # ts < NOW + 2.5
    assert db.verify().ok and db.last_purge() is not None


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_the_writer_appends(db: store.Store, process: bool) -> None:
    writer = db.writer(process=process)
    try:
        assert writer.submit_all([("events", event("alice", NOW)), ("events", event("bob", NOW))])
        writer.flush(timeout=10)
    finally:
        writer.close()
    assert len(db.events()) == 2 and db.verify().ok


def test_a_sessions_recordings_are_read_back_in_store_order(db: store.Store) -> None:
    for n, (replica, session) in enumerate([("a", "s1"), ("b", "s2"), ("b", "s1"), ("a", "s_1")]):
        row = {"ts": store.iso(NOW + n), "replica": replica, "session_id": session}
        db.append(
            "recordings", {**row, "file": f"f{n}.mitm", "flows": n, "bytes": 9, "sha256": "0"}
        )
    files = db.session_recordings(["s1", "s_1"])
    assert [(r["replica"], r["file"], r["flows"]) for r in files] == [
        ("a", "f0.mitm", 0),
        ("b", "f2.mitm", 2),
        ("a", "f3.mitm", 3),
    ]
    assert db.session_recordings([]) == [] and db.verify().ok


def test_two_stores_on_one_database_keep_one_chain(where: str) -> None:
    """What two replicas do: append at once, each from its own connection."""
    stores = [store.open_store(where), store.open_store(where)]
    errors: list[BaseException] = []

    def write(opened: store.Store, user: str) -> None:
        try:
            for i in range(25):
                opened.append("events", event(user, NOW + i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(s, u)) for s, u in zip(stores, "ab", strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        report = stores[0].verify()
        assert report.ok and report.rows_checked == 50
        assert sorted(e["seq"] for e in stores[1].events()) == list(range(1, 51))
    finally:
        for opened in stores:
            opened.close()


def test_two_deciders_one_winner(where: str) -> None:
    first, second = store.open_store(where), store.open_store(where)
    try:
        first.create_approval(approval("a1"))
        outcomes: list[str] = []

        def decide(opened: store.Store, who: str) -> None:
            try:
                opened.decide_approval("a1", "approved", who, ["dba"], now=NOW)
                outcomes.append("won")
            except store.ApprovalNotPending:
                outcomes.append("lost")

        threads = [
            threading.Thread(target=decide, args=(first, "dana")),
            threading.Thread(target=decide, args=(second, "dave")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes) == ["lost", "won"]
    finally:
        first.close()
        second.close()


def test_a_store_that_is_not_there_is_named(where: str, tmp_path: Path) -> None:
    missing = (
        str(tmp_path / "none.sqlite3")
        if "://" not in where
        else where.rsplit("/", 1)[0] + "/t_missing_db"
    )
    with pytest.raises(StoreError):
        store.open_store(missing, create=False)


def test_postgres_refuses_a_database_that_is_not_a_store(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(store.StoreUnavailable, match="not a holdgate audit store"):
        store.open_store(pg_url)


def test_postgres_has_no_per_host_digest_key(pg_url: str) -> None:
    with store.open_store(pg_url) as opened, pytest.raises(StoreError, match="hash_key"):
        opened.digest_key  # noqa: B018 - the property is the check


def test_an_unreachable_postgres_is_unavailable_and_its_password_unsaid() -> None:
    from helpers.processes import free_port

    port = free_port()
    for url in (
        f"postgresql://holdgate:s3cret-pw@127.0.0.1:{port}/holdgate",
        f"postgresql://holdgate@127.0.0.1:{port}/holdgate?password=s3cret-pw",
    ):
        with pytest.raises(store.StoreUnavailable) as info:
            store.open_store(url)
        assert "s3cret-pw" not in str(info.value)
        assert f"postgresql://holdgate@127.0.0.1:{port}/holdgate" in str(info.value)


def test_a_postgres_store_migrates_once(pg_url: str) -> None:
    store.open_store(pg_url).close()
    with store.open_store(pg_url) as again:
        again.append("events", event("alice", NOW))
        assert again.verify().ok


@pytest.mark.parametrize(
    ("sql", "named", "expected"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", False, "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("SELECT 1 WHERE x = :since AND y::text = :user", True,
         "SELECT 1 WHERE x = %(since)s AND y::text = %(user)s"),
        ("SELECT '100%' WHERE a = ?", False, "SELECT '100%%' WHERE a = %s"),
    ],
)  # fmt: skip
def test_parameters_are_rewritten_for_psycopg(sql: str, named: bool, expected: str) -> None:
    assert to_pyformat(sql, named) == expected


def test_a_certification_campaign(db: store.Store) -> None:
    from holdgate.store.campaign_records import ItemSpec
    from holdgate.store.errors import AlreadyCertified, SelfCertification

    specs = [
        ItemSpec("alice", "db", "tool", "run_sql", "dbas", {"calls": 3}),
        ItemSpec("bob", "db", "tool", "get_customer", "support", {"calls": 0}),
    ]
    started = db.start_campaign(
        "c1", (store.iso(NOW - 90 * 86400), store.iso(NOW)), "cfg", "carol", {}, specs
    )
    first, second = started.items
    assert [i.state for i in started.items] == ["open", "open"]
    with pytest.raises(SelfCertification):
        db.certify(first.item_id, "keep", "alice", "mine", None)
    kept = db.certify(first.item_id, "keep", "carol", "still needed", None)
    assert (kept.state, kept.reviewer) == ("keep", "carol")
    with pytest.raises(AlreadyCertified):
        db.certify(first.item_id, "revoke", "carol", "changed my mind", None)
    db.certify(second.item_id, "revoke", "carol", "never used", None)
    closed = db.campaign_event("c1", "closed", "carol", {})
    assert closed.state == "closed" and closed.progress() == {"open": 0, "keep": 1, "revoke": 1}
    assert [c.campaign_id for c in db.campaigns()] == ["c1"]
    assert db.verify().ok


def test_a_connection_lost_inside_a_transaction_never_goes_on_outside_it(pg_url: str) -> None:
    from holdgate.store.sqlconn import PgConnection, transaction

    conn = PgConnection(pg_url)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with pytest.raises(psycopg.OperationalError):
        with transaction(conn):
            with psycopg.connect(pg_url, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [pid])
            conn.execute("SELECT 1")  # the first statement after the loss raises
            conn.execute("SELECT 2")  # never reached
    with transaction(conn):  # the next transaction reconnects
        assert conn.execute("SELECT 3").fetchone()[0] == 3
    conn.close()


def backend_of(where: str) -> Any:
    return pg_schema if where.startswith("postgresql") else schema


@contextmanager
def opened_at_schema(
    where: str, version: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[store.Store]:
    """The store opened as an older release would (its migrations up to `version`)."""
    backend = backend_of(where)
    first = getattr(backend, "FIRST_VERSION", 1)
    with monkeypatch.context() as patched:
        patched.setattr(backend, "MIGRATIONS", backend.MIGRATIONS[: version - first + 1])
        patched.setattr(backend, "SCHEMA_VERSION", version)
        with store.open_store(where) as old:
            yield old


def made_at_schema(where: str, version: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A store as an older release made it (schema `version`, one event in it); the
    backend's schema module."""
    backend = backend_of(where)
    with opened_at_schema(where, version, monkeypatch) as old:
        old.append("events", event("alice", 1.0))
        with old._conn() as conn:
            assert backend.schema_version(conn) == version
    return backend


def test_a_store_of_schema_4_gains_the_feed_cursors_and_still_verifies(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store the release before audit feeds made (schema 4) opens at the current schema:
    `feed_cursors` is there, a feed can claim it, the old rows still verify."""
    backend = made_at_schema(where, 4, monkeypatch)
    with store.open_store(where) as new:
        with new._conn() as conn:
            assert backend.schema_version(conn) == backend.SCHEMA_VERSION
        assert new.feed_cursors() == []
        assert new.feed_claim("siem", "gw-1", 10.0) is not None
        assert [c["feed"] for c in new.feed_cursors()] == ["siem"]
        new.append("events", event("bob", 2.0))
        assert new.verify().ok


def test_a_store_of_schema_5_gains_the_rule_lineage_of_approvals(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 6 (issue 25 item 5): approvals name their rule's lineage. An approval stored
    before has none (it is never spent after the upgrade), and the old rows still verify."""
    backend = backend_of(where)
    with opened_at_schema(where, 5, monkeypatch) as old:
        old.create_approval(approval_request("a1", NOW))
        # a decision as that release wrote it (today's names its channel: schema 8)
        old.append("approvals", {"approval_id": "a1", "state": "approved", "decider": "dana"})
    with store.open_store(where) as new:
        with new._conn() as conn:
            assert backend.schema_version(conn) == backend.SCHEMA_VERSION >= 6
        before = new.approval("a1")
        assert before is not None and before["state"] == "approved"
        assert before.get("rule_lineage") is None
        new.create_approval(approval_request("a2", NOW, rule_lineage="f" * 64))
        after = new.approval("a2")
        assert after is not None and after["rule_lineage"] == "f" * 64
        assert new.verify().ok


def test_approvals_read_by_requester_and_newest(db: store.Store) -> None:
    """What the inbox reads: the pending ones, and one person's newest requests."""
    for i in range(6):
        db.create_approval(approval(f"a{i}", requester="alice" if i % 2 else "bob"))
    denied = {"approval_id": "a1", "state": "denied", "ts": "t", "decider": "d"}
    db.append("approvals", {**denied, "requester": "alice"})  # as decisions copy it
    mine = db.approvals(requester="alice")
    assert [(a["approval_id"], a["state"]) for a in mine] == [  # by their latest row
        ("a3", "pending"),
        ("a5", "pending"),
        ("a1", "denied"),
    ]
    assert [a["approval_id"] for a in db.approvals(requester="alice", newest=2)] == ["a5", "a1"]
    assert [a["approval_id"] for a in db.approvals(pending_only=True, requester="alice")] == [
        "a3",
        "a5",
    ]
    assert db.approvals(requester="mallory' OR '1'='1") == []
    assert [a["approval_id"] for a in db.approvals(newest=1)] == ["a1"]  # decided last


SCHEMA_8_APPROVALS_VIEW = f"""
SELECT a.approval_id, a.state, a.requester, a.upstream, a.method, a.tool, a.rule,
       a.approvers, a.decider, a.reason, a.created, a.expires,
       CASE WHEN a.state = 'pending' THEN NULL ELSE a.ts END AS decided,
       a.args_masked, a.args_digest, a.request_digest, a.changes, a.flow_id, a.seq, a.via,
       a.replica, a.rule_lineage, a.channel, a.decided_as
FROM approvals AS a
JOIN (SELECT approval_id, max(seq) AS seq FROM approvals
      WHERE state NOT IN {schema.ANNOTATIONS!r} GROUP BY approval_id) AS latest
  ON a.seq = latest.seq"""


def test_a_store_of_schema_8_reads_the_same_approvals_through_the_index(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 9: `v_approvals` finds each approval's latest row through the
    (approval_id, seq) index. Approvals written before (decided, annotated, pending) read
    the same afterwards; on SQLite, reading a few approvals scans no table."""
    backend = backend_of(where)
    with opened_at_schema(where, 8, monkeypatch) as old:
        with old._conn() as conn:  # the view as schema 8 was released: a grouped join
            conn.execute("DROP VIEW v_approvals")
            conn.execute(f"CREATE VIEW v_approvals AS {SCHEMA_8_APPROVALS_VIEW}")
        for approval_id in ("a1", "a2", "a3"):
            old.create_approval(approval(approval_id))
        decided = {"ts": "t", "decider": "dana", "channel": "api"}
        old.append("approvals", {"approval_id": "a1", "state": "approved", **decided})
        old.append("approvals", {"approval_id": "a1", "state": "grant_used", "ts": "t"})
        old.append("approvals", {"approval_id": "a3", "state": "denied", **decided})
        old.append("approvals", {"approval_id": "a3", "state": "refused_attempt", "ts": "t"})
        before = (old.approvals(), old.approvals(pending_only=True))
        states_before = old.approval_states(["a1", "a2", "a3", "nope"])
    assert [(a["approval_id"], a["state"]) for a in before[0]] == [
        ("a2", "pending"),
        ("a1", "approved"),
        ("a3", "denied"),
    ]
    with store.open_store(where) as new:
        with new._conn() as conn:
            assert backend.schema_version(conn) == backend.SCHEMA_VERSION >= 9
        assert (new.approvals(), new.approvals(pending_only=True)) == before
        assert new.approval_states(["a1", "a2", "a3", "nope"]) == states_before
        assert new.verify().ok
        if backend is schema:
            with new._conn() as conn:
                plan = conn.execute(
                    "EXPLAIN QUERY PLAN SELECT * FROM v_approvals WHERE approval_id IN (?, ?)",
                    ["a1", "a2"],
                ).fetchall()
            steps = [str(step[-1]) for step in plan]
            assert not any(step.startswith("SCAN") for step in steps), steps


def test_a_store_of_schema_7_gains_decision_channels_and_config_roles(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 8: approvals name their channel and the decider as authenticated; config
    versions their role and replica. Rows written before read NULL; the chain verifies."""
    backend = made_at_schema(where, 7, monkeypatch)
    with store.open_store(where) as new:
        with new._conn() as conn:
            assert backend.schema_version(conn) == backend.SCHEMA_VERSION
        new.append(
            "approvals",
            {
                "ts": "t",
                "approval_id": "a1",
                "state": "approved",
                "channel": "cli",
                "decided_as": '{"user": "dana"}',
            },
        )
        new.append(
            "config_versions",
            {
                "ts": "t",
                "config_hash": "h",
                "source": "s",
                "outcome": "loaded",
                "role": "candidate",
                "replica": "gw-1",
            },
        )
        found = new.approval("a1")
        assert found is not None
        assert (found["channel"], found["decided_as"]) == ("cli", '{"user": "dana"}')
        assert new.verify().ok


def test_a_store_of_schema_6_gains_task_owners_and_still_verifies(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = made_at_schema(where, 6, monkeypatch)
    with store.open_store(where) as new:
        with new._conn() as conn:
            assert backend.schema_version(conn) == backend.SCHEMA_VERSION
        task = store.TaskRecord("k", "alice", "crm", None, "report", "f", "1", 1.0, None)
        assert new.claim_task(task) == task
        new.append("events", event("bob", 2.0))
        assert new.verify().ok
