"""Masking: strategies, scoping, field rules, embedded JSON and the properties that must hold."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.strategies import json_values
from holdgate.configfile import ConfigError, parse_yaml
from holdgate.masking import masker
from holdgate.masking.detectors import BUILTIN_DETECTORS, Detector, custom_detector
from holdgate.masking.masker import (
    FieldRule,
    MaskingError,
    MaskingPolicy,
    Profile,
    ProfilesInEffect,
    mask_json,
    mask_text,
    parse_masking,
    scan,
)
from holdgate.policy.rules import Globs

KEY = b"test-hash-key"
ALL = tuple(BUILTIN_DETECTORS.values())
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def effect(*profiles: Profile, key: bytes | None = KEY) -> ProfilesInEffect:
    return ProfilesInEffect(profiles, (), key)


def profile(*names: str, strategy: str = "redact", paths: tuple[str, ...] = ()) -> Profile:
    return Profile(
        "p",
        tuple(BUILTIN_DETECTORS[n] for n in names),
        tuple(FieldRule.parse(p) for p in paths),
        strategy,  # type: ignore[arg-type]
    )


def masked(text: str, *names: str, strategy: str = "redact") -> str:
    return mask_text(text, effect(profile(*names, strategy=strategy))).value


# --- strategies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "redact", "partial"),
    [
        ("email", f"mail {EMAIL}!", "mail [REDACTED:email]!", "mail j***@example.com!"),
        ("email", "a@example.com", "[REDACTED:email]", "***@example.com"),
        ("credit_card", CARD, "[REDACTED:credit_card]", "**** **** **** 1111"),
        ("credit_card", "4111111111111111", "[REDACTED:credit_card]", "************1111"),
        ("phone", "+1 415 555 0132", "[REDACTED:phone]", "+* *** *** 0132"),
        ("phone", "(415) 555-0132", "[REDACTED:phone]", "(***) ***-0132"),
        (
            "iban",
            "DE89 3704 0044 0532 0130 00",
            "[REDACTED:iban]",
            "DE** **** **** **** **30 00",
        ),
        ("us_ssn", "123-45-6789", "[REDACTED:us_ssn]", "***-**-6789"),
        ("jwt", f"Bearer {JWT}", "Bearer [REDACTED:jwt]", "Bearer [REDACTED:jwt]"),
        ("generic_secret", "password=hunter2", "password=[REDACTED:generic_secret]", None),
    ],
)
def test_redact_and_partial(name: str, text: str, redact: str, partial: str | None) -> None:
    assert masked(text, name) == redact
    # secrets have nothing safe to show: partial redacts them in full
    assert masked(text, name, strategy="partial") == (partial or redact)


def test_custom_detector_under_partial_is_redacted_in_full() -> None:
    employee = custom_detector("employee_id", r"E-[0-9]{6}")
    outcome = mask_text("id E-123456", effect(Profile("p", (employee,), strategy="partial")))
    assert outcome.value == "id [REDACTED:employee_id]"


def test_hash_is_a_stable_keyed_pseudonym() -> None:
    one = masked(f"{EMAIL} and {EMAIL.upper()}", "email", strategy="hash")
    first, _, second = one.partition(" and ")
    assert first == second  # normalised: one person, one pseudonym
    assert first.startswith("email:") and len(first) == len("email:") + 8
    assert int(first[6:], 16) >= 0
    other_key = mask_text(EMAIL, effect(profile("email", strategy="hash"), key=b"other")).value
    assert other_key != first
    cards = masked(f"{CARD} / 4111-1111-1111-1111", "credit_card", strategy="hash")
    assert len(set(cards.split(" / "))) == 1


def test_hash_without_a_key_refuses() -> None:
    with pytest.raises(MaskingError, match="needs a key"):
        mask_text(EMAIL, effect(profile("email", strategy="hash"), key=None))
    with pytest.raises(ValueError, match="uses strategy hash but no key"):
        MaskingPolicy((profile("email", strategy="hash"),))


def test_overlapping_profiles_use_the_strongest_strategy() -> None:
    pii = profile("email", "phone", strategy="partial")
    strict = Profile("strict", (BUILTIN_DETECTORS["email"],), strategy="redact")
    outcome = mask_text(f"{EMAIL} +1 415 555 0132", effect(pii, strict))
    assert outcome.value == "[REDACTED:email] +* *** *** 0132"


def test_overlapping_hits_are_masked_once() -> None:
    # the JWT is also a generic secret's value; one replacement, named by the longer hit
    outcome = mask_text(f"token={JWT}", effect(profile("jwt", "generic_secret")))
    assert outcome.value == "token=[REDACTED:jwt]"
    assert outcome.findings == {"jwt": 1}


# --- scoping ---------------------------------------------------------------------------


def test_profiles_for_scopes_and_reports_exemptions() -> None:
    pii = Profile("pii", (BUILTIN_DETECTORS["email"],), exempt_groups=("compliance", "legal"))
    crm_only = Profile("crm", (BUILTIN_DETECTORS["phone"],), upstreams=("crm",))
    reads = Profile("reads", (BUILTIN_DETECTORS["iban"],), tools=Globs.of(["get_*"]))
    policy = MaskingPolicy((pii, crm_only, reads), KEY)

    support = policy.profiles_for("crm", "get_customer", ("support",))
    assert support.names == ("pii", "crm", "reads")
    assert support.exemptions == ()

    auditor = policy.profiles_for("billing", "run_report", ("staff", "legal"))
    assert auditor.names == ()
    assert auditor.exemptions == ("pii: exempt for group legal",)

    listing = policy.profiles_for("crm", None, ())
    assert listing.names == ("pii", "crm")  # tool-limited profiles need a tool result
    assert policy.profiles_for("crm", None, ()) is listing  # cached per combination


def test_exempt_caller_sees_cleartext() -> None:
    policy = MaskingPolicy((Profile("pii", ALL, exempt_groups=("compliance",)),))
    value = {"email": EMAIL}
    outcome = mask_json(value, policy.profiles_for("crm", "get", ("compliance",)))
    assert outcome.value is value and outcome.findings == {}


# --- field rules -----------------------------------------------------------------------


def test_paths_mask_whole_values_of_any_type() -> None:
    rules = profile(paths=("$..password", "$..api_key", "$.items[-1]", "$.config"))
    value = {
        "user": {"password": 1234, "name": "x"},
        "items": [{"api_key": None}, "keep", "last"],
        "config": {"nested": [1, 2]},
        "password": "top",
    }
    outcome = mask_json(value, effect(rules))
    assert outcome.value == {
        "user": {"password": "[REDACTED:$..password]", "name": "x"},
        "items": [{"api_key": "[REDACTED:$..api_key]"}, "keep", "[REDACTED:$.items[-1]]"],
        "config": "[REDACTED:$.config]",
        "password": "[REDACTED:$..password]",
    }
    assert outcome.findings == {
        "path:$..password": 2,
        "path:$..api_key": 1,
        "path:$.items[-1]": 1,
        "path:$.config": 1,
    }


def test_paths_apply_inside_embedded_json() -> None:
    rules = profile(paths=("$..password", "$.rows[?(@.kind == 'secret')].value"))
    text = json.dumps({"rows": [{"kind": "secret", "value": 7}, {"kind": "x", "value": 8}]})
    value = {"content": [{"type": "text", "text": text}, {"password": "p"}]}
    outcome = mask_json(value, effect(rules))
    inner = json.loads(outcome.value["content"][0]["text"])
    assert inner["rows"] == [
        {"kind": "secret", "value": "[REDACTED:$.rows[?(@.kind == 'secret')].value]"},
        {"kind": "x", "value": 8},
    ]
    assert outcome.value["content"][1] == {"password": "[REDACTED:$..password]"}


def test_path_hash_and_partial() -> None:
    value = {"password": "hunter2", "other": {"password": "hunter2"}}
    hashed = mask_json(value, effect(profile(paths=("$..password",), strategy="hash"))).value
    assert hashed["password"] == hashed["other"]["password"]
    assert hashed["password"].startswith("$..password:")
    partial = mask_json(value, effect(profile(paths=("$..password",), strategy="partial")))
    assert partial.value["password"] == "[REDACTED:$..password]"


def test_root_path_masks_everything() -> None:
    outcome = mask_json({"a": 1}, effect(profile(paths=("$",))))
    assert outcome.value == "[REDACTED:$]"


@pytest.mark.parametrize("bad", ["$..[", "$.a.`len`", "$.a.`parent`", "$.a.`sub(/x/, y)`"])
def test_field_rule_refuses_bad_or_computed_paths(bad: str) -> None:
    with pytest.raises(ValueError, match="JSONPath"):
        FieldRule.parse(bad)


# --- walking JSON ----------------------------------------------------------------------


def test_keys_and_card_numbers_are_masked_unchanged_parts_are_kept() -> None:
    value = {
        EMAIL: 4111111111111111,
        "list": [1, 2.5, True, None, "plain", 1700000000000],
        "deep": {"mail": EMAIL},
    }
    original = copy.deepcopy(value)
    outcome = mask_json(value, effect(profile("email", "credit_card")))
    assert value == original  # the input is never modified
    assert outcome.value == {
        "[REDACTED:email]": "[REDACTED:credit_card]",
        "list": [1, 2.5, True, None, "plain", 1700000000000],
        "deep": {"mail": "[REDACTED:email]"},
    }
    assert outcome.value["list"] is value["list"]  # unchanged containers are shared
    assert mask_json(original, effect(profile("iban"))).value is original


def test_embedded_json_is_reserialised_only_when_changed() -> None:
    changed_text = json.dumps({"b": [EMAIL], "a": "x"}, indent=2)
    same_text = '{ "a" : 1, "b": "no pii" }'
    value = {"content": [{"text": changed_text}, {"text": same_text}, {"text": f' ["{EMAIL}"]\n'}]}
    outcome = mask_json(value, effect(profile("email")))
    texts = [item["text"] for item in outcome.value["content"]]
    assert texts[0] == '{"b":["[REDACTED:email]"],"a":"x"}'  # compact, key order kept
    assert texts[1] is same_text
    assert texts[2] == '["[REDACTED:email]"]'
    assert outcome.findings == {"email": 2}


def test_embedded_json_nested_twice() -> None:
    innermost = json.dumps({"email": EMAIL, "n": 1})
    middle = json.dumps({"payload": innermost, "keep": "é"}, ensure_ascii=False)
    outcome = mask_json({"text": middle}, effect(profile("email")))
    level1 = json.loads(outcome.value["text"])
    assert level1["keep"] == "é"
    assert json.loads(level1["payload"]) == {"email": "[REDACTED:email]", "n": 1}


def test_embedded_json_with_duplicate_keys_is_masked_as_text() -> None:
    # a parse would keep only the last "x" and hide the e-mail in the first
    text = '{"x": "' + EMAIL + '", "x": "safe"}'
    outcome = mask_json([text], effect(profile("email")))
    assert outcome.value == ['{"x": "[REDACTED:email]", "x": "safe"}']


def test_text_that_only_looks_like_json() -> None:
    outcome = mask_json(["[1] see " + EMAIL, "{not json}", "[1, 2]"], effect(profile("email")))
    assert outcome.value == ["[1] see [REDACTED:email]", "{not json}", "[1, 2]"]


def test_lone_surrogates_in_embedded_json_stay_encodable() -> None:
    text = '{"a": "\\ud800", "b": "' + EMAIL + '"}'
    out = mask_json([text], effect(profile("email"))).value[0]
    out.encode("utf-8")
    assert json.loads(out) == {"a": "\ud800", "b": "[REDACTED:email]"}


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
def test_embedded_json_with_an_infinite_number_is_masked_as_text(number: str) -> None:
    """The strict parser takes no number beyond a double (it would be read as infinity, and
    written as null by a fast serialiser): such text is not JSON, and is masked as text."""
    text = '{"n": ' + number + ', "b": "' + EMAIL + '"}'
    outcome = mask_json([text], effect(profile("email")))
    assert outcome.value == ['{"n": ' + number + ', "b": "[REDACTED:email]"}']


def test_embedded_json_keeps_numbers_past_64_bits() -> None:
    text = '{"n": 123456789012345678901234567890, "b": "' + EMAIL + '"}'
    out = mask_json([text], effect(profile("email"))).value[0]
    assert out == '{"n":123456789012345678901234567890,"b":"[REDACTED:email]"}'


@given(st.dictionaries(st.text(), json_values, max_size=4) | st.lists(json_values, max_size=4))
def test_embedded_json_is_written_as_json_writes_it(value: Any) -> None:
    fast, plain = masker._serialise(value), masker._serialise_json(value)
    assert json.loads(fast) == json.loads(plain)
    if not has_float(value):  # floats may be written shorter (1e-05: 1e-5), the same number
        assert fast == plain


def has_float(value: Any) -> bool:
    if isinstance(value, dict):
        return any(map(has_float, value.values()))
    if isinstance(value, list):
        return any(map(has_float, value))
    return isinstance(value, float)


def test_profiles_for_is_cached_per_call_and_bounded() -> None:
    policy = MaskingPolicy(
        (
            Profile("pii", (BUILTIN_DETECTORS["email"],), exempt_groups=("admins",)),
            Profile("tool", (BUILTIN_DETECTORS["phone"],), tools=Globs.of(["get_*"])),
        )
    )
    first = policy.profiles_for("crm", "get_customer", ("support",))
    assert policy.profiles_for("crm", "get_customer", ("support",)) is first
    assert policy.profiles_for("crm", "list_orders", ("support",)).names == ("pii",)
    assert policy.profiles_for("crm", "get_customer", ("admins",)).exemptions == (
        "pii: exempt for group admins",
    )
    for i in range(masker.PROFILE_CACHE + 10):  # tool names come from clients
        policy.profiles_for("crm", f"get_{i}", ())
    assert len(policy._by_call) <= masker.PROFILE_CACHE


def test_shared_containers_are_masked_everywhere() -> None:
    shared = {"mail": EMAIL}
    outcome = mask_json({"a": shared, "b": [shared]}, effect(profile("email")))
    assert outcome.value["a"]["mail"] == outcome.value["b"][0]["mail"] == "[REDACTED:email]"


def test_too_deep_to_mask_refuses() -> None:
    value: Any = EMAIL
    for _ in range(5000):
        value = [value]
    with pytest.raises(MaskingError, match="nested too deeply"):
        mask_json(value, effect(profile("email")))


def test_aws_secret_under_its_json_key() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    value = {"SecretAccessKey": secret, "checksum": secret, "aws": {"keys": [secret]}}
    outcome = mask_json(value, effect(profile("aws_secret_key")))
    assert outcome.value == {
        "SecretAccessKey": "[REDACTED:aws_secret_key]",
        "checksum": secret,
        "aws": {"keys": [secret]},
    }


def test_findings_never_hold_values() -> None:
    value = {"note": f"{EMAIL} {CARD} password=hunter2", "password": "hunter2"}
    outcome = mask_json(value, effect(profile("email", "credit_card", paths=("$..password",))))
    assert outcome.findings == {"path:$..password": 1, "email": 1, "credit_card": 1}
    evidence = json.dumps(outcome.findings)
    assert EMAIL not in evidence and "1111" not in evidence and "hunter2" not in evidence


def test_mask_text_masks_json_text_as_a_document() -> None:
    rules = effect(profile("email", paths=("$..password",)))
    assert mask_text('{"password": "x"}', rules).value == '{"password":"[REDACTED:$..password]"}'
    assert mask_text("nothing here", rules).value == "nothing here"
    assert not mask_text("nothing here", rules).changed


def test_scan_counts_values_per_detector() -> None:
    value = {
        "args": [f"{EMAIL}, b@example.org", {"q": "+1 415 555 0132"}],
        "text": json.dumps({"card": CARD}),
        "n": 4111111111111111,
    }
    counts = scan(value, ALL)
    assert counts == {"email": 2, "phone": 1, "credit_card": 2}  # the number is a card too
    assert scan(value, [BUILTIN_DETECTORS["iban"]]) == {}


# --- config ----------------------------------------------------------------------------

CONFIG = """
detectors:
  - name: employee_id
    regex: "E-[0-9]{6}"
  - name: acme_card
    regex: "ACME-[0-9-]{19}"
    validator: luhn
masking:
  - name: pii
    detectors: [email, phone, credit_card, iban, us_ssn]
    strategy: partial
    exempt_groups: [compliance]
  - name: secrets
    detectors: [aws_access_key, github_token, jwt, private_key, generic_secret]
    paths: ["$..password", "$..api_key"]
    strategy: redact
  - name: staff
    detectors: employee_id
    strategy: hash
    upstreams: [hr]
    tools: ["get_*"]
"""


def parse(text: str, hash_key: bytes | None = KEY) -> MaskingPolicy:
    root = parse_yaml(text, "t.yaml").root
    return parse_masking(root.child("masking"), root.child("detectors"), hash_key=hash_key)


def test_parse_masking_config() -> None:
    policy = parse(CONFIG)
    assert [p.name for p in policy.profiles] == ["pii", "secrets", "staff"]
    assert set(policy.custom_detectors) == {"employee_id", "acme_card"}
    staff = policy.profiles[2]
    assert (staff.strategy, staff.upstreams, staff.tools.patterns) == ("hash", ("hr",), ("get_*",))  # type: ignore[union-attr]
    value = {"note": f"{EMAIL} E-123456", "api_key": "k"}
    outcome = mask_json(value, policy.profiles_for("hr", "get_employee", ("hr",)))
    assert outcome.value["note"].startswith("j***@example.com employee_id:")
    assert outcome.value["api_key"] == "[REDACTED:$..api_key]"
    assert parse("version: 1").profiles == ()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "masking:\n  - name: p\n    detectors: [email, mail]\n",
            "t.yaml:3:24: masking['p'].detectors[1]: unknown detector 'mail'; "
            "valid: anthropic_key,",
        ),
        (
            "masking:\n  - name: p\n    paths: ['$..[']\n",
            "t.yaml:3:13: masking['p'].paths[0]: invalid JSONPath",
        ),
        (
            "masking:\n  - name: p\n    paths: ['$.a.`len`']\n",
            "computes a value",
        ),
        (
            "detectors:\n  - name: x\n    regex: '('\n",
            "t.yaml:3:5: detectors[0].regex: invalid regular expression",
        ),
        ("detectors:\n  - name: x\n    regex: 'a*'\n", "matches the empty string"),
        ("detectors:\n  - name: email\n    regex: 'a'\n", "'email' is a built-in detector"),
        (
            "detectors:\n  - {name: x, regex: a}\n  - {name: x, regex: b}\n",
            "detector 'x' is defined twice",
        ),
        ("detectors:\n  - {name: 'a b', regex: a}\n", "only letters, digits"),
        ("detectors:\n  - {name: x, regex: a, validator: crc}\n", "expected one of luhn"),
        ("masking:\n  - {name: p, detectors: [email], strategy: blur}\n", "expected one of"),
        ("masking:\n  - {name: p}\n", "needs `detectors` or `paths`"),
        (
            "masking:\n  - {name: p, detectors: [email]}\n  - {name: p, paths: [$.a]}\n",
            "masking profile 'p' is defined twice",
        ),
        ("masking:\n  - {name: p, detectors: [email], colour: x}\n", "unknown key 'colour'"),
    ],
)
def test_config_errors_name_file_line_and_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse(text)


def test_hash_strategy_needs_a_hash_key() -> None:
    with pytest.raises(ConfigError, match="strategy: strategy hash needs a top-level `hash_key`"):
        parse("masking:\n  - {name: p, detectors: [email], strategy: hash}\n", hash_key=None)


# --- properties ------------------------------------------------------------------------

PLANTED = [
    EMAIL,
    "ops@example.org",
    CARD,
    "5555555555554444",
    "3782 822463 10005",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "123-45-6789",
    "+1 415 555 0132",
    "+44 (0)20 7946 0958",
    "(415) 555-0132",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1B2c3D4e5F6" * 3,
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKl",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "sk-proj-Abc123def456GHI789jklMNOpqr",
    "sk-ant-api03-Abc123def456GHI789jklMNO",
    JWT,
]
FILLER = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
SEPARATORS = st.sampled_from([" ", ", ", "\n", " | ", ": "])


@st.composite
def sentences(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.one_of(st.sampled_from(PLANTED), FILLER), max_size=6))
    out = ""
    for word in words:
        out += (draw(SEPARATORS) if out else "") + word
    return out


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        sentences(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(FILLER, children, max_size=4),
        (st.lists(children, max_size=3) | st.dictionaries(FILLER, children, max_size=3)).map(
            json.dumps
        ),
    ),
    max_leaves=12,
)

REDACT_ALL = effect(Profile("all", ALL))
HASH_ALL = effect(Profile("all", ALL, strategy="hash"))


def strings_in(value: Any) -> list[str]:
    """Every string, reading JSON text as its document the way masking does (numbers in it
    stay numbers, so a card-like number there is no string to find)."""
    if isinstance(value, str):
        try:
            document = json.loads(value)
        except ValueError:
            return [value]
        return strings_in(document) if isinstance(document, dict | list) else [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


@settings(max_examples=200)
@given(json_values)
def test_masked_output_never_contains_a_planted_value(value: Any) -> None:
    for policy in (REDACT_ALL, HASH_ALL):
        out = json.dumps(mask_json(value, policy).value, ensure_ascii=False)
        for planted in PLANTED:
            assert planted not in out
            assert json.dumps(planted)[1:-1] not in out  # nor inside re-serialised JSON


@settings(max_examples=200)
@given(json_values)
def test_masked_output_never_contains_a_detected_value(value: Any) -> None:
    detected = {
        found
        for text in strings_in(value)
        for detector in ALL
        for found in detector.find(text)
        if len(found) >= 6
    }
    out = mask_json(value, REDACT_ALL).value
    for text in strings_in(out):
        for found in detected:
            assert found not in text


def same_shape(before: Any, after: Any) -> None:
    """Same structure, keys and values, except masked strings (and card numbers, which
    become strings)."""
    if type(before) in (int, float) and isinstance(after, str):
        assert after.startswith(("[REDACTED:credit_card]", "credit_card:", "*"))
        return
    assert type(before) is type(after)
    if isinstance(before, dict):
        assert list(before) == list(after)
        for key in before:
            same_shape(before[key], after[key])
    elif isinstance(before, list):
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            same_shape(old, new)
    elif not isinstance(before, str):
        assert before == after


@settings(max_examples=200)
@given(json_values)
def test_masking_keeps_json_valid_and_structure_identical(value: Any) -> None:
    for policy in (REDACT_ALL, HASH_ALL, effect(Profile("pii", ALL, strategy="partial"))):
        out = mask_json(value, policy).value
        same_shape(value, json.loads(json.dumps(out, allow_nan=False)))
        same_shape(value, out)


def test_detector_type_is_public() -> None:
    assert all(isinstance(d, Detector) for d in ALL)
