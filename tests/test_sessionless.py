"""holdgate.protocol.sessionless: the self-reported client, trace context, grouped sessions."""

from __future__ import annotations

import re
from typing import Any

import pytest

from holdgate.protocol.sessionless import (
    CLIENT_CHARS,
    IDLE_SPLIT,
    UNKNOWN_CLIENT,
    SessionGrouper,
    client_of,
    group_key,
    invalid_traceparent,
    protocol_version_of,
    traceparent_of,
)
from holdgate.recording.segments import recording_name

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def request(**meta: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}


def with_client(info: Any) -> dict[str, Any]:
    return request(**{"io.modelcontextprotocol/clientInfo": info})


# --- client_of -------------------------------------------------------------------------------


def test_client_is_name_slash_version() -> None:
    assert client_of(with_client({"name": "claude-code", "version": "2.1"})) == "claude-code/2.1"
    assert client_of(with_client({"name": "bare"})) == "bare"


@pytest.mark.parametrize(
    "message",
    [
        None,
        [],
        {"params": []},
        {"params": {"_meta": "x"}},
        request(),
        with_client("name/1.0"),
        with_client(["a", "b"]),
        with_client({"version": "1.0"}),
        with_client({"name": 7, "version": "1"}),
        with_client({"name": "\x00\x1b\u202e", "version": "1"}),
    ],
    ids=lambda m: repr(m)[:40],
)
def test_no_client_from_what_is_not_a_client_info(message: Any) -> None:
    assert client_of(message) is None


def test_a_huge_client_info_is_cut() -> None:
    client = client_of(with_client({"name": "x" * 10_000_000, "version": "9" * 10_000}))
    assert client is not None and len(client) <= CLIENT_CHARS


def test_control_and_bidi_characters_are_removed() -> None:
    info = {"name": "evil\r\nuser: admin\x1b[31m\u202egnp", "version": "1\t0"}
    assert client_of(with_client(info)) == "evil user: admin[31mgnp/1 0"


def test_a_client_name_with_path_characters_stays_a_string() -> None:
    """Its name never names a file: the grouped session's id does."""
    assert client_of(with_client({"name": "../../etc+x/passwd", "version": "1"})) == (
        "../../etc+x/passwd/1"
    )


def test_protocol_version_from_meta() -> None:
    assert protocol_version_of(request(**{"io.modelcontextprotocol/protocolVersion": "2026-07-28"}))
    assert protocol_version_of(request(**{"io.modelcontextprotocol/protocolVersion": 5})) is None


# --- traceparent ------------------------------------------------------------------------------


def test_a_valid_traceparent_is_kept() -> None:
    assert traceparent_of(request(traceparent=TRACEPARENT)) == TRACEPARENT
    assert not invalid_traceparent(request(traceparent=TRACEPARENT))
    assert not invalid_traceparent(request())


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        TRACEPARENT.upper(),
        TRACEPARENT + "\n",
        TRACEPARENT + "-extra",
        "ff" + TRACEPARENT[2:],
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        7,
        None,
        {"traceparent": TRACEPARENT},
    ],
)
def test_an_invalid_traceparent_is_not_kept_but_flagged(value: Any) -> None:
    message = request(traceparent=value)
    assert traceparent_of(message) is None
    assert invalid_traceparent(message)


# --- SessionGrouper ---------------------------------------------------------------------------

KEY = group_key("alice", "demo", "claude-code/2.1", None, "10.0.0.1")


def test_activity_within_the_idle_split_is_one_session() -> None:
    grouper = SessionGrouper()
    first, new = grouper.resolve(KEY, 1000.0)[:2]
    assert new and re.fullmatch(r"hg-[0-9a-f]{20}", first)
    assert grouper.resolve(KEY, 1000.0 + IDLE_SPLIT - 1)[:2] == (first, False)
    # idle counts from the latest activity, not the first
    assert grouper.resolve(KEY, 1000.0 + 2 * IDLE_SPLIT - 2)[:2] == (first, False)


def test_exactly_the_idle_split_starts_a_new_session() -> None:
    grouper = SessionGrouper()
    first, _ = grouper.resolve(KEY, 0.0)[:2]
    assert grouper.resolve(KEY, 1000.0)[:2] == (first, False)
    second, new = grouper.resolve(KEY, 1000.0 + IDLE_SPLIT)[:2]
    assert new and second != first
    assert grouper.resolve(KEY, 1000.0 + 2 * IDLE_SPLIT - 1)[:2] == (second, False)


def test_a_late_flow_does_not_move_the_session_back_in_time() -> None:
    grouper = SessionGrouper()
    first, _ = grouper.resolve(KEY, 5000.0)[:2]
    assert grouper.resolve(KEY, 4000.0)[:2] == (first, False)
    assert grouper.resolve(KEY, 5000.0 + IDLE_SPLIT - 1)[:2] == (first, False)


@pytest.mark.parametrize(
    "other",
    [
        group_key("bob", "demo", "claude-code/2.1", None, "10.0.0.1"),
        group_key("alice", "crm", "claude-code/2.1", None, "10.0.0.1"),
        group_key("alice", "demo", "cursor/1.0", None, "10.0.0.1"),
        group_key("alice", "demo", "claude-code/2.1", None, "10.0.0.2"),
    ],
    ids=["user", "upstream", "client", "host"],
)
def test_each_part_of_the_key_separates_sessions(other: Any) -> None:
    grouper = SessionGrouper()
    assert grouper.resolve(KEY, 0.0)[:2][0] != grouper.resolve(other, 0.0)[:2][0]


def test_without_client_info_the_user_agent_or_unknown_groups() -> None:
    by_agent = group_key("alice", "demo", None, "python-httpx/0.28\r\nX: y", "h")
    assert by_agent.client == "python-httpx/0.28 X: y"
    assert group_key("alice", "demo", None, None, None).client == UNKNOWN_CLIENT
    assert len(group_key("a", "d", None, "u" * 100_000, "h").client) <= CLIENT_CHARS


def test_memory_is_bounded_and_the_least_recently_active_goes_first() -> None:
    grouper = SessionGrouper(limit=3)
    keys = [group_key(f"user{i}", "demo", None, None, "h") for i in range(4)]
    ids = [grouper.resolve(k, 0.0)[:2][0] for k in keys[:3]]
    grouper.resolve(keys[0], 1.0)[:2]  # user0 active again: user1 is now the oldest
    grouper.resolve(keys[3], 2.0)[:2]
    assert len(grouper) == 3
    assert grouper.resolve(keys[0], 3.0)[:2] == (ids[0], False)
    assert grouper.resolve(keys[2], 3.0)[:2] == (ids[2], False)
    assert grouper.resolve(keys[1], 3.0)[:2][1]  # forgotten: a new session


def test_grouped_ids_are_safe_file_names() -> None:
    grouper = SessionGrouper()
    for i in range(50):
        session = grouper.resolve(group_key(f"u{i}", "../x+y", "a/b+c", None, "h"), 0.0).session
        assert recording_name(session) == session and "+" not in session


# --- the cap on a caller's open grouped sessions (issue 25 item 6) ---------------------------


def _client(user: str, n: int, upstream: str = "demo") -> Any:
    return group_key(user, upstream, f"made-up-{n}/1.0", None, "10.0.0.1")


def test_past_the_cap_a_callers_new_clients_share_one_overflow_session() -> None:
    grouper = SessionGrouper()
    own = [grouper.resolve(_client("mallory", n), 0.0, per_caller=16) for n in range(16)]
    assert all(g.is_new and not g.overflow for g in own)
    assert len({g.session for g in own}) == 16
    extra = [grouper.resolve(_client("mallory", n), 1.0, per_caller=16) for n in range(16, 40)]
    assert all(g.overflow for g in extra)
    assert len({g.session for g in extra}) == 1 and extra[0].is_new
    assert not any(g.is_new for g in extra[1:])
    assert extra[0].session not in {g.session for g in own}
    # a client in the overflow session stays there; the first ones keep their own
    assert grouper.resolve(_client("mallory", 20), 2.0, per_caller=16)[:3] == (
        extra[0].session,
        False,
        True,
    )
    assert grouper.resolve(_client("mallory", 3), 2.0, per_caller=16).session == own[3].session


def test_the_cap_is_per_identity_and_upstream() -> None:
    grouper = SessionGrouper()
    for n in range(3):
        grouper.resolve(_client("mallory", n), 0.0, per_caller=2)
    assert not grouper.resolve(_client("alice", 0), 0.0, per_caller=2).overflow
    assert not grouper.resolve(_client("mallory", 0, "crm"), 0.0, per_caller=2).overflow
    assert grouper.resolve(_client("mallory", 9), 0.0, per_caller=2).overflow


def test_sessions_idle_past_the_split_no_longer_count_as_open() -> None:
    grouper = SessionGrouper()
    for n in range(2):
        grouper.resolve(_client("mallory", n), 0.0, per_caller=2)
    assert grouper.resolve(_client("mallory", 2), 10.0, per_caller=2).overflow
    later = grouper.resolve(_client("mallory", 3), IDLE_SPLIT + 1.0, per_caller=2)
    assert later.is_new and not later.overflow  # the first two went idle: room again
    grouper.resolve(_client("mallory", 4), IDLE_SPLIT + 1.0, per_caller=2)
    shared = grouper.resolve(_client("mallory", 5), IDLE_SPLIT + 2.0, per_caller=2)
    assert shared.overflow and not shared.is_new  # the overflow session was active at 10.0
    # the overflow session idles like any other: a new one after the split
    grouper.resolve(_client("mallory", 3), 2 * IDLE_SPLIT, per_caller=2)
    grouper.resolve(_client("mallory", 4), 2 * IDLE_SPLIT, per_caller=2)
    again = grouper.resolve(_client("mallory", 6), 2 * IDLE_SPLIT + 10.0, per_caller=2)
    assert again.overflow and again.is_new and again.session != shared.session


def test_a_flood_of_client_names_stays_bounded() -> None:
    grouper = SessionGrouper(limit=100)
    sessions = {
        grouper.resolve(_client("mallory", n), n / 100, per_caller=16).session
        for n in range(10_000)
    }
    assert len(sessions) == 17 and len(grouper) == 16  # overflow names are not kept
