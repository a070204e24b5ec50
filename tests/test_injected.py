"""The injected credential in every form an echo may spell it (`holdgate.masking.injected`).

What must not survive is checked with `helpers.leaks.spellings`, worked out apart from the
gateway's own forms.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.leaks import spellings
from holdgate.config.gateway_config import parse_config_text
from holdgate.configfile import ConfigErrors
from holdgate.masking.injected import (
    MAX_SECRET_BYTES,
    PARTIAL_MIN,
    SECRET_MARK,
    InjectedForms,
    StreamTails,
    secret_forms,
)

TOKEN = "hg-upstream-secret-7f3a9c2e41"
SLASHED = "tok/en+with/slash=7f3a9c2e41"  # a base64-ish token: `/` and `+` in it
FORMS = InjectedForms([f"Bearer {TOKEN}", f"Bearer {SLASHED}"])
DUMP = "GET /mcp HTTP/1.1\r\nHost: upstream\r\nAuthorization: Bearer {}\r\nAccept: */*\r\n"


def dump(token: str = TOKEN, pad: int = 0) -> bytes:
    return ("." * pad + DUMP.format(token)).encode()


def visible(text: str, token: str = TOKEN) -> list[bytes]:
    """The spellings of `token` still in `text`."""
    folded, exact = spellings(token)
    data = text.encode("utf-8", "surrogatepass")
    return [f for f in exact if f in data] + [f for f in folded if f in data.lower()]


ECHOES = {
    **{
        f"base64 at offset {pad}{' padded' if padded else ''}": (
            lambda pad=pad, padded=padded: (
                base64.b64encode(dump(pad=pad)).decode().rstrip("" if padded else "=")
            )
        )
        for pad in range(3)
        for padded in (True, False)
    },
    **{
        f"url-safe base64 at offset {pad}": (
            lambda pad=pad: base64.urlsafe_b64encode(dump(pad=pad)).decode()
        )
        for pad in range(3)
    },
    "base64 inside a longer blob": lambda: base64.b64encode(b"x" * 301 + dump() * 3).decode(),
    "base64 of the upper-cased dump": lambda: base64.b64encode(dump().upper()).decode(),
    "hex": lambda: dump().hex(),
    "HEX": lambda: dump().hex().upper(),
    "upper case": lambda: dump().decode().upper(),
    "lower case": lambda: dump().decode().lower(),
    "mixed case": lambda: TOKEN.swapcase(),
    "percent-encoded": lambda: quote(dump().decode(), safe=""),
    "percent-encoded, upper": lambda: quote(dump().decode(), safe="").upper(),
    "form-encoded": lambda: quote_plus(dump().decode()),
    "every byte percent-encoded": lambda: "".join(f"%{b:02X}" for b in dump()),
    "JSON text": lambda: json.dumps(dump().decode()),
    "\\u escapes": lambda: "".join(f"\\u{ord(c):04x}" for c in dump().decode()),
    "\\u escapes, upper": lambda: "".join(f"\\u{ord(c):04X}" for c in dump().decode()),
}


@pytest.mark.parametrize("spell", ECHOES.values(), ids=ECHOES.keys())
def test_every_spelling_of_an_echoed_credential_is_replaced(spell) -> None:
    text = spell()
    assert visible(text), "the echo spells the token"
    scrubbed, count = FORMS.scrub_text(text)
    assert count >= 1 and SECRET_MARK in scrubbed
    assert not visible(scrubbed)


@pytest.mark.parametrize(
    "spell",
    [
        lambda t: t,
        lambda t: json.dumps(t)[1:-1].replace("/", "\\/"),
        lambda t: quote(t, safe=""),
        lambda t: base64.b64encode(b"ab" + t.encode()).decode(),
        lambda t: base64.urlsafe_b64encode(b"a" + t.encode()).decode(),
    ],
    ids=["plain", "json \\/", "percent", "base64", "url-safe base64"],
)
def test_a_token_with_slashes_and_pluses_is_found_in_each_alphabet(spell) -> None:
    scrubbed, count = FORMS.scrub_text(f"seen: {spell(SLASHED)}.")
    assert count == 1 and not visible(scrubbed, SLASHED)


def test_basic_credentials_are_found_whole_and_by_their_password() -> None:
    pair = base64.b64encode(b"svc-account:pa55-w0rd-7f3a9c").decode()
    forms = InjectedForms([f"Basic {pair}"])
    for text in (pair, "svc-account:pa55-w0rd-7f3a9c", "PA55-W0RD-7F3A9C".lower()):
        assert forms.scrub_text(f"x {text} y")[1] == 1


def test_the_whole_value_is_replaced_not_only_its_token() -> None:
    assert FORMS.scrub_text(f"got Bearer {TOKEN}!") == (f"got {SECRET_MARK}!", 1)


@pytest.mark.parametrize("cut", range(1, len(TOKEN)))
def test_a_value_cut_across_content_texts_is_replaced_at_every_cut(cut) -> None:
    message = {
        "content": [
            {"type": "text", "text": f"you sent Bearer {TOKEN[:cut]}"},
            {"type": "text", "text": f"{TOKEN[cut:]} and more"},
        ]
    }
    out, count = FORMS.scrub_value(message)
    texts = [item["text"] for item in out["content"]]
    assert count >= 1 and not visible("".join(texts))
    assert texts[1].endswith(" and more")
    assert message["content"][0]["text"].endswith(TOKEN[:cut])  # the input is not changed


@pytest.mark.parametrize("cut", range(1, len(TOKEN)))
def test_a_value_cut_across_two_events_under_other_keys_leaves_no_long_piece(cut) -> None:
    # A log notification ends with the start, the result begins with the rest.
    tails = StreamTails()
    log = {"method": "notifications/message", "params": {"data": f"auth: {TOKEN[:cut]}"}}
    answer = {"id": 1, "result": {"content": [{"type": "text", "text": f"{TOKEN[cut:]} ok"}]}}
    first, _ = FORMS.scrub_value(log, tails)
    second, _ = FORMS.scrub_value(answer, tails)
    shown = first["params"]["data"] + second["result"]["content"][0]["text"]
    assert not visible(shown)
    pieces = [TOKEN[i : i + PARTIAL_MIN] for i in range(len(TOKEN) - PARTIAL_MIN + 1)]
    assert not any(piece in shown for piece in pieces)


@pytest.mark.parametrize("size", [1, 3, 4, 7])
def test_a_value_sent_a_few_characters_per_event_is_replaced_once_it_shows(size) -> None:
    tails = StreamTails()
    shown = []
    for at in range(0, len(TOKEN), size):
        message = {"method": "notifications/progress", "params": {"message": TOKEN[at : at + size]}}
        out, _ = FORMS.scrub_value(message, tails)
        shown.append(out["params"]["message"])
    assert SECRET_MARK in shown
    clear = "".join(s for s in shown if s != SECRET_MARK)
    assert len(clear) < PARTIAL_MIN and TOKEN.startswith(clear)


def test_a_stream_split_in_base64_across_events_is_replaced() -> None:
    blob = base64.b64encode(dump(pad=1)).decode()
    tails = StreamTails()
    shown = "".join(FORMS.scrub_text(blob[at : at + 5], tails)[0] for at in range(0, len(blob), 5))
    assert not visible(shown) and SECRET_MARK in shown


def test_keys_are_scrubbed_and_untouched_values_are_the_very_same_object() -> None:
    clean = {"content": [{"type": "text", "text": "Bearer of good news, upstream"}], "n": 1}
    out, count = FORMS.scrub_value(clean)
    assert out is clean and count == 0
    out, count = FORMS.scrub_value({TOKEN: [clean]})
    assert count == 1 and list(out) == [SECRET_MARK] and out[SECRET_MARK][0] is clean


def test_ordinary_words_at_string_edges_are_not_taken_for_a_token_start() -> None:
    forms = InjectedForms(["Bearer upstream-token-7f3a9c21e4"])
    values = ["X-Upstream", "upstream-", "Upstream-Token-7f3a", "an upstream"]
    assert forms.scrub_value(values) == (values, 0)


def test_lone_surrogates_are_kept_and_searched() -> None:
    text = f"\udcff{TOKEN}\ud800"
    assert FORMS.scrub_text(text) == (f"\udcff{SECRET_MARK}\ud800", 1)


def test_no_secrets_finds_nothing() -> None:
    forms = InjectedForms([])
    assert not forms and forms.scrub_value({"a": TOKEN}) == ({"a": TOKEN}, 0)


def test_forms_are_built_once_longest_first_and_short_ones_left_out() -> None:
    forms = [form.text for form in secret_forms(["Bearer ab"])]
    assert "Bearer ab" in forms and "ab" not in forms
    lengths = [len(form.text) for form in FORMS.forms]
    assert lengths == sorted(lengths, reverse=True)


@given(st.text())
def test_text_without_the_token_passes_unchanged(text: str) -> None:
    assert FORMS.scrub_text(text) == (text, 0)


@given(st.text(max_size=40), st.text(max_size=40), st.integers(0, 2))
def test_a_base64_blob_holding_the_dump_never_keeps_it(before: str, after: str, pad: int) -> None:
    data = (
        before.encode("utf-8", "surrogatepass")
        + dump(pad=pad)
        + after.encode("utf-8", "surrogatepass")
    )
    scrubbed, count = FORMS.scrub_text(base64.b64encode(data).decode())
    assert count >= 1 and not visible(scrubbed)


def test_a_long_credential_compiles_and_is_found_whole_and_cut() -> None:
    # A JWT-sized token: its \u-escaped form alone is thousands of characters.
    token = "eyJhbGciOiJSUzI1NiJ9." + "QWxpY2U" * 130 + ".c2lnbmF0dXJl"
    forms = InjectedForms([f"Bearer {token}"])
    assert forms.scrub_text(f"x {token.upper()} y")[1] == 1
    message = {"content": [{"text": "a " + token[:400]}, {"text": token[400:] + " b"}]}
    out, _ = forms.scrub_value(message)
    assert out["content"][0]["text"] == f"a {SECRET_MARK}"
    assert out["content"][1]["text"] == f"{SECRET_MARK} b"


def test_a_repetitive_token_cut_at_the_end_is_found_at_the_earliest_start() -> None:
    token = "abababababababababab-7f3a"
    forms = InjectedForms([token])
    out, count = forms.scrub_text("see ab" + token[:-3])
    assert count == 1 and out == f"see ab{SECRET_MARK}"


def test_an_injected_value_too_long_to_search_for_is_refused_at_config_load() -> None:
    long = "x" * (MAX_SECRET_BYTES + 1)
    text = (
        "version: 1\nupstreams:\n  - name: crm\n    url: http://127.0.0.1:9\n"
        f"    inject:\n      headers:\n        Authorization: Bearer {long}\nrules: []\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        parse_config_text(text, "gw.yaml")
    report = caught.value.report()
    assert "gw.yaml:7" in report
    assert (
        f"the value is {MAX_SECRET_BYTES + 8} bytes; an injected header may have at most" in report
    )
    assert long not in report


def test_a_digits_only_credential_echoed_as_a_json_number_is_replaced() -> None:
    """An injected `X-Account-Pin: 8675309123` echoed back as a number, not a string."""
    forms = InjectedForms(["8675309123"])
    value = {"pin": 8675309123, "nested": [{"n": 8675309123.0}], "other": 42, "flag": True}
    scrubbed, count = forms.scrub_value(value)
    assert scrubbed == {
        "pin": SECRET_MARK,
        "nested": [{"n": SECRET_MARK}],
        "other": 42,
        "flag": True,
    }
    assert count == 2
    assert "8675309123" not in json.dumps(scrubbed)


def test_numbers_are_left_alone_when_no_secret_could_be_one() -> None:
    value = {"count": 8675309123, "items": [1, 2.5]}
    scrubbed, count = FORMS.scrub_value(value)
    assert (scrubbed, count) == (value, 0) and scrubbed is value
