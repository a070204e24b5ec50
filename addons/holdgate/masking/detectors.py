"""Detectors of sensitive values in text: a pattern to find candidates, a check to reject them.

Masking runs on every response, so detectors are built for throughput: every pattern is
compiled once, starts with a literal or a narrow character class (so the regex engine
skips ahead in C), and detectors whose keyword or prefix is absent are not run at all.
Callers hand all the strings of a document to `detect` at once; they are joined with
NUL into one `Haystack` and each detector scans it in a single pass. Built-in patterns
never match NUL and treat it as a boundary, so a joined scan finds exactly what scanning
each string alone would. Custom (config) patterns are user regexes with no such promise,
so they run string by string. Digits and capitals are also scanned on a "shape" of the
blob (every digit '0', every capital 'A'), where patterns begin with literals like "000"
that the engine skips to quickly instead of trying a match at every digit.

False positives are kept low by validating every candidate: Luhn and card-brand prefixes
for cards, mod-97 and the per-country length for IBANs, the SSA's invalid ranges for US
SSNs, a decodable `{"alg": …}` header for JWTs, mixed case for AWS secret keys.

Disguised values are found too: `detect_folded` scans a folded copy of each text that holds
a JSON/JS escape (`alice\\u0040example.com`), URL encoding (`alice%40example.com`), an HTML
character reference (`alice&#64;example.com`), a compatibility form NFKC maps to ASCII
(full-width `４１１１…`, `alice＠example.com`, a no-break space), a Unicode dash, or an
invisible character (zero-width space/joiners, word joiner, BOM, soft hyphen) inside a
value, and maps each hit back to the span of the original text. Texts with none of these
(the common case) are checked with one `isascii` or one character-class search.

Built-in detectors (`BUILTIN_DETECTORS`), with an example each:

| name             | finds                                | example                           |
|------------------|--------------------------------------|-----------------------------------|
| `email`          | e-mail addresses, IDN domains too    | `josé.garcía@bücher.example`      |
| `phone`          | `+` international, North American    | `+44 20 7946 0958`                |
| `credit_card`    | 13-19 digits, Luhn and brand checked | `4111 1111 1111 1111`             |
| `iban`           | IBANs, mod-97 and length checked     | `DE89 3704 0044 0532 0130 00`     |
| `us_ssn`         | US SSNs in issuable ranges           | `123-45-6789`, `{"ssn": …}`       |
| `aws_access_key` | AWS access key ids                   | `AKIAIOSFODNN7EXAMPLE`            |
| `aws_secret_key` | 40 chars near aws/secret (or key)    | `aws_secret: wJalrXUtnFEMI/K7…`   |
| `github_token`   | GitHub tokens                        | `ghp_…, github_pat_…`             |
| `slack_token`    | Slack tokens                         | `xoxb-1234567890-…`               |
| `stripe_key`     | Stripe secret/restricted keys        | `sk_live_…, rk_live_…`            |
| `openai_key`     | OpenAI-style keys                    | `sk-proj-…, sk-…`                 |
| `anthropic_key`  | Anthropic keys                       | `sk-ant-api03-…`                  |
| `jwt`            | JWS/JWE, header has "alg"            | `eyJhbGciOiJIUzI1NiJ9.eyJ….sig`   |
| `private_key`    | PEM private keys, BEGIN to END       | `-----BEGIN RSA PRIVATE KEY-----` |
| `generic_secret` | value after password/secret/token    | `password=hunter2`, `Bearer …`    |
| `google_api_key` | Google API keys                      | `AIzaSy…` (39 chars)              |
| `gitlab_token`   | GitLab tokens                        | `glpat-…`, `glrt-…`               |
| `npm_token`      | npm access tokens                    | `npm_…` (40 chars)                |
| `huggingface_token` | Hugging Face tokens               | `hf_…` (37 chars)                 |
| `sendgrid_key`   | SendGrid API keys                    | `SG.<22>.<43>`                    |
| `azure_storage_key` | Azure storage account keys        | `AccountKey=…==`                  |

Values under a JSON key that names them are found too (`KeyedDetector`): with
`generic_secret`, the value of a key like `password`, `client_secret`, `apiKey` or
`Authorization` (see `SECRET_KEY_NAMES`); with `us_ssn`, a bare `123456789` under `ssn`.
National phone formats (`020 7946 0958`) are found by `NationalPhoneDetector` for the
regions a profile names, with the `phonenumbers` library.
"""

from __future__ import annotations

import base64
import binascii
import html.entities
import json
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, compress, count
from operator import add, not_
from typing import Any, Literal, NamedTuple

import phonenumbers

Kind = Literal["email", "phone", "card", "iban", "ssn", "secret"]
"""What a value is, which decides how the `partial` strategy shows it."""

Span = tuple[int, int]
Accept = Callable[[str], int]
"""Length of the valid value at the start of a candidate; 0 rejects the candidate."""

SEPARATOR = "\x00"
NEAR_WINDOW = 100  # how far before an AWS secret key its keyword may be


class Haystack:
    """The strings of one document joined by NUL, so each detector scans them in one pass."""

    __slots__ = (
        "texts", "blob", "shared", "_keys", "_key_source", "_latin", "_lowered", "_shape", "_starts"
    )  # fmt: skip

    def __init__(
        self, texts: Sequence[str], keys: Callable[[], Sequence[str]] | None = None
    ) -> None:
        self.texts = texts
        self._key_source = keys  # computed only if a detector asks
        self._keys: Sequence[str] | None = None
        self.blob = texts[0] if len(texts) == 1 else SEPARATOR.join(texts)
        self.shared: dict[ShapeScan, dict[str, list[Span]]] = {}
        self._latin: bytes | None = None
        self._lowered: bytes | None = None
        self._shape: bytes | None = None
        self._starts: list[int] | None = None

    @property
    def keys(self) -> Sequence[str]:
        """The JSON key each text sits under (its nearest), for keyword-near checks."""
        if self._keys is None:
            self._keys = self._key_source() if self._key_source else ()
        return self._keys

    def _latin1(self) -> bytes:
        """One byte per character (others become '?'), so offsets match `blob`."""
        if self._latin is None:
            self._latin = self.blob.encode("latin-1", "replace")
        return self._latin

    @property
    def lowered(self) -> bytes:
        """The blob with ASCII letters lower-cased, for case-insensitive keyword search."""
        if self._lowered is None:
            self._lowered = self._latin1().lower()
        return self._lowered

    @property
    def shape(self) -> bytes:
        """The blob with every digit turned into '0' and capital into 'A'.

        Patterns over the shape start with literals ("000", "AA00"), which the regex
        engine finds fast, where a leading [0-9] would make it try every digit.
        """
        if self._shape is None:
            self._shape = self._latin1().translate(_SHAPE)
        return self._shape

    def has_any(self, needles: Sequence[bytes]) -> bool:
        lowered = self.lowered
        return any(needle in lowered for needle in needles)

    def start(self, index: int) -> int:
        return self.offsets()[index] if index else 0

    def locate(self, position: int) -> tuple[int, int]:
        """The text a blob position falls in, and the position inside that text."""
        starts = self.offsets()
        index = bisect_right(starts, position) - 1
        return index, position - starts[index]

    def offsets(self) -> list[int]:
        """Where each text starts in the blob."""
        if self._starts is None:
            lengths = accumulate(map(len, self.texts[:-1]), initial=0)
            self._starts = list(map(add, lengths, count()))  # + one separator per text
        return self._starts


_SHAPE = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 10 + b"A" * 26)


class ShapeScan:
    """Regexes over a haystack's shape, run once per haystack and shared by detectors.

    Each match's last closed group is named after the detector it is a candidate for,
    and the whole match is the candidate; detectors validate it against the real text.
    """

    def __init__(self, *patterns: bytes, lead: int = 0) -> None:
        self.patterns = tuple(re.compile(p) for p in patterns)
        self.lead = lead  # characters before the match that belong to the candidate

    def spans(self, hay: Haystack, group: str) -> list[Span]:
        found = hay.shared.get(self)
        if found is None:
            found = {}
            for pattern in self.patterns:
                for match in _overlapping(pattern, hay.shape):
                    span = (match.start() - self.lead, match.end())
                    found.setdefault(match.lastgroup or "", []).append(span)
            hay.shared[self] = found
        return found.get(group, [])


class Detector:
    """A named kind of sensitive value; `spans` yields where it occurs in a haystack's blob."""

    name: str
    kind: Kind

    def spans(self, hay: Haystack) -> Iterator[Span]:
        raise NotImplementedError

    def find(self, text: str) -> list[str]:
        """The values found in one string (for tests, explanations and policy checks)."""
        return [text[start:end] for start, end in self.spans(Haystack([text]))]


@dataclass(frozen=True, eq=False)
class PatternDetector(Detector):
    """Regexes whose matches (or a group of them) are candidates, then validated.

    `needles` are lower-case ASCII strings of which one must occur somewhere (any case)
    for the patterns to run at all; `shared` adds the candidates a `ShapeScan` found for
    this detector's name; `per_text` runs the patterns on each string alone, for user
    regexes that might match across the NUL separator.
    """

    name: str
    kind: Kind
    patterns: tuple[re.Pattern[str], ...] = ()
    accept: Accept | None = None
    value_groups: tuple[int, ...] = ()
    needles: tuple[bytes, ...] = ()
    shared: ShapeScan | None = None
    per_text: bool = False

    def spans(self, hay: Haystack) -> Iterator[Span]:
        if self.needles and not hay.has_any(self.needles):
            return
        if self.per_text:
            for index, text in enumerate(hay.texts):
                base = hay.start(index)
                yield from ((base + s, base + e) for s, e in self._candidates(text))
        else:
            yield from self._candidates(hay.blob)
            if self.shared is not None:
                yield from self._accepted(hay.blob, self.shared.spans(hay, self.name))

    def _candidates(self, text: str) -> Iterator[Span]:
        groups = self.value_groups
        for pattern in self.patterns:
            matches = _overlapping(pattern, text)
            spans = (_value_span(m, groups) for m in matches) if groups else map(_span, matches)
            yield from self._accepted(text, spans)

    def _accepted(self, text: str, spans: Iterable[Span]) -> Iterator[Span]:
        accept = self.accept
        for start, end in spans:
            if accept is not None:
                end = start + accept(text[start:end])
            if end > start:
                yield start, end


def _span(match: re.Match[str]) -> Span:
    return match.span()


def _overlapping[T: (str, bytes)](pattern: re.Pattern[T], text: T) -> Iterator[re.Match[T]]:
    """Every match, also those starting inside an earlier one.

    Greedy candidates are validated afterwards; "7946 0958 4111 1111 1111" first yields
    a 16-digit candidate that fails Luhn, and the card after it must still be found.
    """
    match = pattern.search(text)
    while match is not None:
        yield match
        match = pattern.search(text, match.start() + 1)


def _value_span(match: re.Match[str], groups: tuple[int, ...]) -> Span:
    for group in groups:
        if match.start(group) >= 0:
            return match.span(group)
    return match.span()


@dataclass(frozen=True, eq=False)
class KeywordValueDetector(Detector):
    """`name=value` secrets: the pattern is tried only where one of its keywords occurs.

    The pattern must begin with the keyword, so it is matched at each keyword found in
    the lower-cased blob (a fast substring search) instead of being scanned for.
    """

    name: str
    kind: Kind
    pattern: re.Pattern[str]
    keywords: tuple[bytes, ...]
    value_groups: tuple[int, ...]
    accept: Accept

    def spans(self, hay: Haystack) -> Iterator[Span]:
        lowered = hay.lowered
        starts: set[int] = set()
        for keyword in self.keywords:
            at = lowered.find(keyword)
            while at >= 0:
                starts.add(at)
                at = lowered.find(keyword, at + 1)
        for at in sorted(starts):
            match = self.pattern.match(hay.blob, at)
            if match is None:
                continue
            start, length = self._value(match)
            if length:
                yield start, start + length

    def _value(self, match: re.Match[str]) -> tuple[int, int]:
        """Where the value of a match starts, and its accepted length (0: rejected)."""
        start, end = _value_span(match, self.value_groups)
        return start, self.accept(match.string[start:end])


@dataclass(frozen=True, eq=False)
class NearKeywordDetector(Detector):
    """Values only sensitive in context: a keyword shortly before them or in their JSON key.

    Only strings whose key or text holds a keyword are scanned.
    """

    name: str
    kind: Kind
    pattern: re.Pattern[str]
    keywords: tuple[bytes, ...]
    accept: Accept

    def spans(self, hay: Haystack) -> Iterator[Span]:
        keyed = self._keyed_texts(hay)
        if not keyed and not hay.has_any(self.keywords):
            return
        lowered = hay.lowered
        candidates = set(keyed)
        for keyword in self.keywords:
            at = lowered.find(keyword)
            while at >= 0:
                candidates.add(hay.locate(at)[0])
                at = lowered.find(keyword, at + 1)
        for index in sorted(candidates):
            text = hay.texts[index]
            base = hay.start(index)
            for match in self.pattern.finditer(text):
                start, end = match.span()
                if not self.accept(match.group()):
                    continue
                if index in keyed or self._keyword_before(lowered, base, start):
                    yield base + start, base + end

    def _keyed_texts(self, hay: Haystack) -> set[int]:
        if not hay.keys:
            return set()
        keyed = {
            key
            for key in set(hay.keys)
            if any(k in key.lower().encode("latin-1", "replace") for k in self.keywords)
        }
        return {index for index, key in enumerate(hay.keys) if key in keyed} if keyed else set()

    def _keyword_before(self, lowered: bytes, base: int, start: int) -> bool:
        window = lowered[base + max(0, start - NEAR_WINDOW) : base + start]
        return any(keyword in window for keyword in self.keywords)


_KEY_SEPARATORS = re.compile(r"[\s_.\-]+")


@lru_cache(maxsize=4096)
def key_name(key: str) -> str:
    """A JSON key as names are compared: lower-cased, `_ - .` and spaces dropped, so
    `client_secret`, `Client-Secret` and `clientSecret` all read `clientsecret`.

    `lower`, not `casefold`: `casefold` also maps `ß` to `ss`, which the prefilter's
    case-insensitive RE2 triggers do not, so a key could match here yet not trigger there.
    """
    return _KEY_SEPARATORS.sub("", key).lower()


@dataclass(frozen=True, eq=False)
class KeyedDetector(Detector):
    """The whole value of a string whose JSON key names what it holds (`"ssn": "…"`).

    A key names it when its `key_name` ends with one of `names` (so `db_password` and
    `x-api-key` do) and with none of `unless` (`nextPageToken` is a cursor, not a secret).
    Keys are not in the haystack's text: this detector is never skipped by a prefilter
    trigger, and gates itself on the keys instead.
    """

    name: str
    kind: Kind
    names: tuple[str, ...]
    accept: Accept
    unless: tuple[str, ...] = ()

    def names_it(self, key: str) -> bool:
        normal = key_name(key)
        return normal.endswith(self.names) and not normal.endswith(self.unless or ("\x00",))

    def spans(self, hay: Haystack) -> Iterator[Span]:
        keys = hay.keys
        if not keys:
            return
        named = {key for key in set(keys) if key and self.names_it(key)}
        if not named:
            return
        for index, key in enumerate(keys):
            if key in named:
                length = self.accept(hay.texts[index])
                if length:
                    start = hay.start(index)
                    yield start, start + length


# --- validators ------------------------------------------------------------------------


_DOUBLED = str.maketrans("0123456789", "0246813579")  # digit -> digit sum of twice it


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum over a string of ASCII digits."""
    doubled = digits[-2::-2].translate(_DOUBLED)
    return (sum(map(int, digits[-1::-2])) + sum(map(int, doubled))) % 10 == 0


def mod97_valid(text: str) -> bool:
    """The ISO 7064 mod-97 check IBANs use: first four characters moved to the end."""
    compact = "".join(c for c in text.upper() if c.isascii() and c.isalnum())
    if len(compact) < 5:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _whole(check: Callable[[str], bool]) -> Accept:
    return lambda value: len(value) if check(value) else 0


def _digits(text: str) -> str:
    return "".join(c for c in text if "0" <= c <= "9")


_CARD_SEPARATORS = str.maketrans(dict.fromkeys(" -./"))
_CARD_BRAND = re.compile(r"4|5[0-5]|2[2-7]|3[04-9]|6")


def _card_length(candidate: str) -> int:
    """Accept a card number; a 19-digit grouped form may be a 16-digit card plus more."""
    digits = candidate.translate(_CARD_SEPARATORS)
    if 13 <= len(digits) <= 19 and _CARD_BRAND.match(digits) and luhn_valid(digits):
        return len(candidate)
    if len(digits) == 19 and not candidate.isdigit():
        return len(candidate) - 4 if luhn_valid(digits[:16]) and _CARD_BRAND.match(digits) else 0
    return 0


def _phone_length(candidate: str) -> int:
    """International: 8 to 15 digits (E.164), cut where the greedy pattern ran into the
    next number. North American: area code and exchange start with 2-9."""
    if candidate[0] != "+":
        digits = _digits(candidate)
        return len(candidate) if digits[0] >= "2" and digits[3] >= "2" else 0
    if 8 <= sum(map(str.isdigit, candidate)) <= 15:
        return len(candidate)
    best = total = 0
    for run in _DIGIT_RUN.finditer(candidate):
        total += run.end() - run.start()
        if total > 15:
            break
        best = run.end() if total >= 8 else 0
    return best


_DIGIT_RUN = re.compile(r"[0-9]+")


def _ssn_length(candidate: str) -> int:
    area, group, serial = candidate[:3], candidate[4:6], candidate[7:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return 0
    return len(candidate)


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip


def _iban_length(candidate: str) -> int:
    """Accept the IBAN at the start of a candidate, cut at its country's length.

    The pattern is greedy, so "ES91 2100 0418 4502 0005 1332 BIC" reaches into the
    next word; the country length says where the IBAN really ends. Lower case and
    dashes between groups are accepted (`de89-3704-…`).
    """
    expected = IBAN_LENGTHS.get(candidate[:2].upper())
    if expected is None:
        return 0
    seen = 0
    for end, char in enumerate(candidate, 1):
        if char not in " -":
            seen += 1
        if seen == expected:
            if end < len(candidate) and candidate[end] not in " -":
                return 0
            value = candidate[:end]
            return end if _grouped_by_four(value) and mod97_valid(value) else 0
    return 0


_IBAN_GROUPS = re.compile(r"[^ -]+(?:([ -])[^ -]{4})*(?:\1[^ -]{1,4})?")


def _grouped_by_four(value: str) -> bool:
    """Unseparated, or in groups of four after the first, all split by one separator
    (`DE89 3704 …`; `ad99-43b3-a1ab-e4da2bcc…` from a UUID is not)."""
    if " " not in value and "-" not in value:
        return True
    first = re.match(r"[^ -]+", value)
    return (
        first is not None and len(first.group()) == 4 and _IBAN_GROUPS.fullmatch(value) is not None
    )


def _mixed_case(value: str) -> bool:
    """Generated keys mix both cases and digits; slugs and words do not."""
    return not value.isupper() and not value.islower() and any(c.isdigit() for c in value)


def _aws_secret_shape(value: str) -> bool:
    """Random base64 has both cases and a digit or / or +; hex digests and words do not."""
    has_other = any(c.isdigit() or c in "/+" for c in value)
    return has_other and value != value.upper() and value != value.lower()


def _jwt_header_has_alg(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and isinstance(decoded.get("alg"), str)


_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
_PLACEHOLDERS = frozenset({"true", "false", "null", "none", "undefined", "redacted", "changeme"})


_AUTH_SCHEME = re.compile(r"(?i:bearer|basic|token|bot|digest)(?:[ \t]+|$)")


def _secret_value_length(value: str) -> int:
    """Accept a secret's value unless it is a placeholder, a number or already masked
    (after an auth scheme: `Bearer ${TOKEN}` and a lone `Bearer` are placeholders too)."""
    stripped = value.strip()
    scheme = _AUTH_SCHEME.match(stripped)
    if scheme is not None:
        stripped = stripped[scheme.end() :]
    if len(stripped) < 3 or stripped.lower() in _PLACEHOLDERS:
        return 0
    if stripped.startswith(("[REDACTED", "<", "${", "{{")) or set(stripped) <= {"*", "x", "X"}:
        return 0
    if _NUMBER.fullmatch(stripped):  # counts and sizes ("token_count=512") are not secrets
        return 0
    return len(value.rstrip())


def _luhn_text(value: str) -> bool:
    digits = _digits(value)
    return len(digits) >= 2 and luhn_valid(digits)


VALIDATORS: dict[str, Callable[[str], bool] | None] = {
    "luhn": _luhn_text,
    "mod97": mod97_valid,
    "none": None,
}


# --- built-in detectors ----------------------------------------------------------------
# Patterns start with a literal or narrow class, followed by a lookbehind for the
# boundary before it: a leading lookbehind would make the engine try every position.

_W = "A-Za-z0-9_"


@dataclass(frozen=True, eq=False)
class EmailDetector(Detector):
    """E-mail addresses, found from each '@' outwards (a scan for the local part is slow).

    Internationalised addresses are found whole: letters of any script in the local part
    (`josé.garcía@…`) and in domain labels (`bücher.example`), and punycode (`xn--…`)
    labels and top-level domains.
    """

    name: str = "email"
    kind: Kind = "email"

    _DOMAIN = re.compile(
        r"@((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[A-Za-z0-9-]{1,59}))"
        r"(?![\w-]|\.[^\W_])"
    )
    _LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")

    def spans(self, hay: Haystack) -> Iterator[Span]:
        blob, local = hay.blob, self._LOCAL
        for match in self._DOMAIN.finditer(blob):
            at = start = match.start()
            floor = max(0, at - 64)  # a local part has at most 64 characters
            while start > floor and (blob[start - 1] in local or _local_letter(blob[start - 1])):
                start -= 1
            while start < at and blob[start] == ".":
                start += 1
            if start == at or blob[at - 1] == "." or ".." in blob[start:at]:
                continue
            yield start, match.end()


def _local_letter(char: str) -> bool:
    """A letter, digit or combining mark of any script (RFC 6531 local parts)."""
    return not char.isascii() and unicodedata.category(char)[0] in "LMN"


@dataclass(frozen=True, eq=False)
class CardDetector(PatternDetector):
    """Card numbers; one glued to a letter (`x4111…`) only if that word is not hex digits,
    since hashes and trace ids (`cfed0b67…`) hold long digit runs that pass Luhn by chance."""

    def spans(self, hay: Haystack) -> Iterator[Span]:
        blob = hay.blob
        for start, end in super().spans(hay):
            if start and blob[start - 1].isalpha() and _in_hex_word(blob, start, end):
                continue
            yield start, end


_HEX = frozenset("0123456789abcdefABCDEF")


def _in_hex_word(blob: str, start: int, end: int) -> bool:
    """Whether the letters and digits around [start, end) are all hex digits."""
    before = start
    while before > 0 and blob[before - 1].isalnum():
        before -= 1
    after = end
    while after < len(blob) and blob[after].isalnum():
        after += 1
    return _HEX.issuperset(blob[before:start]) and _HEX.issuperset(blob[end:after])


def _pattern(name: str, kind: Kind, *patterns: str, **options: Any) -> PatternDetector:
    return PatternDetector(name, kind, tuple(re.compile(p) for p in patterns), **options)


# Over the shape: "0" is any digit, "A" any capital. A number starts at 3 digits not
# inside a word, number or dotted sequence; SSNs not after a dash; "415 555 0132" not
# after "+1 " (the international form covers those). A card number may follow a letter
# or a dash after a word (`card:x4111…`, `ref-4111…`; not a minus sign: `-4111…`) and be
# grouped by ' ', '-', '.' or '/'.
_NUMBERS = ShapeScan(
    rb"000(?:"
    rb"(?<![0.]000)(?<![^A0a-z]-000)(?<!^-000)"
    rb"(?P<credit_card>0{10,16}|0(?P<sep>[ ./-])0000(?P=sep)0000(?P=sep)0{1,4}(?:(?P=sep)000)?"
    rb"|0(?P<amex>[ ./-])000000(?P=amex)00000)(?![A0a-z_]|[-./]0)"
    rb"|(?<![A0a-z_.]000)(?:"
    rb"(?<!-000)(?P<us_ssn>(?P<ssn>[- ])00(?P=ssn)0000)(?![A0a-z_]|-0)"
    rb"|(?<!\+0[ .-]000)(?P<phone>[-. ]000[-. ]0000)(?![A0a-z_]|[-.]0)))",
    rb"\(000\)(?<![A0a-z_.(]\(000\))(?P<phone> ?000[-. ]0000)(?![A0a-z_]|[-.]0)",
)
# IBANs in capitals or lower case, grouped by spaces or dashes (not after a dash: the
# groups of a UUID are no IBAN).
_IBANS = ShapeScan(
    rb"00(?<=[Aa-z][Aa-z]00)(?<![-A0a-z_][Aa-z][Aa-z]00)(?P<iban>(?:[ -]?[A0a-z]{4}){2,7}"
    rb"(?:[ -]?[A0a-z]{1,3})?)(?![A0a-z_])",
    lead=2,
)

# The pattern starts with one of these; it is tried wherever one occurs (any case).
_GENERIC_KEYWORDS = tuple(
    word.encode()
    for word in "pass pwd secret api access private token credential authorization bearer".split()
)
_GENERIC_SECRET = re.compile(
    r"(?i:passw(?:or)?d|passphrase|pwd|secret|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|token|credential|authorization)"
    r"(?:s?(?=[^A-Za-z])|[_.-][A-Za-z0-9_.-]*|[A-Z][A-Za-z0-9_.-]*)"  # not "secretary"
    r"""\\?["']?[ \t]*[:=][ \t]*(?:(?i:bearer|basic|token|bot)[ \t]+)?"""
    r"""(?:\\?"([^"\\\x00\n]{1,256})|'([^'\x00\n]{1,256})'|([^\s"'\\<>,;&(){}\[\]\x00]{1,256}))"""
    r"|(?i:bearer)[ \t]+([A-Za-z0-9._~+/-]{8,512}=*)(?![A-Za-z0-9._~+/=-])"
)


def _bearer_length(value: str) -> int:
    """A credential after `Bearer `: opaque tokens hold a digit, or are long and mixed-case
    ("bearer instruments" in prose is neither)."""
    if not any(c.isdigit() for c in value) and (len(value) < 20 or not _mixed_case_only(value)):
        return 0
    return _secret_value_length(value)


def _mixed_case_only(value: str) -> bool:
    return not value.isupper() and not value.islower()


@dataclass(frozen=True, eq=False)
class GenericSecretDetector(KeywordValueDetector):
    """`password=…`, `"secret": "…"` in text, `Authorization: Bearer …` and a bare `Bearer …`."""

    def _value(self, match: re.Match[str]) -> tuple[int, int]:
        if match.start(4) < 0:
            return super()._value(match)
        start, end = match.span(4)
        return start, _bearer_length(match.string[start:end])


SECRET_KEY_NAMES = (
    "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token", "apikey",
    "authorization", "privatekey", "secretkey", "accesskey", "credential", "credentials",
    "cookie", "sessionid",
)  # fmt: skip
"""A JSON key names a secret when its `key_name` ends with one of these."""
NOT_SECRET_KEY_NAMES = ("pagetoken", "nexttoken", "continuationtoken", "synctoken")
"""Keys ending so are cursors that clients must read back, not secrets."""
SSN_KEY_NAMES = ("ssn", "socialsecuritynumber", "socialsecurityno", "socialsecurity")


def _keyed_secret_length(value: str) -> int:
    """The whole value under a secret's key, unless it is empty or a placeholder.

    Digits alone are a secret here (a PIN), unlike after `token_count=` in text.
    """
    stripped = value.strip()
    scheme = _AUTH_SCHEME.match(stripped)
    if scheme is not None and scheme.end() < len(stripped):
        stripped = stripped[scheme.end() :]
    if not stripped or stripped.lower() in _PLACEHOLDERS:
        return 0
    if stripped.startswith(("[REDACTED", "<", "${", "{{")) or set(stripped) <= {"*", "x", "X"}:
        return 0
    return len(value)


def _bare_ssn_length(value: str) -> int:
    """Nine digits (as text or a JSON number) in the SSA's issuable ranges."""
    if len(value) != 9 or not value.isdigit() or not value.isascii():
        return 0
    return 9 if _ssn_length(f"{value[:3]}-{value[3:5]}-{value[5:]}") else 0


@lru_cache(maxsize=64)
def secret_keys(extra: tuple[str, ...] = ()) -> KeyedDetector:
    """The `generic_secret` part that reads JSON keys, with a profile's extra names.

    One object per set of names, so plans that use it share their compiled prefilter.
    """
    names = tuple(dict.fromkeys((*SECRET_KEY_NAMES, *map(key_name, extra))))
    return KeyedDetector(
        "generic_secret", "secret", names, _keyed_secret_length, NOT_SECRET_KEY_NAMES
    )


KEYED_DETECTORS: dict[str, KeyedDetector] = {
    "generic_secret": secret_keys(),
    "us_ssn": KeyedDetector("us_ssn", "ssn", SSN_KEY_NAMES, _bare_ssn_length),
}
"""The part of a built-in detector that reads the JSON key a value sits under; a profile
naming the built-in gets it too."""


@dataclass(frozen=True, eq=False)
class NationalPhoneDetector(Detector):
    """Phone numbers written the national way (`020 7946 0958`, `01 23 45 67 89`).

    Candidates start with the trunk prefix 0 (`(0…)` too) and hold 9 to 13 digits in
    groups; one is a phone when the `phonenumbers` library reads it as a valid number of
    one of `regions` (ISO 3166 codes of countries whose national numbers begin with 0).
    """

    regions: tuple[str, ...]
    name: str = "phone"
    kind: Kind = "phone"

    _CANDIDATE = re.compile(
        r"(?:\((?<![\w+.,/:-]\()0[0-9]{1,4}\)|0(?<![\w+.,/:(-]0)[0-9]{1,4})"
        r"(?:[ .-]?[0-9]{2,4}){1,5}(?![0-9A-Za-z_]|[.-][0-9])"
    )

    def spans(self, hay: Haystack) -> Iterator[Span]:
        for match in self._CANDIDATE.finditer(hay.blob):
            if self._valid(match.group()):
                yield match.span()

    def _valid(self, candidate: str) -> bool:
        digits = _digits(candidate)
        if not 9 <= len(digits) <= 13 or candidate in _DIGIT_ALPHABET:
            return False
        for region in self.regions:
            try:
                number = phonenumbers.parse(candidate, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number_for_region(number, region):
                return True
        return False


def phone_regions_problem(region: str) -> str | None:
    """Why a region cannot be a `phone_regions` entry, or None when it can."""
    if region not in phonenumbers.SUPPORTED_REGIONS:
        return f"unknown region {region!r}; use an ISO 3166 code such as GB, FR or DE"
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.national_prefix != "0":
        return (
            f"national numbers of {region} do not start with a trunk 0, so they cannot be "
            "told apart from other numbers; they are found in international form (+…)"
        )
    return None


# "0123456789" unseparated (as code writes the digits) is not read as a French number.
_DIGIT_ALPHABET = "0123456789"


@lru_cache(maxsize=64)
def national_phones(regions: tuple[str, ...]) -> NationalPhoneDetector:
    """One detector per set of regions (a shared object keeps prefilters cached)."""
    return NationalPhoneDetector(regions)


BUILTIN_DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (
        EmailDetector(),
        _pattern(
            "phone",
            "phone",
            rf"\+(?<![{_W}+]\+)[1-9](?:[ .-]?(?:\([0-9]{{1,4}}\)|[0-9]{{1,6}})){{2,7}}(?![0-9])",
            accept=_phone_length,
            shared=_NUMBERS,
        ),
        CardDetector("credit_card", "card", accept=_card_length, shared=_NUMBERS),
        PatternDetector("iban", "iban", accept=_iban_length, shared=_IBANS),
        PatternDetector("us_ssn", "ssn", accept=_ssn_length, shared=_NUMBERS),
        _pattern(
            "aws_access_key", "secret", rf"A(?:KIA|SIA)(?<![{_W}]....)[A-Z0-9]{{16}}(?![{_W}])"
        ),
        NearKeywordDetector(
            "aws_secret_key",
            "secret",
            re.compile(r"[A-Za-z0-9/+](?<![A-Za-z0-9/+=].)[A-Za-z0-9/+]{39}(?![A-Za-z0-9/+=])"),
            (b"aws", b"secret"),
            _whole(_aws_secret_shape),
        ),
        _pattern(
            "github_token",
            "secret",
            rf"gh[pousr]_(?<![{_W}]gh._)[A-Za-z0-9]{{36,251}}(?![{_W}])",
            rf"github_pat_(?<![{_W}]github_pat_)[{_W}]{{22,244}}(?![{_W}])",
        ),
        _pattern(
            "slack_token", "secret", rf"xox[abprs]-(?<![{_W}]xox.-)[A-Za-z0-9-]{{10,250}}(?![{_W}])"
        ),
        _pattern(
            "stripe_key",
            "secret",
            rf"[rs](?<![{_W}][rs])k_(?:live|test)_[A-Za-z0-9]{{10,247}}(?![{_W}])",
            needles=(b"k_live_", b"k_test_"),
        ),
        _pattern(
            "openai_key",
            "secret",
            rf"sk-(?<![{_W}-]sk-)(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{{20,250}}(?![{_W}-])",
            accept=_whole(_mixed_case),
        ),
        _pattern(
            "anthropic_key",
            "secret",
            rf"sk-ant-(?<![{_W}-]sk-ant-)[A-Za-z0-9_-]{{20,250}}(?![{_W}-])",
        ),
        _pattern(
            "jwt",
            "secret",
            r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*){2}"
            r"(?:(?:\.[A-Za-z0-9_-]*){2})?(?![A-Za-z0-9_-])",
            accept=_whole(_jwt_header_has_alg),
        ),
        _pattern(
            "private_key",
            "secret",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[^\x00]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[^\x00]*)",
        ),
        GenericSecretDetector(
            "generic_secret",
            "secret",
            _GENERIC_SECRET,
            _GENERIC_KEYWORDS,
            (1, 2, 3),
            _secret_value_length,
        ),
        _pattern(
            "google_api_key", "secret", rf"AIza(?<![{_W}-]AIza)[A-Za-z0-9_-]{{35}}(?![{_W}-])"
        ),
        _pattern(
            "gitlab_token",
            "secret",
            rf"gl(?<![{_W}-]gl)(?:pat|dt|ft|soat|rt|imt|ptt|agent|oas|cbt)-"
            rf"[A-Za-z0-9_-]{{20,1024}}(?![{_W}-])",
            needles=(b"gl",),
        ),
        _pattern("npm_token", "secret", rf"npm_(?<![{_W}]npm_)[A-Za-z0-9]{{36}}(?![{_W}])"),
        _pattern(
            "huggingface_token",
            "secret",
            rf"hf_(?<![{_W}]hf_)[A-Za-z0-9]{{34}}(?![{_W}])",
            accept=_whole(_mixed_case_only),
        ),
        _pattern(
            "sendgrid_key",
            "secret",
            r"SG\.(?<![A-Za-z0-9_.-]SG\.)[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])",
        ),
        _pattern(
            "azure_storage_key",
            "secret",
            r"(?i:accountkey)[ \t]*=[ \t]*([A-Za-z0-9+/]{86}==)(?![A-Za-z0-9+/=])",
            value_groups=(1,),
            needles=(b"accountkey",),
        ),
    )
}


def custom_detector(name: str, regex: str, validator: str = "none") -> PatternDetector:
    """A detector from config: the whole match is the value, or its group named `value`.

    Raises re.error for a bad regex and ValueError for one that matches the empty string
    (it would mask nothing yet find everything) or an unknown validator.
    """
    pattern = re.compile(regex)
    if pattern.fullmatch("") is not None:
        raise ValueError("the regex matches the empty string")
    if validator not in VALIDATORS:
        raise ValueError(f"unknown validator {validator!r}; use one of {', '.join(VALIDATORS)}")
    check = VALIDATORS[validator]
    group = pattern.groupindex.get("value")
    return PatternDetector(
        name,
        "secret",
        (pattern,),
        accept=None if check is None else _whole(check),
        value_groups=(group,) if group else (),
        per_text=True,
    )


class Hit(NamedTuple):
    """One detected value: which text, where in it, and by which detector."""

    index: int  # type: ignore[assignment]  # the text's index; shadows tuple.index on purpose
    start: int
    end: int
    detector: Detector


def detect(hay: Haystack, detectors: Sequence[Detector]) -> list[Hit]:
    """Every value the detectors find in the haystack, in text coordinates (may overlap)."""
    hits: list[Hit] = []
    starts: list[int] = []
    for detector in detectors:
        for start, end in detector.spans(hay):
            starts = starts or hay.offsets()
            index = bisect_right(starts, start) - 1
            base = starts[index]
            hits.append(Hit(index, start - base, end - base, detector))
    return hits


# --- folding: escapes, compatibility forms and invisible characters ---------------------

_INVISIBLE = "\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63"
# Outside the BMP only these blocks have NFKC forms in ASCII that matter here:
# mathematical alphanumerics, enclosed alphanumerics, segmented digits.
_FOLD_RANGES = ((0x80, 0x10000), (0x1D400, 0x1D800), (0x1F100, 0x1F200), (0x1FBF0, 0x1FBFA))


def _fold_table() -> dict[str, str]:
    """Each character that folds for detection, and its ASCII form ("" for invisible ones)."""
    table = dict.fromkeys(_INVISIBLE, "")
    table.update(dict.fromkeys(_DASHES, "-"))
    for low, high in _FOLD_RANGES:
        for point in range(low, high):
            char = chr(point)
            if char in table or 0xD800 <= point <= 0xDFFF:
                continue
            normal = unicodedata.normalize("NFKC", char)
            if normal != char and normal.isascii():
                table[char] = normal
    return table


def _char_class(chars: Iterable[str]) -> str:
    points = sorted(map(ord, chars))
    ranges: list[list[int]] = []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(
        f"\\U{low:08x}" if low == high else f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges
    )


FOLDS = _fold_table()
NFKC_STABLE_FOLDS = _INVISIBLE + _DASHES
"""The characters of FOLDS that an NFKC-normalised text may still hold."""
# Every other character of FOLDS makes a text not NFKC-normalised, which C checks fast.
_FOLDABLE_IN_NFKC = re.compile(f"[{_char_class(NFKC_STABLE_FOLDS)}]")
# Text escapes (`\\u0040`, `\\x40`), URL encoding of ASCII (`%40`) and HTML character
# references (`&#64;`, `&#x40;`, `&commat;`).
_ESCAPE = re.compile(
    r"\\(?:u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2}))|%([0-7][0-9A-Fa-f])"
    r"|&(#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
)
_ESCAPE_LEADS = ("\\", "%", "&")
# Escapes and every non-ASCII character (then looked up in FOLDS): a class of all of
# FOLDS' characters would be several times slower to search.
_FOLD = re.compile(f"{_ESCAPE.pattern}|[^\\x00-\\x7f]")


class Folded(NamedTuple):
    """A text as detectors should read it, and where each changed piece came from.

    `pieces` are (start, end) in `text` and (start, end) in the original, in order;
    between pieces the two texts are the same, shifted.
    """

    text: str
    pieces: tuple[tuple[int, int, int, int], ...]

    def original(self, start: int, end: int) -> Span:
        """The original span holding the folded span [start, end) (end > start)."""
        return self._where(start, False), self._where(end - 1, True)

    def _where(self, position: int, after: bool) -> int:
        pieces = self.pieces
        index = bisect_right(pieces, (position, _BIG)) - 1
        if index < 0:
            return position + after
        start, end, original_start, original_end = pieces[index]
        if position < end:  # inside a replacement: all of what it replaced
            return original_end if after else original_start
        return original_end + position - end + after


_BIG = 1 << 62


@lru_cache(maxsize=4096)
def _unescape(code: str) -> str:
    char = chr(int(code, 16))
    if 0xD800 <= ord(char) <= 0xDFFF:  # half a surrogate pair: nothing a detector reads
        return ""
    return FOLDS.get(char, char)


@lru_cache(maxsize=4096)
def _unreference(reference: str) -> str | None:
    """The character an HTML character reference names (`#64`, `#x40`, `commat`), folded;
    None for a name HTML does not define or a number that is no character."""
    if reference[0] == "#":
        point = int(reference[2:], 16) if reference[1] in "xX" else int(reference[1:])
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            return None
        char = chr(point)
    else:
        char = html.entities.html5.get(reference + ";", "")
        if len(char) != 1:
            return None
    return FOLDS.get(char, char)


def _has_escape(text: str) -> bool:
    return any(lead in text for lead in _ESCAPE_LEADS) and _ESCAPE.search(text) is not None


def has_foldable_chars(text: str) -> bool:
    """Whether a text holds a character folding replaces (full-width forms, invisible ones...)."""
    if text.isascii():
        return False
    return not unicodedata.is_normalized("NFKC", text) or _FOLDABLE_IN_NFKC.search(text) is not None


def fold(text: str) -> Folded | None:
    """The folded form of a text for detection, or None when folding changes nothing."""
    if not _has_escape(text) and not has_foldable_chars(text):
        return None
    parts: list[str] = []
    pieces: list[tuple[int, int, int, int]] = []
    last = length = 0
    for match in _FOLD.finditer(text):
        code = match.group(1) or match.group(2) or match.group(3)
        if code is not None:
            replacement = _unescape(code)
        elif match.group(4) is not None:
            found = _unreference(match.group(4))
            if found is None:
                continue
            replacement = found
        else:
            found = FOLDS.get(match.group())
            if found is None:
                continue
            replacement = found
        start, end = match.span()
        parts.append(text[last:start])
        length += start - last
        pieces.append((length, length + len(replacement), start, end))
        parts.append(replacement)
        length += len(replacement)
        last = end
    if not pieces:
        return None
    parts.append(text[last:])
    return Folded("".join(parts), tuple(pieces))


def detect_folded(hay: Haystack, detectors: Sequence[Detector]) -> list[Hit]:
    """The hits in the folded form of each text that has one, as spans of the original text.

    Run besides `detect`, not instead: folding can also join what the original keeps
    apart (two cards either side of a zero-width space), so both are masked.
    """
    blob = hay.blob
    if blob.isascii() and not any(lead in blob for lead in _ESCAPE_LEADS):
        return []
    origins: list[int] = []
    views: list[Folded] = []
    texts = hay.texts
    if any(lead in blob for lead in _ESCAPE_LEADS):
        candidates: Iterable[int] = [
            i for i, t in enumerate(texts) if not t.isascii() or any(c in t for c in _ESCAPE_LEADS)
        ]
    else:  # the texts that are not ASCII, picked in C
        candidates = compress(count(), map(not_, map(str.isascii, texts)))
    for index in candidates:
        folded = fold(texts[index])
        if folded is not None:
            origins.append(index)
            views.append(folded)
    if not views:
        return []

    def keys() -> Sequence[str]:
        known = hay.keys
        return [known[i] for i in origins] if known else ()

    hits: list[Hit] = []
    for hit in detect(Haystack([v.text for v in views], keys), detectors):
        start, end = views[hit.index].original(hit.start, hit.end)
        hits.append(Hit(origins[hit.index], start, end, hit.detector))
    return hits


def resolve(
    names: Sequence[str], custom: Mapping[str, Detector] | None = None
) -> tuple[Detector, ...]:
    """Detectors by name (built-in or custom); KeyError names the unknown one and the valid ones."""
    known = {**BUILTIN_DETECTORS, **(custom or {})}
    out: list[Detector] = []
    for name in names:
        if name not in known:
            raise KeyError(f"unknown detector {name!r}; valid: {', '.join(sorted(known))}")
        out.append(known[name])
    return tuple(out)
