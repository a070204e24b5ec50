"""Masking gaps closed (issue 13, item 11): PII in keys, card numbers as numbers, escapes,
full-width forms, zero-width characters, and values split across two stream messages.

Each attack input here passed unmasked before the fix.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from holdgate.masking.detectors import BUILTIN_DETECTORS, FOLDS, custom_detector, fold
from holdgate.masking.masker import (
    FieldRule,
    Profile,
    ProfilesInEffect,
    StreamMasker,
    mask_json,
    mask_text,
    scan,
)

KEY = b"test-hash-key"
PII = ("email", "phone", "credit_card", "iban", "us_ssn")
EMAIL = "alice@example.com"
CARD = "4111111111111111"
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]


def effect(strategy: str = "redact", names: tuple[str, ...] = PII, **kw: Any) -> ProfilesInEffect:
    detectors = tuple(BUILTIN_DETECTORS[n] for n in names) + kw.pop("extra", ())
    profile = Profile("p", detectors, strategy=strategy, **kw)  # type: ignore[arg-type]
    return ProfilesInEffect((profile,), (), KEY)


def masked(value: Any, strategy: str = "redact") -> Any:
    return mask_json(value, effect(strategy)).value


# --- keys ------------------------------------------------------------------------------


def test_pii_in_a_key_is_masked_and_its_value_kept() -> None:
    value = {"customers": {EMAIL: {"plan": "pro"}, "count": 1}}
    original = copy.deepcopy(value)
    outcome = mask_json(value, effect())
    assert outcome.value == {"customers": {"[REDACTED:email]": {"plan": "pro"}, "count": 1}}
    assert outcome.findings == {"email": 1}
    assert value == original  # the caller's value is not modified
    assert list(mask_json({"a": 1, EMAIL: 2, "z": 3}, effect()).value) == [
        "a",
        "[REDACTED:email]",
        "z",
    ]  # order kept


def test_keys_masked_alike_never_collide() -> None:
    value = {"alice@example.com": 1, "bob@example.com": 2, "[REDACTED:email]#2": 3}
    assert masked(value) == {
        "[REDACTED:email]": 1,
        "[REDACTED:email]#3": 2,
        "[REDACTED:email]#2": 3,
    }
    partial = masked({"ann@example.com": 1, "amy@example.com": 2}, "partial")
    assert partial == {"a***@example.com": 1, "a***@example.com#2": 2}


def test_a_key_is_masked_in_every_object_and_counted_each_time() -> None:
    rows = [{EMAIL: i, "id": i} for i in range(3)]
    outcome = mask_json({"rows": rows}, effect())
    assert outcome.value == {"rows": [{"[REDACTED:email]": i, "id": i} for i in range(3)]}
    assert outcome.findings == {"email": 3}


def test_keys_inside_embedded_json_and_values_under_masked_keys() -> None:
    inner = json.dumps({EMAIL: {"card": "4111 1111 1111 1111"}})
    value = {"content": [{"type": "text", "text": inner}], "bob@example.com": inner}
    out = masked(value, "partial")
    text = json.dumps(out)
    assert EMAIL not in text and "bob@example.com" not in text and "4111 1111" not in text
    assert json.loads(out["content"][0]["text"]) == {
        "a***@example.com": {"card": "**** **** **** 1111"}
    }
    assert json.loads(out["b***@example.com"]) == json.loads(out["content"][0]["text"])


def test_field_rules_still_apply_under_a_masked_key() -> None:
    policy = ProfilesInEffect(
        (Profile("p", (BUILTIN_DETECTORS["email"],), (FieldRule.parse("$..password"),)),), ()
    )
    out = mask_json({EMAIL: {"password": "hunter2"}}, policy).value
    assert out == {"[REDACTED:email]": {"password": "[REDACTED:$..password]"}}


def test_scan_counts_pii_in_keys() -> None:
    assert scan({EMAIL: 1}, (BUILTIN_DETECTORS["email"],)) == {"email": 1}


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "redact", "partial"),
    [
        (4111111111111111, "[REDACTED:credit_card]", "************1111"),
        (4111111111111111.0, "[REDACTED:credit_card]", "************1111"),
        (378282246310005, "[REDACTED:credit_card]", "***********0005"),
    ],
)
def test_a_card_number_as_a_json_number_is_masked(number: float, redact: str, partial: str) -> None:
    assert masked({"card": number}) == {"card": redact}
    assert masked({"card": number}, "partial") == {"card": partial}
    assert mask_json([number], effect()).findings == {"credit_card": 1}


@pytest.mark.parametrize(
    "number",
    [
        1700000000000,  # a millisecond timestamp: not Luhn-valid
        4111111111111112,  # Luhn fails
        123456789,  # an SSN without dashes is indistinguishable from an id: not masked
        14155550132,  # so is a phone number without + or separators
        -4111111111111111,
        True,
        2.5,
        10**60,
    ],
)
def test_numbers_that_are_no_card_stay_numbers(number: Any) -> None:
    assert masked({"n": number}) == {"n": number}


def test_custom_detectors_see_every_integer() -> None:
    employee = custom_detector("employee_id", r"\b7[0-9]{5}\b")
    policy = effect(names=(), extra=(employee,))
    assert mask_json({"emp": 712345, "n": 5}, policy).value == {
        "emp": "[REDACTED:employee_id]",
        "n": 5,
    }


# --- escapes, full-width forms and zero-width characters -------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to alice\\u0040example.com", "write to a***@example.com"),
        ("write to alice\\x40example.com", "write to a***@example.com"),
        ('Result: {"email": "alice\\u0040example.com"}', 'Result: {"email": "a***@example.com"}'),
        ("card \\u0034111111111111111 ok", "card ************1111 ok"),
        ("alice＠example.com", "a***@example.com"),
        ("ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "a***@example.com"),
        ("４１１１ １１１１ １１１１ １１１１", "**** **** **** 1111"),
        ("4111\u00a01111\u00a01111\u00a01111", "**** **** **** 1111"),
        ("ssn 123\u201345\u20136789", "ssn ***-**-6789"),
        ("𝟒𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏", "************1111"),
    ],
)
def test_disguised_values_are_found_and_their_original_span_masked(
    text: str, expected: str
) -> None:
    assert mask_text(text, effect("partial")).value == expected


def test_escaped_value_inside_embedded_json_is_masked() -> None:
    text = json.dumps({"note": "mail alice\\u0040example.com"})  # \\u0040 survives the parse
    assert json.loads(masked({"text": text})["text"]) == {"note": "mail [REDACTED:email]"}


@pytest.mark.parametrize("char", ZERO_WIDTH)
def test_zero_width_characters_inside_a_value_do_not_hide_it(char: str) -> None:
    email = f"ali{char}ce@exam{char}ple.com"
    card = char.join(["4111", "1111", "1111", "1111"])
    assert mask_text(f"mail {email} now", effect()).value == "mail [REDACTED:email] now"
    assert mask_text(f"card {card}.", effect()).value == "card [REDACTED:credit_card]."
    assert mask_text(card, effect("partial")).value == "************1111"


def test_folding_never_loses_what_the_original_shows() -> None:
    # A zero-width space between two cards joins them in the folded text; both still go.
    text = "4111111111111111\u200b5555555555554444"
    out = mask_text(text, effect()).value
    assert "4111" not in out and "4444" not in out


def test_a_confusable_value_hashes_like_the_plain_one() -> None:
    plain = mask_text(EMAIL, effect("hash")).value
    assert mask_text("alice＠example.com", effect("hash")).value == plain
    assert mask_text("ALICE\\u0040example.com", effect("hash")).value == plain


def test_fold_maps_spans_back_to_the_original() -> None:
    folded = fold("x a\u200bb\\u0040c ４")
    assert folded is not None
    assert folded.text == "x ab@c 4"
    assert folded.original(2, 6) == (2, 12)  # "ab@c" is "a\u200bb\\u0040c"
    assert folded.original(7, 8) == (13, 14)
    assert fold("plain ascii") is None
    assert fold("Zoë García") is None  # accents are not folded away
    assert fold("C:\\users\\x") is None


# --- values split across two messages of a stream --------------------------------------


def progress(text: str) -> dict[str, Any]:
    return {"params": {"progressToken": 1, "message": text}}


def test_an_email_split_across_two_messages_is_caught() -> None:
    stream = StreamMasker()
    first = stream.mask(progress("contact alice@exa"), effect())
    assert first.value == progress("contact alice@exa")  # nothing to find yet: it is sent
    second = stream.mask(progress("mple.com today"), effect())
    assert second.value == progress("[REDACTED:email] today")
    assert second.findings == {"email(split)": 1}


def test_a_card_split_in_three_and_partial_shows_what_partial_may() -> None:
    stream = StreamMasker()
    stream.mask(progress("card 4111 1111"), effect("partial"))
    middle = stream.mask(progress(" 1111"), effect("partial"))
    assert middle.findings == {}
    last = stream.mask(progress(" 1111 thanks"), effect("partial"))
    assert last.value == progress("**** **** **** 1111 thanks")
    assert last.findings == {"credit_card(split)": 1}


def test_a_value_sent_whole_is_not_reported_split() -> None:
    stream = StreamMasker()
    assert stream.mask(progress(f"mail {EMAIL}"), effect()).findings == {"email": 1}
    assert stream.mask(progress(" and more"), effect()).value == progress(" and more")
    stream.mask(progress("x"), effect())
    assert stream.mask(progress(EMAIL), effect()).findings == {"email": 1}


def test_plain_text_events_are_joined_too() -> None:
    stream = StreamMasker()
    stream.mask("ssn 123-4", effect())
    assert stream.mask("5-6789 end", effect()).value == "[REDACTED:us_ssn] end"


def test_look_behind_limits() -> None:
    short = StreamMasker(window=4)
    short.mask(progress("alice@examp"), effect())
    assert short.mask(progress("le.com"), effect()).findings == {}  # the tail lost the '@'
    other_key = StreamMasker()
    other_key.mask({"a": "alice@exa"}, effect())
    assert other_key.mask({"b": "mple.com"}, effect()).findings == {}
    few_keys = StreamMasker(keys=2)
    few_keys.mask({"a": "alice@exa", "b": "x", "c": "y"}, effect())
    assert few_keys.mask({"a": "mple.com"}, effect()).findings == {}  # "a" was dropped
    assert len(few_keys._tails) == 2


def test_tails_are_bounded() -> None:
    stream = StreamMasker(window=16)
    for _ in range(50):
        stream.mask(progress("word " * 100), effect())
    assert all(len(tail) <= 16 for tail in stream._tails.values())


def test_every_folded_character_passes_the_cheap_pre_check() -> None:
    assert [c for c in FOLDS if fold(f"a{c}b") is None] == []
