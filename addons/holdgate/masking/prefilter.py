"""One pass that says which detectors could find anything in a text, so the rest are skipped.

Every built-in detector has a trigger: a regex that every candidate of its patterns
contains (its literal prefix, its digit shape or its keyword), with the boundary checks
and validators left out, so a trigger is looser than its detector, never stricter. The
triggers of a set of detectors are compiled into one RE2 set: a DFA that reports which of
them occur in a single linear pass, however many there are. Most tool results hold no
candidate at all; PII-dense ones skip at least the secret detectors.

`Prefilter.clean_json` goes further for JSON text that masking would otherwise parse and
walk (MCP tool results carry JSON as `content[].text`): when the raw text holds no trigger,
no JSON escape that could spell one (`\\u0040`), no character that folding would change
and no field-rule name, then no string or key in it can be masked, so it is kept as it
is without parsing it. Triggers survive JSON escaping (no `"`, `/` or control character
in them, and the whitespace they allow may be escaped), so a trigger in a decoded string
is a trigger in the raw text too.

Fail closed: a detector without a trigger (custom regexes, or one reading JSON keys) is
always run, and a set with one cannot call any JSON text clean. A text RE2 cannot take
(lone surrogates), or a search it gives up (RE2 answers "no match" when its DFA runs
out of memory: every set holds a pattern matching all texts, so that shows), is treated
as holding every trigger.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import re2

from holdgate.masking.detectors import (
    BUILTIN_DETECTORS,
    NFKC_STABLE_FOLDS,
    Detector,
    KeyedDetector,
    NationalPhoneDetector,
    NearKeywordDetector,
)

# Integral floats of 13+ digits are scanned as card numbers; in exponent form
# (`4.1111e15`) they show no 13-digit run, so a JSON number with an exponent triggers too.
# The whitespace before it may itself be escaped (`\n`, `\\n`: JSON text in JSON text).
_EXPONENT_NUMBER = r"[\[:,][ \t\r\n\\nrt]*-?[0-9][0-9.]*[eE]"

# Where the detectors' lookbehinds let a value start: a number after no digit, capital,
# '_' or '.' (a card or SSN not after '-' either), an IBAN after no capital, digit or '_'.
# Lower case is allowed before all of them: in JSON text `\n4111…` has an 'n' there.
_NUMBER_START = r"(?:^|[^0-9A-Z_.])"
_CARD_START = r"(?:^|[^0-9A-Z_.-])"
_CARD_SEPARATOR = r"[ ./-]"
TRIGGERS: dict[str, str] = {
    "email": r"@",
    "phone": r"\+[1-9]|\([0-9]{3}\) ?[0-9]{3}[-. ][0-9]{4}|"
    + _NUMBER_START
    + r"[0-9]{3}[-. ][0-9]{3}[-. ][0-9]{4}",
    # A card may follow a letter or a dash: no boundary before it.
    # (An Amex-shaped group ends the number: "SUP-4411 100234 100234" in prose is not one.)
    "credit_card": (
        r"[0-9]{13}|[0-9]{4}(?:S[0-9]{4}S[0-9]{4}S[0-9]|S[0-9]{6}S[0-9]{5}(?:[^0-9]|$))|"
    ).replace("S", _CARD_SEPARATOR)
    + _EXPONENT_NUMBER,
    # Lower case, or a letter before it: in JSON text `\nde89…` has an 'n' there.
    "iban": r"[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Za-z0-9]{4}){2}",
    "us_ssn": _CARD_START + r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}",
    "aws_access_key": r"A(?:KIA|SIA)",
    "aws_secret_key": r"(?i:aws|secret)",
    "github_token": r"gh[pousr]_|github_pat_",
    "slack_token": r"xox[abprs]-",
    "stripe_key": r"[rs]k_(?:live|test)_",
    "openai_key": r"sk-",
    "anthropic_key": r"sk-ant-",
    "jwt": r"eyJ",
    "private_key": r"-----BEGIN ",
    "generic_secret": r"(?i:pass|pwd|secret|api|access|private|token|credential|auth|bearer)",
    "google_api_key": r"AIza",
    "gitlab_token": r"gl(?:pat|dt|ft|soat|rt|imt|ptt|agent|oas|cbt)-",
    "npm_token": r"npm_",
    "huggingface_token": r"hf_",
    "sendgrid_key": r"SG\.",
    "azure_storage_key": r"(?i:accountkey)",
}
"""Per built-in detector, a regex every candidate it finds contains."""

# National phone numbers start with a trunk 0 (the detector also wants no word character,
# '+', '.', ',', '/', ':' or '-' before it; letters are allowed here, as for IBANs).
NATIONAL_PHONE_TRIGGER = r"(?:^|[^0-9_+.,/:-])\(?0[0-9]{1,4}\)?[ .-]?[0-9]{2}"

# A JSON escape, or a text escape folding reads (`\u0040`, `\x40`, `%40`, `&#64;`), can
# spell any trigger; invisible characters and Unicode dashes are folded away even in
# NFKC-normalised text.
_FOLDED = (
    r"\\[ux]",
    r"%[0-7][0-9A-Fa-f]",
    r"&(?:#|[A-Za-z][A-Za-z0-9]{1,31};)",
    "[" + NFKC_STABLE_FOLDS + "]",
)
# What `key_name` drops between the letters of a key, as raw JSON text (or JSON text in
# JSON text, its backslashes doubled) may write it: Python's `\s` is RE2's and the Unicode
# spaces (`s\u2028sn` names an SSN), which JSON writes as they are.
_UNICODE_SPACE = "\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_KEY_GAP = r"(?:[\s" + _UNICODE_SPACE + r"_.-]|\\+[ntrfb])*"
# Characters JSON may write as a short escape: a name holding one may not appear as is.
_ESCAPED_IN_JSON = frozenset('"\\/' + "".join(map(chr, range(0x20))))


class Prefilter:
    """The detectors of one plan behind one RE2 pass; build with `prefilter_for`."""

    def __init__(self, detectors: Sequence[Detector], names: frozenset[str]) -> None:
        self.detectors = tuple(detectors)
        self._always: list[Detector] = []
        self._gated: list[Detector] = []
        json_set = _new_set()
        gate_set = _new_set()
        json_ok = all(_trigger(d) is not None for d in self.detectors) and all(
            not _ESCAPED_IN_JSON.intersection(name) for name in names
        )
        for detector in self.detectors:
            trigger = _trigger(detector)
            if trigger is not None:
                json_set.Add(trigger)
            # Near-keyword and keyed detectors also read the JSON key a text sits under,
            # which the haystack may not hold: they gate themselves, on keys and text both.
            if trigger is None or isinstance(detector, NearKeywordDetector | KeyedDetector):
                self._always.append(detector)
            else:
                gate_set.Add(trigger)
                self._gated.append(detector)
        self._near = tuple(d.keywords for d in self.detectors if isinstance(d, NearKeywordDetector))
        self._keyed = tuple(d for d in self.detectors if isinstance(d, KeyedDetector))
        # `$..name` rules match keys case-insensitively.
        for pattern in (*_FOLDED, *(f"(?i:{re2.escape(name)})" for name in sorted(names))):
            json_set.Add(pattern)
        json_set.Compile()
        self._gate = None
        if self._gated:
            gate_set.Compile()
            self._gate = gate_set
        self._json = json_set if json_ok else None

    def present(self, text: str) -> Sequence[Detector]:
        """The detectors that could find something in `text`, in the plan's order."""
        if self._gate is None:
            return self.detectors
        found = _match(self._gate, text)
        if found is None:
            return self.detectors
        if not found:
            return self._always
        if len(found) == len(self._gated):
            return self.detectors
        hit = {id(self._gated[i - 1]) for i in found}
        return [d for d in self.detectors if id(d) in hit or d in self._always]

    def clean_json(self, text: str, context: str) -> bool:
        """True when nothing in the JSON `text` (under the key `context`) can be masked."""
        if self._json is None:
            return False
        if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
            return False  # compatibility forms (full-width digits...) are folded to ASCII
        if context and self._near:
            lowered = context.lower().encode("latin-1", "replace")
            if any(k in lowered for keywords in self._near for k in keywords):
                return False
        if context and any(d.names_it(context) for d in self._keyed):
            return False
        return _match(self._json, text) == []


def _new_set() -> re2.Set:
    """A set whose pattern 0 matches every text, so an empty answer means RE2 gave up."""
    found = re2.Set.SearchSet(re2.Options())
    found.Add("(?:)")
    return found


def _match(patterns: re2.Set, text: str) -> list[int] | None:
    """Indexes (from 1) of the set's patterns found in `text`; None when RE2 cannot say:
    a lone surrogate (RE2 reads UTF-8 only) or a search it gave up (out of memory)."""
    try:
        found = patterns.Match(text)
    except UnicodeEncodeError:
        return None
    if not found or 0 not in found:
        return None
    return [i for i in found if i]


def _trigger(detector: Detector) -> str | None:
    """The trigger of a built-in detector; None for any other (it is never skipped).

    A keyed detector's trigger is its key names as raw JSON text may spell them (any
    case, separators between letters): for `clean_json`, which sees the keys.
    """
    if isinstance(detector, KeyedDetector):
        names = (_KEY_GAP.join(map(re2.escape, name)) for name in sorted(detector.names))
        return "(?i:" + "|".join(names) + ")"
    if isinstance(detector, NationalPhoneDetector):
        return NATIONAL_PHONE_TRIGGER
    if BUILTIN_DETECTORS.get(detector.name) is not detector:
        return None
    return TRIGGERS.get(detector.name)


@lru_cache(maxsize=256)
def prefilter_for(detectors: tuple[Detector, ...], names: frozenset[str]) -> Prefilter:
    """One compiled prefilter per plan (detectors hash by identity; reloads add few)."""
    return Prefilter(detectors, names)
