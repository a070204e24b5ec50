"""Masking JSON text by its raw literals says exactly what walking the parsed text says.

The differential proof of `holdgate.masking.rawtext`: every document is masked with the
raw-text path and without it (`_Plan.raw` off), and both must give the same output bytes
(keys in the same order) and the same counts. Documents come from Hypothesis (the
prefilter's generator, which plants every detector's values, disguised, under keys rules
and keyed detectors read), the detector corpora put into JSON text every way an upstream
writes it, the benchmark's tool results, and hand-made hostile texts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdgate.masking import masker
from holdgate.masking.masker import MaskOutcome, mask_json
from test_detectors import FOUND as DETECTOR_FOUND
from test_detectors import NOT_FOUND as DETECTOR_NOT_FOUND
from test_masking_formats import FOUND as FORMAT_FOUND
from test_masking_formats import NOT_FOUND as FORMAT_NOT_FOUND
from test_masking_prefilter import DOCS, EFFECTS, KEYS, PLANTED

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_masking import tool_result  # noqa: E402

CORPUS = sorted(
    {text for _, text, _ in DETECTOR_FOUND}
    | {text for _, text in DETECTOR_NOT_FOUND}
    | {text for _, text, _ in FORMAT_FOUND}
    | {text for _, text in FORMAT_NOT_FOUND}
    | set(PLANTED)
)


@contextmanager
def walked() -> Iterator[None]:
    """Masking as before the raw-text path: every JSON text parsed and walked."""
    with mock.patch.object(masker._Plan, "raw", property(lambda self: None)):
        yield


def outcome(result: MaskOutcome | Exception) -> tuple[str, dict[str, int]] | str:
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    return json.dumps(result.value, ensure_ascii=False), result.findings


def masked(value: Any, name: str) -> tuple[str, dict[str, int]] | str:
    try:
        return outcome(mask_json(value, EFFECTS[name]))
    except masker.MaskingError as exc:
        return outcome(exc)


def assert_same(value: Any, name: str) -> None:
    with walked():
        plain = masked(value, name)
    assert masked(value, name) == plain


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS, st.sampled_from(sorted(EFFECTS)))
def test_generated_documents_mask_alike(value: Any, name: str) -> None:
    assert_same(value, name)


def written(value: Any, how: int) -> str:
    """JSON text as upstreams write it: compact, spaced, indented, ASCII-escaped."""
    if how == 0:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if how == 1:
        return json.dumps(value, ensure_ascii=False)
    if how == 2:
        return json.dumps(value, ensure_ascii=False, indent=2)
    return json.dumps(value)


SAMPLE = st.sampled_from(CORPUS)
FIELD = st.one_of(KEYS, SAMPLE)
RECORD = st.dictionaries(FIELD, SAMPLE | st.lists(SAMPLE, max_size=2), max_size=5)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(RECORD, min_size=1, max_size=6),
    st.integers(0, 3),
    st.sampled_from(sorted(EFFECTS)),
)
def test_corpus_records_in_json_text_mask_alike(records: list[Any], how: int, name: str) -> None:
    text = written(records, how)
    assert_same({"content": [{"type": "text", "text": text}]}, name)
    assert_same(text, name)  # the whole message is JSON text (an SSE event's data)


@pytest.mark.parametrize("text", CORPUS)
@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_each_corpus_value_masks_alike(text: str, name: str) -> None:
    for how in range(4):
        assert_same({"text": written({"note": text, "n": [text, 1]}, how)}, name)
        assert_same({"text": written({text: "a", "password": text}, how)}, name)


@pytest.mark.parametrize("pii", [True, False])
@pytest.mark.parametrize("name", ["design", "keyed", "all", "one"])
def test_benchmark_tool_results_mask_alike(pii: bool, name: str) -> None:
    assert_same(json.loads(tool_result(20_000, pii=pii)), name)


HOSTILE = [
    # Escaped quotes and backslashes next to values.
    r'["say \"jane@example.com\"", "\\", "x\\\"4111 1111 1111 1111\\\""]',
    r'{"a": "\\", "b": "jane@example.com\\\\"}',
    r'["3782 822463 10005", "123-45-6789"]',  # a trigger ending at the closing quote
    r'["3782 822463 10005\\", "123-45-6789"]',
    '["x", 4111111111111111]',  # a card as a number
    '{"n": 4.111111111111111e15, "m": "jane@example.com"}',
    # Keys: masked keys are renamed everywhere; keyed keys with other values.
    '{"jane@example.com": 1, "x": "bob@example.com"}',
    '{"ssn": 219099999, "a": "jane@example.com"}',
    '{"ssn": ["219099999"], "password": {"a": "b"}, "e": "jane@example.com"}',
    '{"password": "hunter2", "Password": "x", "api_key": null}',
    '{"password": "{\\"a\\": \\"jane@example.com\\"}"}',
    '{"s\u2028sn": "219099999", "e": "jane@example.com"}',
    # Not JSON, or JSON the strict parser refuses: masked as plain text.
    '{"a": "jane@example.com", "a": "x"}',
    '{"a": "jane@example.com", "b": "\\ud800"}',
    '{"a": "jane@example.com" "b": 1}',
    '["jane@example.com", NaN]',
    '["jane@example.com"',
    '["a\tjane@example.com"]',
    # JSON text in JSON text, and disguised values.
    '["{\\"e\\": \\"jane@example.com\\"}", "x"]',
    '[" jane@example.com"]',
    '["jane\\u0040example.com", "\\u0034111 1111 1111 1111"]',
    '["alice%40example.com", "\uff14\uff11\uff11\uff11 1111 1111 1111"]',
    '{"aws": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}',
]


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_hostile_json_text_masks_alike(text: str, name: str) -> None:
    assert_same({"content": [{"type": "text", "text": text}]}, name)
    assert_same({"x": [text, "jane@example.com"]}, name)


def test_the_raw_path_masks_a_tool_result() -> None:
    """Not vacuous: the benchmark's result is masked by the raw path, and it finds values."""
    taken: list[bool] = []
    real = masker._Walk._raw_masked

    def spy(self: masker._Walk, *args: Any) -> bool:
        taken.append(real(self, *args))
        return taken[-1]

    message = json.loads(tool_result(20_000))
    with mock.patch.object(masker._Walk, "_raw_masked", spy):
        result = mask_json(message, EFFECTS["design"])
    assert taken == [True]
    assert result.findings["email"] > 10 and result.findings["us_ssn"] > 0


def test_a_key_name_split_by_a_unicode_space_is_still_read() -> None:
    """`key_name` drops any whitespace Python knows, also where the prefilter looks."""
    text = json.dumps({"s\u2028sn": "219099999"}, ensure_ascii=False)
    for way in (walked(), nullcontext()):
        with way:
            result = mask_json({"text": text}, EFFECTS["keyed"])
        assert result.findings == {"us_ssn": 1}
