import pytest
from hypothesis import given
from hypothesis import strategies as st

from holdgate.protocol.sse import (
    SSEDecodeError,
    SSEDecoder,
    SSEError,
    SSEEvent,
    SSEEventTooLarge,
    encode_comment,
    encode_event,
)


def decode(*chunks: bytes, max_event_bytes: int = 1_048_576) -> list[SSEEvent]:
    decoder = SSEDecoder(max_event_bytes)
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


def outcome(chunks: list[bytes], max_event_bytes: int) -> tuple[list[SSEEvent], type | None]:
    """Events produced and the error raised, if any: what must not depend on chunking."""
    decoder = SSEDecoder(max_event_bytes)
    events: list[SSEEvent] = []
    for chunk in chunks:
        try:
            events += decoder.feed(chunk)
        except SSEError as exc:
            return events + list(exc.events), type(exc)
    return events + decoder.close(), None


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(nl):
    stream = nl.join([b"data: a", b"data: b", b"", b"event: x", b"data: c", b"", b""])
    assert decode(stream) == [SSEEvent("a\nb"), SSEEvent("c", event="x")]


def test_crlf_split_across_chunks_is_one_line_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # completes the CRLF: not a blank line
    assert decoder.feed(b"\r\n") == [SSEEvent("a")]


def test_cr_then_cr_in_next_chunk_is_a_blank_line():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\rdata: b\r") == [SSEEvent("a")]
    assert decoder.feed(b"\n\n") == [SSEEvent("b")]


def test_multi_line_data_and_value_rules():
    stream = b"data\ndata:\ndata:  two spaces\ndata: a:b\ndata:x\n\n"
    assert decode(stream) == [SSEEvent("\n\n two spaces\na:b\nx")]


def test_event_id_retry_and_comments():
    stream = b": hello\n:no-space\nevent: update\nid: 42\nretry: 3000\ndata: {}\n\n"
    assert decode(stream) == [
        SSEEvent("{}", event="update", id="42", retry=3000, comments=("hello", "no-space"))
    ]


def test_last_value_wins_and_unknown_fields_ignored():
    stream = b"event: a\nevent: b\nid: 1\nid: 2\nData: no\nfoo: bar\ndata: x\n\n"
    assert decode(stream) == [SSEEvent("x", event="b", id="2")]


def test_events_without_data_are_kept_for_re_emission():
    stream = b": ping\n\nid: 7\n\nretry: 10\n\nevent: e\n\nid\n\n"
    assert decode(stream) == [
        SSEEvent(None, comments=("ping",)),
        SSEEvent(None, id="7"),
        SSEEvent(None, retry=10),
        SSEEvent(None, event="e"),
        SSEEvent(None, id=""),  # an empty id resets the client's last event id
    ]


def test_blank_lines_and_ignored_fields_dispatch_nothing():
    assert decode(b"\n\n\r\n\rfoo: bar\nretry: x\nid: a\0b\n\n") == []


def test_id_containing_nul_is_ignored():
    assert decode(b"id: 1\nid: a\0b\ndata: x\n\n") == [SSEEvent("x", id="1")]


@pytest.mark.parametrize(
    "value", [b"12a", b"-1", b"", b" 1", b"1 ", b"1.5", "\u0661\u0662".encode(), b"9" * 19]
)
def test_invalid_retry_is_ignored(value):
    assert decode(b"retry: " + value + b"\ndata: x\n\n") == [SSEEvent("x")]


def test_leading_bom_stripped_once_even_when_split():
    bom = b"\xef\xbb\xbf"
    assert decode(bom + b"data: x\n\n") == [SSEEvent("x")]
    assert decode(bom[:1], bom[1:2], bom[2:] + b"data: x\n\n") == [SSEEvent("x")]
    # A second BOM belongs to the field name, making it an unknown field.
    assert decode(bom + bom + b"data: x\n\ndata: y\n\n") == [SSEEvent("y")]
    assert decode(b"data: x\n\n" + bom + b"data: y\n\n") == [SSEEvent("x")]


def test_unterminated_final_event_is_discarded_at_close():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\ndata: partial\nid: 3\ndata: no newline") == [SSEEvent("x")]
    assert decoder.buffered_bytes > 0
    assert decoder.close() == []
    assert decoder.buffered_bytes == 0


def test_multibyte_utf8_split_at_every_byte():
    stream = "data: é€😀\n\n".encode()
    assert decode(*(stream[i : i + 1] for i in range(len(stream)))) == [SSEEvent("é€😀")]


@pytest.mark.parametrize("line", [b"data: \xff", b"data: \xe2\x82", b"\xc0\xafdata: x"])
def test_invalid_utf8_raises_and_keeps_failing(line):
    decoder = SSEDecoder()
    with pytest.raises(SSEDecodeError) as info:
        decoder.feed(b"data: ok\n\n" + line + b"\n\n")
    assert info.value.events == (SSEEvent("ok"),)  # completed first: can still be forwarded
    assert isinstance(info.value, ValueError)
    assert decoder.buffered_bytes == 0
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: fine\n\n")


def test_small_events_pass_and_buffer_stays_bounded():
    decoder = SSEDecoder(max_event_bytes=64)
    event = b"id: 1\ndata: " + b"x" * 40 + b"\n\n"
    for byte in event * 200:
        decoder.feed(bytes([byte]))
        assert decoder.buffered_bytes <= 64


def test_event_of_exactly_the_limit_is_allowed():
    event = b"data: " + b"x" * 10 + b"\n\n"  # wire size 17 + 1
    assert decode(event, max_event_bytes=17) == [SSEEvent("x" * 10)]
    with pytest.raises(SSEEventTooLarge):
        decode(event, max_event_bytes=16)


@pytest.mark.parametrize(
    "piece", [b"x" * 7, b"data: y\n", b": c\n"], ids=["one long line", "many data", "comments"]
)
def test_too_large_event_raises_without_growing(piece):
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: ")
    with pytest.raises(SSEEventTooLarge):
        for _ in range(100):
            decoder.feed(piece)
            assert decoder.buffered_bytes <= 100
    assert decoder.buffered_bytes == 0
    with pytest.raises(SSEEventTooLarge):
        decoder.feed(b"\n\n")


def test_max_event_bytes_must_be_positive():
    with pytest.raises(ValueError):
        SSEDecoder(0)


def test_encode_event_canonical_form():
    event = SSEEvent("a\n\nb", event="e", id="1", retry=5, comments=("c1", ""))
    assert encode_event(event) == (
        b": c1\n: \nevent: e\nid: 1\nretry: 5\ndata: a\ndata: \ndata: b\n\n"
    )
    assert encode_event(SSEEvent("")) == b"data: \n\n"
    assert encode_comment("keepalive") == b": keepalive\n"


@pytest.mark.parametrize(
    "event",
    [
        SSEEvent("a\rb"),
        SSEEvent("x", event="a\nb"),
        SSEEvent("x", id="a\rb"),
        SSEEvent("x", id="a\0b"),
        SSEEvent("x", retry=-1),
        SSEEvent("x", retry=10**18),
        SSEEvent("x", comments=("a\nb",)),
    ],
)
def test_encode_rejects_what_the_wire_cannot_carry(event):
    with pytest.raises(ValueError):
        encode_event(event)


def test_encode_comment_rejects_line_breaks():
    with pytest.raises(ValueError):
        encode_comment("a\r\nevent: injected")


line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
events = st.builds(
    SSEEvent,
    data=st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\r")),
    event=st.none() | line_text,
    id=st.none() | line_text.filter(lambda s: "\0" not in s),
    retry=st.none() | st.integers(0, 10**18 - 1),
    comments=st.lists(line_text, max_size=3).map(tuple),
)


@given(st.lists(events, max_size=5))
def test_round_trip(evs):
    stream = b"".join(encode_event(e) for e in evs)
    assert decode(stream) == [e for e in evs if e != SSEEvent(None)]


CORPUS = [
    b"\xef\xbb\xbfdata: a\r\ndata: b\r\n\r\n",
    ": c\rid: 1\rretry: 10\revent: e\rdata: \u00e9\u20ac\U0001f600\r\r".encode(),
    b"data\n\ndata:x\r\n\n\r\r\nid\nfoo\n:\n\n",
    b"data: one\r\n\r\ndata: two\n\ndata: tail-without-blank-line\r\n",
    b"\xef\xbbdata: bad start\n\n",
    b"data: ok\n\ndata: \xe2\x82\n\n",
]


@pytest.mark.parametrize("stream", CORPUS)
@pytest.mark.parametrize("limit", [12, 1_048_576])
def test_every_two_way_split_matches_whole(stream, limit):
    whole = outcome([stream], limit)
    for i in range(len(stream) + 1):
        assert outcome([stream[:i], stream[i:]], limit) == whole, i


TOKENS = [
    b"data",
    b"event",
    b"id",
    b"retry",
    b"foo",
    b":",
    b" ",
    b"x",
    b"42",
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xef\xbb\xbf",
    "\u00e9\u20ac\U0001f600".encode(),
    b"\xff",
]


@given(
    stream=st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    limit=st.sampled_from([8, 32, 1_048_576]),
)
def test_random_multi_split_matches_whole(stream, cuts, limit):
    points = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    chunks = [stream[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert outcome(chunks, limit) == outcome([stream], limit)


@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join))
def test_re_encoding_decoded_events_preserves_them(stream):
    evs, _ = outcome([stream], 1_048_576)
    reencoded = b"".join(encode_event(e) for e in evs)
    assert decode(reencoded) == evs
