"""The state replicas share outside the chain, on both backends: rate-limit windows,
grants, and one first-seen pin per tool when two stores (replicas) see a tool at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from holdgate import store
from holdgate.approvals.approval_rules import grant_key
from holdgate.policy.quota import rate_bucket

NOW = 1_800_000_000.0


@pytest.fixture
def db(where: str) -> Iterator[store.Store]:
    with store.open_store(where) as opened:
        yield opened


def test_a_window_counts_until_its_period_is_over(db: store.Store) -> None:
    bucket = rate_bucket("r", "alice")
    hits = [db.take_rate(bucket, 60.0, now=NOW + i) for i in range(3)]
    assert hits == [(1, NOW), (2, NOW), (3, NOW)]  # fixed: anchored at the first call
    assert db.take_rate(bucket, 60.0, now=NOW + 59.9) == (4, NOW)
    assert db.take_rate(bucket, 60.0, now=NOW + 60.0) == (1, NOW + 60.0)  # a new window
    assert db.take_rate(rate_bucket("r", "bob"), 60.0, now=NOW + 61) == (1, NOW + 61)


def test_a_hit_given_back_counts_no_more_unless_its_window_is_over(db: store.Store) -> None:
    bucket = rate_bucket("r", "alice")
    db.take_rate(bucket, 60.0, now=NOW)
    db.take_rate(bucket, 60.0, now=NOW + 1)
    db.give_back_rate(bucket, NOW)
    assert db.take_rate(bucket, 60.0, now=NOW + 2) == (2, NOW)
    db.take_rate(bucket, 60.0, now=NOW + 70)  # the window rolled over
    db.give_back_rate(bucket, NOW)  # a hit of the old window: nothing to give back
    assert db.take_rate(bucket, 60.0, now=NOW + 71) == (2, NOW + 70)


def test_the_database_clock_judges_windows_when_no_time_is_given(db: store.Store) -> None:
    now = db.db_now()
    hits, start = db.take_rate(rate_bucket("r", "u"), 60.0)
    assert hits == 1 and abs(start - now) < 30


@pytest.mark.parametrize(
    ("rule", "user"),
    [
        ("r", 'a"; DROP TABLE rate_counters; --'),
        ("r|x", "y"),  # never the same counter as ("r", "x|y")
        ("r", "x|y"),
        ("r\x00", "nul\x00user"),
        ("règle ☃", "ユーザー" * 2000),
    ],
)
def test_odd_rule_and_user_names_make_distinct_bounded_buckets(
    db: store.Store, rule: str, user: str
) -> None:
    bucket = rate_bucket(rule, user)
    assert len(bucket) == 64
    assert db.take_rate(bucket, 60.0, now=NOW) == (1, NOW)
    assert db.take_rate(bucket, 60.0, now=NOW) == (2, NOW)
    assert rate_bucket("r|x", "y") != rate_bucket("r", "x|y")


def test_a_grant_is_found_until_it_expires(db: store.Store) -> None:
    key = grant_key("alice", "db", "tools/call", "run_sql", "d1")
    assert db.find_grant(key, now=NOW) is None
    db.add_grant(key, "a1", 600.0, now=NOW)
    assert db.find_grant(key, now=NOW + 599) == "a1"
    assert db.find_grant(key, now=NOW + 600) is None  # over
    assert db.find_grant(grant_key("bob", "db", "tools/call", "run_sql", "d1"), now=NOW) is None
    db.add_grant(grant_key("bob", "db", "tools/call", "run_sql", "d1"), "a2", 10.0, now=NOW + 700)
    assert db.find_grant(key, now=NOW) is None  # deleted once over, when a grant was added


def test_a_grant_by_the_database_clock(db: store.Store) -> None:
    key = grant_key("alice", "db", "tools/call", "run_sql", "d1")
    db.add_grant(key, "a1", 600.0)
    assert db.find_grant(key) == "a1"
    assert db.find_grant(key, now=db.db_now() + 601) is None


def pin(tool: str, digest: str, event: str = "first-seen") -> tuple[str, store.Row]:
    row = {
        "ts": store.iso(NOW),
        "upstream": "demo",
        "tool": tool,
        "definition_digest": digest,
        "definition": "{}",
        "event": event,
        "actor": "gateway",
    }
    return "tool_pins", store.normalize_row("tool_pins", row)


def test_two_stores_seeing_a_new_tool_at_once_pin_it_once(where: str) -> None:
    stores = [store.open_store(where), store.open_store(where)]
    go = threading.Barrier(2)
    errors: list[BaseException] = []

    def first_seen(opened: store.Store, digest: str) -> None:
        try:
            go.wait(timeout=30)
            for i in range(20):
                opened.append_batch([pin(f"tool{i}", digest)])  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=first_seen, args=(s, d)) for s, d in zip(stores, "ab", strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        rows = stores[0].tool_pin_rows()
        assert sorted(r["tool"] for r in rows) == sorted(f"tool{i}" for i in range(20))
        assert stores[1].verify().ok
    finally:
        for opened in stores:
            opened.close()


def test_only_first_seen_rows_are_dropped_for_a_known_tool(db: store.Store) -> None:
    db.append_batch([pin("t", "a"), pin("t", "b")])  # type: ignore[attr-defined]
    db.append_batch([pin("t", "c"), pin("t", "d", "changed")])  # type: ignore[attr-defined]
    db.append_batch([pin("t", "e", "pinned")])  # type: ignore[attr-defined]
    assert [(r["event"], r["definition_digest"]) for r in db.tool_pin_rows()] == [
        ("first-seen", "a"),
        ("changed", "d"),
        ("pinned", "e"),
    ]
