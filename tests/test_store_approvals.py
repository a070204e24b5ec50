"""The approval rules, once, in the store: who may decide, until when, and in which state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.approvals import approval_request
from holdgate import store

NOW = 1_800_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[store.SqliteStore]:
    with store.SqliteStore(tmp_path / "audit.sqlite3") as opened:
        opened.create_approval(request("a1"))
        yield opened


def request(approval_id: str, **extra: Any) -> dict[str, Any]:
    return approval_request(approval_id, NOW, rule="sql needs a dba", **extra)


def states(db: store.SqliteStore, approval_id: str = "a1") -> list[tuple[str, str | None]]:
    found = db.approval(approval_id)
    assert found is not None
    return [(h["state"], h.get("decider")) for h in found["history"]]


def test_an_approver_decides_and_gets_the_decided_record(db: store.SqliteStore) -> None:
    decided = db.decide_approval("a1", "approved", "dana", ["dba", "eng"], "ticket 42", NOW + 1)
    assert (decided["state"], decided["decider"], decided["reason"]) == (
        "approved",
        "dana",
        "ticket 42",
    )
    assert states(db) == [("pending", None), ("approved", "dana")]


@pytest.mark.parametrize(
    ("decider", "groups", "error", "message"),
    [
        ("alice", ["dba"], store.SelfApproval, "alice requested this call and cannot decide it"),
        ("alice", None, store.SelfApproval, r"\(separation of duties\)"),
        ("bob", ["eng"], store.NotAnApprover, r'bob is not in the approver groups \["dba"\]'),
        ("bob", [], store.NotAnApprover, "not in the approver groups"),
    ],
)
def test_refused_deciders_are_recorded_and_raised(
    db: store.SqliteStore,
    decider: str,
    groups: list[str] | None,
    error: type[store.ApprovalRefused],
    message: str,
) -> None:
    with pytest.raises(error, match=message) as info:
        db.decide_approval("a1", "approved", decider, groups, None, NOW + 1)
    assert info.value.approval_id == "a1" and info.value.current is not None
    assert states(db) == [("pending", None), ("refused_attempt", decider)]
    found = db.approval("a1")
    assert found is not None and found["state"] == "pending"
    assert found["history"][1]["reason"] == f"approved refused: {info.value}"


def test_the_requester_denies_no_more_than_they_approve(db: store.SqliteStore) -> None:
    with pytest.raises(store.SelfApproval):
        db.decide_approval("a1", "denied", "alice", None, None, NOW + 1)


def test_the_host_operator_needs_no_group(db: store.SqliteStore) -> None:
    """`holdgate approvals approve --as` is the host operator's word: no groups checked."""
    assert db.decide_approval("a1", "denied", "ops", None, "no", NOW + 1)["state"] == "denied"


def test_a_decision_after_expiry_is_refused_for_everyone(db: store.SqliteStore) -> None:
    """Before the store owned the rules, only the CLI checked expiry; the API did not."""
    late = NOW + 300
    for groups in (None, ["dba"]):
        with pytest.raises(
            store.ApprovalExpired, match="expired at .*; the decision came too late"
        ):
            db.decide_approval("a1", "approved", "dana", groups, None, late)
    assert db.approval("a1")["state"] == "pending"  # type: ignore[index]


def test_a_decided_approval_is_not_pending_any_more(db: store.SqliteStore) -> None:
    db.decide_approval("a1", "denied", "dana", ["dba"], None, NOW + 1)
    with pytest.raises(store.ApprovalNotPending, match=r"approval a1 is denied \(by dana\)"):
        db.decide_approval("a1", "approved", "erin", ["dba"], None, NOW + 2)
    assert states(db)[-1] == ("refused_attempt", "erin")


def test_an_unknown_approval_is_refused_and_nothing_recorded(db: store.SqliteStore) -> None:
    with pytest.raises(store.UnknownApproval, match="no approval zz"):
        db.decide_approval("zz", "approved", "dana", ["dba"], None, NOW)
    assert db.approval("zz") is None


def test_only_decisions_are_decisions(db: store.SqliteStore) -> None:
    with pytest.raises(store.BadRow):
        db.decide_approval("a1", "expired", "dana", None, None, NOW)  # type: ignore[arg-type]


def test_every_refusal_is_a_store_error_the_edges_can_map() -> None:
    refusals = (
        store.UnknownApproval,
        store.ApprovalNotPending,
        store.ApprovalExpired,
        store.SelfApproval,
        store.NotAnApprover,
    )
    assert all(issubclass(e, store.ApprovalRefused) for e in refusals)
    assert issubclass(store.ApprovalRefused, store.StoreError)


def test_open_store_chooses_the_backend_by_scheme(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "a.sqlite3"
    with store.open_store(f"sqlite://{path}") as opened:
        assert isinstance(opened, store.SqliteStore) and opened.path == str(path)
    with store.open_store(pg_url) as opened:
        assert isinstance(opened, store.PostgresStore)
    with pytest.raises(store.StoreNotSupported, match="no audit store backend for mysql://"):
        store.open_store("mysql://db/x")


def test_the_digest_key_lives_beside_the_store(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    with store.SqliteStore(path) as first:
        key = first.digest_key
    assert len(key) == 32 and (tmp_path / "a.sqlite3.key").stat().st_mode & 0o777 == 0o600
    with store.SqliteStore(path) as again:
        assert again.digest_key == key


def test_a_decision_names_its_channel_and_the_decider_as_authenticated(
    db: store.SqliteStore,
) -> None:
    """Schema 8: the row says how the decision came (channel) and who made it as the
    gateway authenticated them, with the approver group that qualified them."""
    decided = db.decide_approval(
        "a1",
        "approved",
        "dana",
        ["eng", "dba"],
        "ticket 42",
        NOW + 1,
        channel="cli",
        identity={"via": "jwt", "issuer": "https://idp.example"},
    )
    assert decided["channel"] == "cli"
    assert json.loads(decided["decided_as"] or "") == {
        "via": "jwt",
        "issuer": "https://idp.example",
        "user": "dana",
        "groups": ["dba", "eng"],
        "qualified_by": "dba",
    }
    assert db.verify().ok


def test_a_refused_attempt_names_its_channel_too(db: store.SqliteStore) -> None:
    with pytest.raises(store.NotAnApprover):
        db.decide_approval("a1", "approved", "bob", ["eng"], None, NOW + 1, channel="inbox")
    found = db.approval("a1")
    assert found is not None
    attempt = found["history"][-1]
    assert (attempt["state"], attempt["channel"]) == ("refused_attempt", "inbox")
    assert json.loads(attempt["decided_as"] or "")["qualified_by"] is None


def test_break_glass_records_no_groups_and_no_qualifying_group(db: store.SqliteStore) -> None:
    decided = db.decide_approval(
        "a1", "denied", "ops-oncall", None, "pager 9", NOW + 1, channel="break-glass"
    )
    assert decided["channel"] == "break-glass"
    seen = json.loads(decided["decided_as"] or "")
    assert (seen["groups"], seen["qualified_by"]) == (None, None)


def test_an_unknown_channel_is_refused(db: store.SqliteStore) -> None:
    with pytest.raises(store.BadRow):
        db.decide_approval("a1", "approved", "dana", ["dba"], None, NOW + 1, channel="fax")  # type: ignore[arg-type]
