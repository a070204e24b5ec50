"""The per-caller budget of refused certifications recorded one by one, and the bound on
what a certification row keeps of a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holdgate import store
from holdgate.approvals.refusal_budget import RefusalBudget
from holdgate.store.campaign_records import REASON_CHARS, ItemSpec, bounded


def test_a_burst_is_recorded_then_counted_then_reported_when_budget_returns() -> None:
    budget = RefusalBudget(burst=3, period=60.0)
    assert [budget.admit("bob", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.unrecorded("bob") == 2
    assert budget.admit("bob", 10.0) is None  # half a token back: still over
    assert budget.admit("bob", 20.0) == 3  # one token back: recorded, with the count
    assert budget.unrecorded("bob") == 0
    assert budget.admit("carol", 20.0) == 0  # callers do not share a bucket


def test_a_clock_that_goes_back_gives_no_budget() -> None:
    budget = RefusalBudget(burst=1, period=60.0)
    assert budget.admit("bob", 100.0) == 0
    assert budget.admit("bob", 0.0) is None


def test_callers_beyond_the_bound_are_forgotten_oldest_first() -> None:
    budget = RefusalBudget(burst=1, callers=2)
    for caller in ("a", "b", "c"):
        budget.admit(caller, 0.0)
    assert budget.admit("a", 0.0) == 0  # forgotten: a fresh bucket
    assert budget.admit("c", 0.0) is None


@given(st.lists(st.floats(min_value=0, max_value=600), max_size=200))
def test_never_more_recorded_than_the_budget_allows(times: list[float]) -> None:
    budget = RefusalBudget(burst=10, period=60.0)
    clock = sorted(times)
    recorded = [t for t in clock if budget.admit("bob", t) is not None]
    for start in recorded:
        within = [t for t in recorded if start <= t < start + 60.0]
        assert len(within) <= 20  # a full bucket plus a minute's refill


@pytest.mark.parametrize("length", [0, REASON_CHARS, REASON_CHARS + 1, 64 * 1024])
def test_a_reason_is_kept_to_its_bound_with_a_marker(length: int) -> None:
    text = "r" * length
    kept = bounded(text)
    if length <= REASON_CHARS:
        assert kept == text
    else:
        assert kept == "r" * REASON_CHARS + f"… [truncated: {length} characters]"


def test_a_refused_attempt_keeps_a_bounded_caller_name_and_reason(tmp_path: Path) -> None:
    with store.SqliteStore(tmp_path / "audit.sqlite3") as opened:
        period = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
        spec = ItemSpec("alice", "demo", "tool", "t", "r", {})
        cid = opened.start_campaign("rc-1", period, "h", "carol", {}, [spec]).campaign_id
        name = "b" * (16 * 1024)  # a trusted-header user name
        with pytest.raises(store.NotAReviewer):
            opened.certify(f"{cid}.1", "keep", name, "x" * 60000, ("eng",), ("compliance",), " n")
        decided = opened.certify(f"{cid}.1", "keep", "carol", "y" * 60000, None)
        (refused,) = opened.campaign(cid).items[0].refused
    assert len(refused["reviewer"]) < REASON_CHARS + 50
    assert len(refused["reason"]) < REASON_CHARS + 50 and "truncated" in refused["reason"]
    assert decided.reason is not None and decided.reason.endswith("[truncated: 60000 characters]")
