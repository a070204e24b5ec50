"""The slicer of a stream's notifications (pure): one row per slice, bounded by count and
bytes, each event findable in it by its number; rows of one message read the same way."""

from __future__ import annotations

import json

import pytest

from holdgate.store.event_slices import (
    SLICE_BYTES,
    SLICE_EVENTS,
    EventSlice,
    find_message,
    recorded_messages,
)

PROGRESS = "notifications/progress"
BASE = {"ts": "2026-12-07T12:00:00.000000Z", "flow_id": "f1", "session_id": "s1", "user": "a"}


def progress(i: int, token: object = "tok", **extra: object) -> dict[str, object]:
    params = {"progressToken": token, "progress": i, **extra}
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


def gathered(count: int, start: float = 100.0) -> EventSlice:
    batch = EventSlice(dict(BASE), start)
    for i in range(count):
        message = progress(i)
        assert not batch.add(
            i + 1, start + i / 1000, PROGRESS, message, json.dumps(message), {}, {}
        )
    return batch


def stored(row: dict[str, object], seq: int = 7) -> dict[str, object]:
    return {"seq": seq, **row}


def test_a_slice_is_one_row_and_every_event_is_in_it_in_order() -> None:
    batch = gathered(3)
    batch.add(
        4,
        100.0125,
        PROGRESS,
        progress(3),
        json.dumps(progress(3)),
        {"email": 2},
        {"exempted": ["x"]},
    )
    row = batch.row("sse")
    assert row["direction"] == "server_notification" and row["decision"] == "pass"
    assert row["method"] == "notifications/progress"  # the common method
    assert row["flow_id"] == "f1" and row["ts"] == BASE["ts"]
    assert json.loads(row["masked"]) == {"email": 2}  # counts summed over the events
    extra = json.loads(row["extra"])
    assert extra["transport"] == "sse"
    assert [e["n"] for e in extra["events"]] == [1, 2, 3, 4]
    assert extra["events"][3] == {
        "n": 4,
        "t": 12.5,
        "method": "notifications/progress",
        "progress_token": "tok",
        "masked": {"email": 2},
        "exempted": ["x"],
    }
    messages = recorded_messages(stored(row))
    assert [m.message for m in messages] == [progress(i) for i in range(4)]
    assert messages[3].masked == {"email": 2} and messages[3].details["exempted"] == ["x"]
    assert messages[3].offset_ms == 12.5 and messages[3].seq == 7


def test_events_of_several_methods_are_notifications() -> None:
    batch = gathered(1)
    log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "hi"}}
    batch.add(2, 100.1, "notifications/message", log, json.dumps(log), {}, {})
    row = batch.row("sse")
    assert row["method"] == "notifications"
    assert "progress_token" not in json.loads(row["extra"])["events"][1]


def test_a_slice_is_full_at_its_count() -> None:
    batch = gathered(SLICE_EVENTS - 1)
    assert batch.add(SLICE_EVENTS, 101.0, PROGRESS, progress(0), json.dumps(progress(0)), {}, {})


def test_a_slice_is_full_at_its_bytes_whatever_the_count() -> None:
    """A hostile upstream's big events: the slice holds a bounded amount of text."""
    batch = EventSlice(dict(BASE), 0.0)
    big = json.dumps(progress(0, pad="x" * 100_000))
    added = 1
    while not batch.add(added, 0.0, PROGRESS, progress(0), big, {}, {}):
        added += 1
    assert added == -(-SLICE_BYTES // len(big)) < SLICE_EVENTS  # the first to reach the bound
    assert batch.size < SLICE_BYTES + len(big)


def test_a_cut_message_reads_back_as_its_text() -> None:
    batch = EventSlice(dict(BASE), 0.0)
    cut = json.dumps('{"jsonrpc": "2.0", "meth…[truncated]')
    batch.add(1, 0.0, PROGRESS, progress(0), cut, {}, {})
    (message,) = recorded_messages(stored(batch.row("sse")))
    assert message.message == '{"jsonrpc": "2.0", "meth…[truncated]'


def test_an_event_is_found_by_flow_and_number_among_other_rows() -> None:
    own = {
        "seq": 9,
        "ts": "t",
        "flow_id": "f1",
        "direction": "response",
        "method": "tools/call",
        "args_masked": json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}),
        "extra": json.dumps({"transport": "sse", "n": 4}),
    }
    other_flow = stored({**gathered(3).row("sse"), "flow_id": "f2"}, seq=3)
    rows = [other_flow, stored(gathered(3).row("sse")), own]
    assert [m.seq for m in find_message(rows, 2)] == [3, 7]  # one in each stream
    (second,) = find_message(rows, 2, "f1")
    assert second.message == progress(1) and second.n == 2
    (last,) = find_message(rows, 4, "f1")
    assert last.seq == 9 and last.message["id"] == 1 and last.details == {"transport": "sse"}


def test_a_batch_row_changed_so_its_events_do_not_pair_up_is_an_error() -> None:
    row = stored(gathered(3).row("sse"))
    row["args_masked"] = json.dumps([progress(0)])  # two messages taken out
    with pytest.raises(ValueError, match="do not pair up"):
        recorded_messages(row)


def test_a_hostile_events_method_and_progress_token_count_against_the_bound() -> None:
    """What the entries hold beside the messages is bounded too: a progress token is cut,
    a method counts in the slice's bytes, a token that is no string or number is left out."""
    batch = EventSlice(dict(BASE), 0.0)
    method = "m" * (SLICE_BYTES // 2)
    huge = {"jsonrpc": "2.0", "method": method, "params": {"progressToken": "t" * 10_000}}
    assert not batch.add(1, 0.0, method, huge, '"cut"', {}, {})
    assert batch.add(2, 0.0, method, huge, '"cut"', {}, {})  # full: its methods' bytes
    assert batch.entries[0]["progress_token"] == "t" * 200
    odd = {"jsonrpc": "2.0", "method": "x", "params": {"progressToken": {"a": [1] * 1000}}}
    other = EventSlice(dict(BASE), 0.0)
    other.add(1, 0.0, "x", odd, json.dumps(odd), {}, {})
    assert "progress_token" not in other.entries[0]
