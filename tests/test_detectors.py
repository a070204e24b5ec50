"""Detectors: each finds its values and nothing that merely looks like them."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holdgate.masking import detectors
from holdgate.masking.detectors import (
    BUILTIN_DETECTORS,
    Haystack,
    custom_detector,
    detect,
    luhn_valid,
    mod97_valid,
    resolve,
)
from holdgate.masking.prefilter import prefilter_for

GITHUB = "ghp_" + "a1B2c3D4e5F6" * 3
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpM"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"

FOUND = [
    ("email", "write to jane.doe+crm@mail.example.co.uk today", "jane.doe+crm@mail.example.co.uk"),
    ("email", "<j@example.com>.", "j@example.com"),
    ("phone", "call +1 415 555 0132 now", "+1 415 555 0132"),
    ("phone", "tel:+44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
    ("phone", "+4930123456", "+4930123456"),
    ("phone", "+33 1 23 45 67 89", "+33 1 23 45 67 89"),
    ("phone", "office (415) 555-0132", "(415) 555-0132"),
    ("phone", "1-415-555-0132", "415-555-0132"),
    ("phone", "415.555.0132.", "415.555.0132"),
    ("credit_card", "card 4111 1111 1111 1111 exp 12/26", "4111 1111 1111 1111"),
    ("credit_card", "4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("credit_card", "(5555555555554444)", "5555555555554444"),
    ("credit_card", "amex 3782 822463 10005", "3782 822463 10005"),
    ("credit_card", "4111 1111 1111 1111 123", "4111 1111 1111 1111"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00.", "DE89 3704 0044 0532 0130 00"),
    ("iban", "DE89370400440532013000", "DE89370400440532013000"),
    ("iban", "GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "ES91 2100 0418 4502 0005 1332 BIC CAIXESBB", "ES91 2100 0418 4502 0005 1332"),
    ("iban", "BE68 5390 0754 7034 1234", "BE68 5390 0754 7034"),
    ("us_ssn", "SSN 123-45-6789", "123-45-6789"),
    ("us_ssn", "ssn: 078 05 1120", "078 05 1120"),
    ("aws_access_key", "key=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_access_key", "ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
    ("aws_secret_key", f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
    ("aws_secret_key", f"the secret is {AWS_SECRET}", AWS_SECRET),
    ("github_token", f"token {GITHUB}", GITHUB),
    ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmn", None),
    ("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp", None),
    ("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", None),
    ("stripe_key", "rk_live_51H8abcdefGHIJ1234", None),
    ("stripe_key", "sk_test_4eC39HqLyjWDarjtT1zdp7dc", None),
    (
        "openai_key",
        "OPENAI_API_KEY=sk-proj-Abc123def456GHI789jklMNOpqr",
        "sk-proj-Abc123def456GHI789jklMNOpqr",
    ),  # noqa: E501
    ("openai_key", "sk-" + "Ab1" * 16, None),
    ("anthropic_key", "sk-ant-api03-Abc123def456GHI789jklMNO-xyz_", None),
    ("jwt", f"Bearer {JWT}", JWT),
    ("private_key", f"key:\n{PEM}\nend", PEM),
    ("private_key", "-----BEGIN PRIVATE KEY-----\nMIIEvQ truncated", None),
    ("generic_secret", "password=hunter2", "hunter2"),
    ("generic_secret", "db_password: 'p@ss w0rd'", "p@ss w0rd"),
    ("generic_secret", 'log {"secret": "abc123"} tail', "abc123"),
    ("generic_secret", "api_key: sk123456", "sk123456"),
    ("generic_secret", "clientSecret=xyz123&grant=1", "xyz123"),
    ("generic_secret", "AUTH_TOKEN = s3cr3t", "s3cr3t"),
    ("generic_secret", 'raw \\"password\\": \\"abc123\\"', "abc123"),
]


@pytest.mark.parametrize(("name", "text", "value"), FOUND)
def test_detector_finds_value(name: str, text: str, value: str | None) -> None:
    assert BUILTIN_DETECTORS[name].find(text) == [value or text]


NOT_FOUND = [
    ("email", "user@localhost"),
    ("email", "a@b"),
    ("email", "x@example.c"),
    ("email", "j.@example.com"),
    ("email", "@example.com"),
    ("phone", "version 1.2.3.4"),
    ("phone", "on 2024-01-15"),
    ("phone", "order 100234567"),
    ("phone", "ip 192.168.100.200"),
    ("phone", "123-555-0132"),  # area codes do not start with 1
    ("phone", "415-155-0132"),  # nor exchanges
    ("phone", "1+4155550132"),
    ("phone", "+1 23"),
    ("phone", "+123456789012345678"),
    ("credit_card", "4111 1111 1111 1112"),  # fails Luhn
    ("credit_card", "order 1234567890123"),  # no card brand starts with 1
    ("credit_card", "4111111111111111x"),
    ("credit_card", "0.4111111111111111"),
    ("credit_card", "on 2024-01-15"),
    ("iban", "DE88 3704 0044 0532 0130 00"),  # wrong check digits
    ("iban", "XX89 3704 0044 0532 0130 00"),  # no such country
    ("iban", "DE89 3704 0044 0532 0130"),  # too short for DE
    ("iban", "xDE89370400440532013000"),
    ("us_ssn", "666-12-3456"),
    ("us_ssn", "000-12-3456"),
    ("us_ssn", "912-34-5678"),
    ("us_ssn", "123-00-4567"),
    ("us_ssn", "123-45-0000"),
    ("us_ssn", "123-45 6789"),
    ("us_ssn", "on 2024-01-15"),
    ("us_ssn", "A-123-45-6789"),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPL"),
    ("aws_access_key", "XAKIAIOSFODNN7EXAMPLE"),
    ("aws_secret_key", f"commit {AWS_SECRET}"),  # no keyword near
    ("aws_secret_key", "secret sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ("aws_secret_key", "aws " + "A" * 40),
    ("aws_secret_key", "secret " + "x" * 200 + AWS_SECRET),  # keyword too far away
    ("github_token", "ghp_short"),
    ("github_token", "xghp_" + "a" * 36),
    ("slack_token", "xoxb-short"),
    ("stripe_key", "pk_live_4eC39HqLyjWDarjtT1zdp7dc"),  # publishable, not secret
    ("openai_key", "sk-this-is-a-long-product-slug"),
    ("openai_key", "task-Abc123def456GHI789jklMNO"),
    ("anthropic_key", "sk-ant-short"),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9"),  # one part
    ("jwt", "eyJzb21lIjoianNvbiJ9.eyJ.x"),  # header has no "alg"
    ("jwt", "eyJ!!!.abc.def"),
    ("jwt", "eyJubm90IGpzb24.abc.def"),  # header is not JSON
    ("private_key", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"),
    ("generic_secret", "secretary: Jane"),
    ("generic_secret", "max_tokens=1024"),
    ("generic_secret", "password: ********"),
    ("generic_secret", "password = null"),
    ("generic_secret", "password: [REDACTED:generic_secret]"),
    ("generic_secret", "tokenizer=bpe"),
    ("generic_secret", "the password is long"),
]


@pytest.mark.parametrize(("name", "text"), NOT_FOUND)
def test_detector_ignores_near_miss(name: str, text: str) -> None:
    assert BUILTIN_DETECTORS[name].find(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "release 1.2.3.4 shipped",
        "due 2024-01-15T10:22:31Z",
        "order number 100234567 (ticket SUP-4411)",
        "eyJ is how base64 JSON starts",
        "commit da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "amount 1234.56 EUR, qty 12, zip 94105",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
    ],
)
def test_ordinary_text_has_nothing_sensitive(text: str) -> None:
    assert detect(Haystack([text]), tuple(BUILTIN_DETECTORS.values())) == []


def test_builtin_names_and_docstring_table() -> None:
    expected = (
        "email phone credit_card iban us_ssn aws_access_key aws_secret_key github_token "
        "slack_token stripe_key openai_key anthropic_key jwt private_key generic_secret "
        "google_api_key gitlab_token npm_token huggingface_token sendgrid_key azure_storage_key"
    ).split()
    assert list(BUILTIN_DETECTORS) == expected
    for name in expected:
        assert f"| `{name}`" in (detectors.__doc__ or "")


def test_aws_secret_key_near_its_json_key() -> None:
    hay = Haystack([AWS_SECRET, AWS_SECRET], lambda: ["SecretAccessKey", "checksum"])
    hits = detect(hay, [BUILTIN_DETECTORS["aws_secret_key"]])
    assert [(h.index, h.start, h.end) for h in hits] == [(0, 0, 40)]


def test_hits_are_located_in_their_own_text() -> None:
    hay = Haystack(["no", "mail a@example.com", "", "x 123-45-6789"])
    hits = detect(hay, [BUILTIN_DETECTORS["email"], BUILTIN_DETECTORS["us_ssn"]])
    assert sorted((h.index, h.start, h.end, h.detector.name) for h in hits) == [
        (1, 5, 18, "email"),
        (3, 2, 13, "us_ssn"),
    ]


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("79927398713", True), ("0", True)],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("GB82 WEST 1234 5698 7654 32", True),
        ("GB82WEST12345698765432", True),
        ("gb82 west 1234 5698 7654 32", True),
        ("GB83 WEST 1234 5698 7654 32", False),
        ("GB8", False),
    ],
)
def test_mod97(text: str, valid: bool) -> None:
    assert mod97_valid(text) is valid


def test_custom_detector_with_validator() -> None:
    card = custom_detector("acme_card", r"\bACME-[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{4}\b", "luhn")
    assert card.find("ACME-4111-1111-1111-1111 ACME-4111-1111-1111-1112") == [
        "ACME-4111-1111-1111-1111"
    ]
    account = custom_detector("acct", r"acct (?P<value>[A-Z]{2}[0-9]{2}[A-Z0-9]{4,30})", "mod97")
    assert account.find("acct GB82WEST12345698765432, acct GB83WEST12345698765432") == [
        "GB82WEST12345698765432"
    ]
    employee = custom_detector("employee_id", r"E-[0-9]{6}")
    assert employee.find("E-123456 and E-12345") == ["E-123456"]


def test_custom_detector_runs_per_string() -> None:
    # a user regex may match the separator; it must never join two strings
    anything = custom_detector("anything", r"a[\s\S]*b")
    hits = detect(Haystack(["a..", "..b", "ab"]), [anything])
    assert [(h.index, h.start, h.end) for h in hits] == [(2, 0, 2)]


@pytest.mark.parametrize(
    ("regex", "validator", "error", "match"),
    [
        (r"(", "none", re.error, "missing"),
        (r"x*", "none", ValueError, "empty string"),
        (r"x", "crc", ValueError, "unknown validator"),
    ],
)
def test_custom_detector_errors(
    regex: str, validator: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        custom_detector("bad", regex, validator)


def test_resolve() -> None:
    employee = custom_detector("employee_id", r"E-[0-9]{6}")
    found = resolve(["email", "employee_id"], {"employee_id": employee})
    assert [d.name for d in found] == ["email", "employee_id"]
    with pytest.raises(KeyError, match="unknown detector 'mail'; valid: anthropic_key, "):
        resolve(["mail"])


# --- joined scanning finds exactly what scanning each string alone finds -----------------

SAMPLES = [value or text for _, text, value in FOUND] + [text for _, text in NOT_FOUND]
pieces = st.one_of(
    st.sampled_from(SAMPLES),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    st.sampled_from([" ", "\n", ":", "=", "-", "+", "(", ")", ".", "\x00", '"', "aws", "secret"]),
)
texts = st.lists(st.lists(pieces, max_size=6).map("".join), min_size=1, max_size=6)


@given(texts)
def test_joined_scan_equals_per_string_scan(strings: list[str]) -> None:
    for detector in BUILTIN_DETECTORS.values():
        joined = detect(Haystack(strings), [detector])
        alone = [
            (index, h.start, h.end)
            for index, text in enumerate(strings)
            for h in detect(Haystack([text]), [detector])
        ]
        assert sorted((h.index, h.start, h.end) for h in joined) == sorted(alone), detector.name


@pytest.mark.parametrize("text", SAMPLES)
def test_the_prefilter_keeps_every_detector_that_finds_a_sample(text: str) -> None:
    # The corpus as plain text and as JSON text (escaped as an upstream would send it).
    pre = prefilter_for(tuple(BUILTIN_DETECTORS.values()), frozenset())
    kept = {d.name for d in pre.present(text)}
    found = {name for name, d in BUILTIN_DETECTORS.items() if d.find(text)}
    assert found <= kept
    if found:
        for ascii_only in (True, False):
            assert not pre.clean_json(json.dumps({"v": [text]}, ensure_ascii=ascii_only), "")


@given(texts)
def test_the_prefilter_keeps_every_detector_that_finds_something(strings: list[str]) -> None:
    pre = prefilter_for(tuple(BUILTIN_DETECTORS.values()), frozenset())
    hay = Haystack(strings)
    kept = {d.name for d in pre.present(hay.blob)}
    assert {h.detector.name for h in detect(hay, tuple(BUILTIN_DETECTORS.values()))} <= kept
