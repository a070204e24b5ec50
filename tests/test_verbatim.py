"""When a response may go out as the upstream's bytes: only if nothing in it could differ."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holdgate.protocol.verbatim import verbatim

MESSAGE = {"jsonrpc": "2.0", "id": 1, "result": {"text": "ok"}}


def test_the_same_objects_and_plain_bytes_go_out_as_sent() -> None:
    assert verbatim(json.dumps(MESSAGE).encode(), [MESSAGE], [MESSAGE])


def test_long_integers_are_exact_and_go_out_as_sent() -> None:
    assert verbatim(b'{"sent_ns": 1764633600123456789, "v": "1.2.3.4"}', [MESSAGE], [MESSAGE])


def test_a_changed_or_added_message_is_written_anew() -> None:
    data = json.dumps(MESSAGE).encode()
    assert not verbatim(data, [MESSAGE], [dict(MESSAGE)])  # equal, but a stage's copy
    assert not verbatim(data, [MESSAGE], [MESSAGE, {"jsonrpc": "2.0", "id": 2}])


@pytest.mark.parametrize(
    "raw",
    [
        rb'"\u0042earer"',  # could spell an injected credential a byte scan misses
        rb'"a\/b"',
        b"4111111111111111.0",  # more digits than the float the gateway read
        b"4.1111111111111111e15",
        b"4111111111111111E0",
    ],
)
def test_bytes_that_could_say_more_than_was_checked_are_written_anew(raw: bytes) -> None:
    assert not verbatim(b'{"v": ' + raw + b"}", [MESSAGE], [MESSAGE])


@given(st.text())
def test_a_string_json_writes_without_ascii_escapes_and_slashes_may_go_as_is(text: str) -> None:
    # The short escapes json.dumps writes may go as the upstream wrote them.
    data = json.dumps({"t": text}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if b"\\u" not in data and not any(c.isdigit() for c in text):
        assert verbatim(data, [MESSAGE], [MESSAGE])
