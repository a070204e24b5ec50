"""The masking prefilter: masking with it says exactly what masking without it says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import re2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from holdgate.masking import prefilter
from holdgate.masking.detectors import (
    BUILTIN_DETECTORS,
    KEYED_DETECTORS,
    custom_detector,
    national_phones,
)
from holdgate.masking.masker import (
    FieldRule,
    MaskingPolicy,
    MaskOutcome,
    Profile,
    StreamMasker,
    mask_json,
    scan,
)
from holdgate.masking.prefilter import TRIGGERS, prefilter_for

# Every trigger, the built-ins' and those of the parts that read keys or national phones.
ALL_TRIGGERS = {
    **TRIGGERS,
    "national phone": prefilter._trigger(national_phones(("GB",))) or "",
    **{f"{n} keys": prefilter._trigger(d) or "" for n, d in KEYED_DETECTORS.items()},
}

KEY = b"prefilter-test-key"
ALL = tuple(BUILTIN_DETECTORS.values())
PII = ("email", "phone", "credit_card", "iban", "us_ssn")
SECRETS = ("aws_access_key", "github_token", "jwt", "private_key", "generic_secret")

EFFECTS = {
    "design": MaskingPolicy(
        (
            Profile("pii", tuple(BUILTIN_DETECTORS[n] for n in PII), (), "partial"),
            Profile(
                "secrets",
                tuple(BUILTIN_DETECTORS[n] for n in SECRETS),
                (FieldRule.parse("$..password"), FieldRule.parse("$..api_key")),
            ),
        )
    ).profiles_for("crm", None, ()),
    "all": MaskingPolicy((Profile("all", ALL, (), "hash"),), KEY).profiles_for("crm", None, ()),
    "one": MaskingPolicy((Profile("cards", (BUILTIN_DETECTORS["credit_card"],)),)).profiles_for(
        "crm", None, ()
    ),
    "custom": MaskingPolicy(
        (Profile("c", (BUILTIN_DETECTORS["email"], custom_detector("emp", r"EMP-\d{4}"))),)
    ).profiles_for("crm", None, ()),
    "near": MaskingPolicy(
        (Profile("n", (BUILTIN_DETECTORS["aws_secret_key"], BUILTIN_DETECTORS["email"])),)
    ).profiles_for("crm", None, ()),
    "keyed": MaskingPolicy(
        (
            Profile(
                "k",
                tuple(BUILTIN_DETECTORS[n] for n in ("generic_secret", "us_ssn", "phone")),
                (FieldRule.parse("$..Note"),),
                secret_keys=("session_ref",),
                phone_regions=("GB", "FR"),
            ),
        )
    ).profiles_for("crm", None, ()),
    "tree": MaskingPolicy(
        (Profile("t", (BUILTIN_DETECTORS["email"],), (FieldRule.parse("$.rows[0].note"),)),)
    ).profiles_for("crm", None, ()),
}

PLANTED = [
    "jane.doe@example.com",
    "+44 20 7946 0958",
    "(415) 555-0132",
    "415.555.0132",
    "4111 1111 1111 1111",
    "4111111111111111",
    "3782 822463 10005",
    "DE89 3704 0044 0532 0130 00",
    "123-45-6789",
    "AKIAIOSFODNN7EXAMPLE",
    "aws_secret: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_" + "a1B2c3D4e5F6" * 3,
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
    "sk-ant-api03-abcdefghijklmnopqrstuvwx",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    "password=hunter2",
    "EMP-1234",
    "josé.garcía@bücher.example",
    "b@xn--bcher-kva.xn--p1ai",
    "020 7946 0958",
    "01 23 45 67 89",
    "4111.1111.1111.1111",
    "ref-4111/1111/1111/1111",
    "de89-3704-0044-0532-0130-00",
    "123456789",
    "Authorization: Bearer opaque123token",
    "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "glpat-xYz123abcDEF456ghiJk",
    "npm_" + "a1B2" * 9,
    "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgH",
    "SG." + "a1" * 11 + "." + "b2C" * 14 + "d",
    "AccountKey=" + "Ab1+" * 21 + "xy==",
]


def disguised(value: str, how: int) -> str:
    """The value as an upstream might hide it: JSON/JS escapes, full-width, invisible, dashes."""
    if how == 1:
        return "".join(f"\\u{ord(c):04x}" if c in "@4-" else c for c in value)
    if how == 2:
        return value.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
    if how == 3:
        return value[:3] + "\u200b" + value[3:]
    if how == 4:
        return value.replace("-", "\u2013")
    if how == 5:
        return value.replace("@", "%40").replace(" ", "%20")
    if how == 6:
        return value.replace("@", "&#64;").replace(".", "&period;")
    return value


NOISE = st.text(
    alphabet=st.sampled_from(
        list("aZ09 -.+_@:=\"'\\/\n\t{}[],()") + ["é", "ü", "\u00a0", "\ufb01"]
    ),
    max_size=30,
)
TEXT = st.builds(
    lambda a, planted, how, b: a + disguised(planted, how) + b,
    NOISE,
    st.sampled_from(PLANTED),
    st.integers(0, 6),
    NOISE,
) | st.text(max_size=40)
KEYS = st.sampled_from(
    ["notes", "aws", "password", "api_key", "x", "rows", "note", "id", "Client-Secret", "apiKey"]
    + ["SSN", "session_ref", "nextPageToken", "Password", "NOTE", "access.token"]
    + ["PAßWORD", "ſecret", "\u212aey", "api\u212aey"]  # case mappings beyond ASCII
)
# JSON text as Python never writes it: numbers in exponent form, escaped characters.
RAW_JSON = st.sampled_from(
    [
        "[4.2e15]",
        "[42E+14]",
        '{"n": 5.555555555554444E15}',
        "[1,\n 4.111111111111111e+15]",
        '["jane\\u0040example.com"]',
        '{"a": "\\u0034111 1111 1111 1111"}',
        '["wJalrXUtnFEMI\\/K7MDENG\\/bPxRfiCYEXAMPLEKEY"]',
        '{"Client\\u002dSecret": "q8Zr"}',
        '{"client\\nsecret": "q8Zr", "S\\u0053N": 123456789}',
        '{"ssn": 219099999, "x": {"sessionRef": 42}}',
        '["alice%40example.com", "alice&#x40;example.com"]',
    ]
)


def embedded(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


LEAF = TEXT | RAW_JSON | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.none()
DOCS = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(KEYS, inner, max_size=4)
        | st.builds(
            embedded, st.dictionaries(KEYS, inner, max_size=4) | st.lists(inner), st.booleans()
        )
    ),
    max_leaves=12,
)


@contextmanager
def unfiltered() -> Iterator[None]:
    """Masking without the prefilter: every detector on every text, all JSON text parsed."""
    with (
        mock.patch.object(prefilter.Prefilter, "present", lambda self, text: self.detectors),
        mock.patch.object(prefilter.Prefilter, "clean_json", lambda self, text, ctx: False),
    ):
        yield


def both(value: Any, name: str) -> tuple[MaskOutcome, MaskOutcome]:
    effect = EFFECTS[name]
    with unfiltered():
        plain = mask_json(value, effect)
    return plain, mask_json(value, effect)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS, st.sampled_from(sorted(EFFECTS)))
@example({"notes": json.dumps(["a", "x\n4111 1111 1111 1111"])}, "design")
@example({"notes": json.dumps(["IBAN\nDE89 3704 0044 0532 0130 00", "\t123-45-6789"])}, "design")
@example({"notes": json.dumps({"n": "tel\n415.555.0132 and\r3782 822463 10005"})}, "design")
@example({"aws_secret": json.dumps(["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"])}, "all")
@example({"rows": "[4.2e15]"}, "one")
@example({"rows": json.dumps({"n": "[\n42E+14]"})}, "one")
@example({"x": json.dumps({"aws": ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]})}, "near")
@example({"x": json.dumps({"e": "jane\\u0040example.com"})}, "design")
@example({"x": json.dumps(["\uff14\uff11\uff11\uff11 1111 1111 1111"], ensure_ascii=False)}, "one")
@example({"x": json.dumps({"Client-Secret": "q8Zr"})}, "keyed")
@example({"x": '{"ssn": 219099999}'}, "keyed")
@example({"client_secret": '["q8Zr"]', "ssn": "[219099999]"}, "keyed")
@example({"x": json.dumps(["alice%40example.com", "bob&#64;example.com"])}, "design")
@example({"x": json.dumps(["call\n020 7946 0958"])}, "keyed")
@example({"x": json.dumps(["Authorization: Bearer opaque123token"])}, "design")
@example({"x": json.dumps(["ref-4111/1111/1111/1111 de89-3704-0044-0532-0130-00"])}, "design")
def test_prefiltered_masking_is_plain_masking(value: Any, name: str) -> None:
    plain, filtered = both(value, name)
    assert filtered == plain


@settings(max_examples=150, deadline=None)
@given(st.lists(DOCS, min_size=1, max_size=4), st.sampled_from(sorted(EFFECTS)))
def test_prefiltered_stream_is_plain_stream(messages: list[Any], name: str) -> None:
    effect = EFFECTS[name]
    with unfiltered():
        plain_stream = StreamMasker()
        plain = [plain_stream.mask(m, effect) for m in messages]
    stream = StreamMasker()
    assert [stream.mask(m, effect) for m in messages] == plain


@given(DOCS)
@settings(max_examples=100, deadline=None)
def test_prefiltered_scan_is_plain_scan(value: Any) -> None:
    with unfiltered():
        plain = scan(value, ALL)
    assert scan(value, ALL) == plain


def test_a_clean_tool_result_is_kept_as_sent() -> None:
    text = json.dumps([{"id": 1, "name": "Zoë Müller", "status": "active"}], ensure_ascii=False)
    message = {"content": [{"type": "text", "text": text}]}
    plain, filtered = both(message, "design")
    assert filtered == plain
    assert filtered.value is message and not filtered.findings


@pytest.mark.parametrize("space", [c for c in map(chr, range(0x80, 0x3001)) if c.isspace()])
def test_a_key_split_by_a_unicode_space_is_read_in_json_text(space: str) -> None:
    # `key_name` drops what Python's `\s` matches; JSON writes these spaces as they are.
    text = json.dumps({f"s{space}sn": "219099999"}, ensure_ascii=False)
    plain, filtered = both({"x": text}, "keyed")
    assert filtered == plain
    assert filtered.findings == {"us_ssn": 1}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(ALL_TRIGGERS)),
    st.builds(
        lambda a, planted, b: a + planted + b,
        st.text(alphabet=st.sampled_from(list('a0 \n\t"\\/[:,')), max_size=8),
        st.sampled_from(
            [*PLANTED, "[\n4.1e15]", ": 1E20", "AWS", "Secret", "Client-Secret", "s s\nn"]
        ),
        st.text(alphabet=st.sampled_from(list('a0 \n\t"\\/')), max_size=8),
    ),
)
def test_a_trigger_in_a_string_is_in_its_json_text(name: str, text: str) -> None:
    # What clean_json relies on: escaping a string (once, or as JSON text in JSON text)
    # never hides a trigger it holds.
    trigger = ALL_TRIGGERS[name]
    if re2.search(trigger, text):
        once = json.dumps(text, ensure_ascii=False)
        assert re2.search(trigger, once)
        assert re2.search(trigger, json.dumps(once, ensure_ascii=False))


def test_every_builtin_detector_has_a_trigger() -> None:
    assert set(TRIGGERS) == set(BUILTIN_DETECTORS)


def test_a_custom_detector_always_runs_and_no_json_is_clean() -> None:
    custom = custom_detector("emp", r"EMP-\d{4}")
    pre = prefilter_for((BUILTIN_DETECTORS["email"], custom), frozenset())
    assert list(pre.present("nothing here")) == [custom]
    assert not pre.clean_json('{"a": "nothing here"}', "")


def test_a_lone_surrogate_runs_every_detector() -> None:
    pre = prefilter_for(ALL, frozenset())
    assert tuple(pre.present("\ud800 nothing")) == ALL
    assert not pre.clean_json('["\ud800"]', "")


class GivesUp:
    """An RE2 set whose search ran out of memory: RE2 then answers with no match at all."""

    def Match(self, text: str) -> list[int]:  # noqa: N802 - RE2's name
        return []


def test_a_search_re2_gives_up_runs_every_detector() -> None:
    pre = prefilter.Prefilter(ALL, frozenset())
    pre._gate, pre._json = GivesUp(), GivesUp()  # type: ignore[assignment]
    assert tuple(pre.present("nothing here")) == ALL
    assert not pre.clean_json('{"a": "nothing here"}', "")
