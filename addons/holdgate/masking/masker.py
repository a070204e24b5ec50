"""Masking profiles applied to JSON values and text: detectors, field rules and strategies.

A profile names detectors (see `holdgate.masking.detectors`) and JSONPath field rules, and a
strategy for what replaces a value:

- `redact`: `[REDACTED:email]` (field rules: `[REDACTED:$..password]`).
- `partial`: keeps what a person needs to recognise the value: `j***@example.com`,
  `**** **** **** 1111`, `***-**-6789`, a phone's last four digits, an IBAN's country
  and last four. Secrets, custom detectors and field rules have nothing safe to keep, so
  under `partial` they are redacted in full.
- `hash`: `email:7f3a9c21`, the first 8 hex digits of HMAC-SHA256 under the caller's key
  over the normalised value (case-folded e-mail, digits of a number), so one person is
  one pseudonym across responses without the value being recoverable.

Where profiles overlap, the strongest strategy wins (redact, then hash, then partial),
and overlapping hits in a string are masked as one span.

`mask_json` walks dicts and lists and masks every string, every key and every integral
number long enough to be a card (13+ digits; any integer when custom detectors are in
effect): a masked number becomes a string. A masked key is renamed in place; where two
keys of one object would mask to the same name, the later ones get `#2`, `#3`, ... so no
entry is dropped. Values disguised with escapes, full-width forms or zero-width
characters are found through them and masked over their original span (see
`holdgate.masking.detectors.fold`). A string that is
itself a JSON object or array (MCP tool results carry JSON as `content[].text`) is
parsed, masked as a document of its own (field rules apply inside it) and re-serialised
compactly in key order, but only if something in it changed: otherwise the original
string is kept byte for byte. Text with duplicate keys is masked as text instead, since a
parse would hide the values it drops. The input is never modified: changed containers
are copied on the way up.

Findings say what was masked without saying what it was: counts per detector name and
per `path:<jsonpath>`.

`StreamMasker` masks the messages of one event stream in order and keeps the last
`LOOK_BEHIND` characters of clear text per JSON key, so a value split across two messages
("alice@exa" | "mple.com") is caught when the second one is masked: the part still to be
sent is replaced by the whole value's mask and counted as `<detector>(split)`. The part
already sent cannot be recalled.

Exceptions:
    MaskingError     -- a value could not be masked safely; the caller must refuse it
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, cast

import orjson
from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext.filter import Filter
from jsonpath_ng.ext.parser import parse as parse_jsonpath
from jsonpath_ng.jsonpath import Child, Descendants, Fields, Index, Root, Slice, This, Wildcard

from holdgate.configfile import (
    ConfigError,
    Node,
    Problems,
    collected,
    declared_names,
    keys_then,
)
from holdgate.masking.detectors import (
    BUILTIN_DETECTORS,
    KEYED_DETECTORS,
    VALIDATORS,
    Detector,
    Haystack,
    KeyedDetector,
    NationalPhoneDetector,
    custom_detector,
    detect,
    detect_folded,
    fold,
    key_name,
    national_phones,
    phone_regions_problem,
    secret_keys,
)
from holdgate.masking.prefilter import Prefilter, prefilter_for
from holdgate.policy.rules import Globs
from holdgate.protocol.jsonrpc import BodyError, loads_strict_text

Strategy = Literal["redact", "partial", "hash"]
STRATEGIES: tuple[Strategy, ...] = ("redact", "partial", "hash")
_STRENGTH: dict[Strategy, int] = {"partial": 0, "hash": 1, "redact": 2}

PROFILE_KEYS = {
    "name", "detectors", "paths", "strategy", "upstreams", "tools", "exempt_groups",
    "secret_keys", "phone_regions",
}  # fmt: skip
DETECTOR_KEYS = {"name", "regex", "validator"}

Container = dict[str, Any] | list[Any]
Key = str | int

CARD_NUMBER_FLOOR = 10**12  # the shortest card has 13 digits; no other built-in finds bare digits
NUMBER_CEILING = 10**40  # longer numbers are no one's identifier (and str() of huge ints raises)
EXACT_FLOAT = 2**53  # a float beyond this is not the number it was written as
LOOK_BEHIND = 256  # characters of a stream's text kept per JSON key to catch split values
LOOK_BEHIND_KEYS = 16
PROFILE_CACHE = 1024  # (upstream, tool, groups) answers kept per policy
KEY_CACHE = 4096  # per plan, answers for JSON keys (which come from upstreams)


class MaskingError(Exception):
    """A value could not be masked safely; the caller must refuse it, not pass it on."""


# --- profiles ----------------------------------------------------------------------------

_ADDRESSABLE = (Root, This, Child, Descendants, Fields, Index, Slice, Wildcard, Filter)


@dataclass(frozen=True)
class FieldRule:
    """A JSONPath whose matches are masked whole; parsed once, at config load.

    `$..name` rules (the common case) are matched by key during the walk; others are
    evaluated with jsonpath-ng once per document.
    """

    path: str
    expr: JSONPath
    names: frozenset[str] | None = None

    @classmethod
    def parse(cls, path: str) -> FieldRule:
        """Raises ValueError naming the problem for a bad or unaddressable path."""
        try:
            expr = parse_jsonpath(path)
        except (JSONPathError, ValueError, TypeError) as exc:
            raise ValueError(f"invalid JSONPath {path!r}: {exc}") from None
        if not _addressable(expr):
            raise ValueError(
                f"JSONPath {path!r} computes a value instead of selecting one; "
                "use field names, indexes, wildcards, `..` and filters"
            )
        names = None
        if type(expr) is Descendants and type(expr.left) is Root and type(expr.right) is Fields:
            names = frozenset(expr.right.fields)
        return cls(path, expr, names)


def _addressable(expr: JSONPath) -> bool:
    if isinstance(expr, Child | Descendants):
        return _addressable(expr.left) and _addressable(expr.right)
    return type(expr) in _ADDRESSABLE


@dataclass(frozen=True)
class Profile:
    """Detectors and field rules masked with one strategy, optionally scoped."""

    name: str
    detectors: tuple[Detector, ...] = ()
    paths: tuple[FieldRule, ...] = ()
    strategy: Strategy = "redact"
    upstreams: tuple[str, ...] = ()  # empty: every upstream
    tools: Globs | None = None  # None: every response; else only these tools' results
    exempt_groups: tuple[str, ...] = ()
    secret_keys: tuple[str, ...] = ()  # more key names whose values generic_secret masks
    phone_regions: tuple[str, ...] = ()  # regions whose national phone formats are found

    def applies_to(self, upstream: str, tool: str | None) -> bool:
        if self.upstreams and upstream not in self.upstreams:
            return False
        return self.tools is None or self.tools.match(tool)

    @cached_property
    def detectors_in_effect(self) -> tuple[Detector, ...]:
        """The detectors, and the parts of built-ins that read JSON keys or national
        phone formats (which come with the built-in of the same name)."""
        out = list(self.detectors)
        for detector in self.detectors:
            if BUILTIN_DETECTORS.get(detector.name) is not detector:
                continue
            if detector.name == "generic_secret":
                out.append(secret_keys(self.secret_keys))
            elif detector.name in KEYED_DETECTORS:
                out.append(KEYED_DETECTORS[detector.name])
            elif detector.name == "phone" and self.phone_regions:
                out.append(national_phones(self.phone_regions))
        return tuple(out)


@dataclass(frozen=True)
class _Plan:
    """Profiles in effect flattened for the walk: one strategy per detector and path."""

    detectors: tuple[Detector, ...]
    strategies: dict[str, Strategy]
    names: dict[str, tuple[FieldRule, Strategy]]
    trees: tuple[tuple[FieldRule, Strategy], ...]
    hash_key: bytes | None
    number_floor: int = CARD_NUMBER_FLOOR  # numbers below this are not scanned
    _rules: dict[str, tuple[FieldRule, Strategy] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    _keyed: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def prefilter(self) -> Prefilter:
        return prefilter_for(self.detectors, frozenset(self.names))

    @cached_property
    def keyed(self) -> tuple[KeyedDetector, ...]:
        return tuple(d for d in self.detectors if isinstance(d, KeyedDetector))

    def rule_for(self, key: str) -> tuple[FieldRule, Strategy] | None:
        """The `$..name` rule for a JSON key: names match keys case-insensitively
        (`$..password` masks `Password` too), since upstreams spell keys as they like."""
        rules = self._rules
        if key in rules:
            return rules[key]
        if len(rules) >= KEY_CACHE:
            rules.clear()
        found = rules[key] = self.names.get(key.lower())  # as RE2's (?i) reads it
        return found

    def reads_key(self, key: str) -> bool:
        """Whether a keyed detector masks what sits under this key (numbers included)."""
        known = self._keyed.get(key)
        if known is None:
            if len(self._keyed) >= KEY_CACHE:
                self._keyed.clear()
            known = self._keyed[key] = any(d.names_it(key) for d in self.keyed)
        return known


def _stronger(a: Strategy, b: Strategy) -> Strategy:
    return b if _STRENGTH[b] > _STRENGTH[a] else a


@dataclass(frozen=True)
class ProfilesInEffect:
    """The profiles that apply to one response, and those exempted (with why) for the audit."""

    profiles: tuple[Profile, ...] = ()
    exemptions: tuple[str, ...] = ()
    hash_key: bytes | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)

    @cached_property
    def _plan(self) -> _Plan:
        detectors: dict[int, Detector] = {}
        strategies: dict[str, Strategy] = {}
        rules: dict[str, tuple[FieldRule, Strategy]] = {}
        for profile in self.profiles:
            for detector in profile.detectors_in_effect:
                detectors.setdefault(id(detector), detector)
                earlier = strategies.get(detector.name, profile.strategy)
                strategies[detector.name] = _stronger(earlier, profile.strategy)
            for rule in profile.paths:
                ruled = rules.get(rule.path)
                strategy = profile.strategy if ruled is None else ruled[1]
                rules[rule.path] = (rule, _stronger(strategy, profile.strategy))
        names: dict[str, tuple[FieldRule, Strategy]] = {}
        for rule, strategy in rules.values():
            for name in rule.names or ():
                name = name.lower()
                known = names.get(name)
                if known is None or _STRENGTH[strategy] > _STRENGTH[known[1]]:
                    names[name] = (rule, strategy)
        trees = tuple(entry for entry in rules.values() if entry[0].names is None)
        floor = _number_floor(detectors.values())
        return _Plan(tuple(detectors.values()), strategies, names, trees, self.hash_key, floor)


@dataclass(frozen=True, eq=False)
class MaskingPolicy:
    """All masking profiles of a config, the custom detectors and the key for `hash`."""

    profiles: tuple[Profile, ...] = ()
    hash_key: bytes | None = None
    custom_detectors: Mapping[str, Detector] = field(default_factory=dict)
    _effects: dict[tuple[tuple[str, ...], tuple[str, ...]], ProfilesInEffect] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _by_call: dict[tuple[str, str | None, tuple[str, ...]], ProfilesInEffect] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for profile in self.profiles:
            if profile.strategy == "hash" and not self.hash_key:
                raise ValueError(f"profile {profile.name!r} uses strategy hash but no key is set")

    def profiles_for(
        self, upstream: str, tool: str | None, groups: tuple[str, ...]
    ) -> ProfilesInEffect:
        """Profiles that mask this response; an exempt caller's are listed with the reason.

        `tool` is None for anything but a tools/call result; profiles limited to tools
        then do not apply. Answers are cached per (upstream, tool, groups): the policy
        never changes (a reload makes a new one), and the cache is bounded, since tool names
        come from clients.
        """
        call = (upstream, tool, tuple(groups))
        known = self._by_call.get(call)
        if known is not None:
            return known
        applied: list[Profile] = []
        exemptions: list[str] = []
        for profile in self.profiles:
            if not profile.applies_to(upstream, tool):
                continue
            exempt = next((g for g in groups if g in profile.exempt_groups), None)
            if exempt is None:
                applied.append(profile)
            else:
                exemptions.append(f"{profile.name}: exempt for group {exempt}")
        cache_key = (tuple(p.name for p in applied), tuple(exemptions))
        effect = self._effects.get(cache_key)
        if effect is None:
            effect = ProfilesInEffect(tuple(applied), tuple(exemptions), self.hash_key)
            self._effects[cache_key] = effect
        if len(self._by_call) >= PROFILE_CACHE:
            self._by_call.clear()
        self._by_call[call] = effect
        return effect


# --- applying ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskOutcome:
    """The masked value and what was masked: counts per detector or `path:…`, never values."""

    value: Any
    findings: dict[str, int]

    @property
    def changed(self) -> bool:
        return bool(self.findings)


def mask_json(value: Any, effect: ProfilesInEffect) -> MaskOutcome:
    """Mask a JSON value (dicts, lists, strings, numbers...) with the profiles in effect.

    Raises MaskingError when it cannot be done safely: nesting too deep to walk, embedded
    JSON with a number JSON cannot carry, or `hash` without a key.
    """
    plan = effect._plan
    if not plan.detectors and not plan.names and not plan.trees:
        return MaskOutcome(value, {})
    walk = _Walk(plan, value)
    try:
        walk.collect()
        return walk.finish()
    except RecursionError:
        raise MaskingError("the value is nested too deeply to mask") from None


def mask_text(text: str, effect: ProfilesInEffect) -> MaskOutcome:
    """Mask one string (e.g. an SSE event that is not JSON); JSON text is masked as a document."""
    return mask_json(text, effect)


class StreamMasker:
    """Masks the messages of one event stream in order, catching values split between two.

    The last `window` characters of clear text are kept per JSON key (the nearest key a
    string sits under; `keys` of them at most, least recent dropped): when a message comes,
    the first string under each such key is scanned once more behind its key's tail. A
    value that starts in the tail and ends in the new string was split; the part still to
    be sent is replaced by the mask of the whole value and counted `<detector>(split)`.
    A value the tail already held whole was masked when it was sent, and is not split.
    The part sent before cannot be recalled, and a value split into pieces longer than
    the window, or under two different keys, is not caught.
    """

    def __init__(self, window: int = LOOK_BEHIND, keys: int = LOOK_BEHIND_KEYS) -> None:
        self.window = window
        self.keys = keys
        self._tails: dict[str, str] = {}

    def mask(self, value: Any, effect: ProfilesInEffect) -> MaskOutcome:
        """`mask_json` for the next message of the stream. Raises MaskingError as it does."""
        plan = effect._plan
        if not plan.detectors:
            return mask_json(value, effect)
        walk = _Walk(plan, value, stream=True)
        try:
            walk.collect()
            outcome = walk.finish(self._split(walk))
        except RecursionError:
            raise MaskingError("the value is nested too deeply to mask") from None
        self._remember(walk)
        return outcome

    def _strings(self, walk: _Walk) -> Iterable[tuple[int, str]]:
        """(index, nearest key) of each string value of a walk (not keys, not numbers)."""
        keys = set(walk.key_texts.values())
        numbers = walk.numbers
        for index, slot in enumerate(walk.slots):
            if index not in keys and index not in numbers:
                yield index, slot[3]

    def _split(self, walk: _Walk) -> dict[int, list[_Found]]:
        tails = self._tails
        if not tails:
            return {}
        firsts: dict[str, int] = {}
        for index, context in self._strings(walk):
            if context in tails and context not in firsts:
                firsts[context] = index
        if not firsts:
            return {}
        pairs = list(firsts.items())
        texts: list[str] = []
        for context, index in pairs:
            tail = tails[context]
            texts += (tail, tail + walk.texts[index])
        contexts = [context for context, _ in pairs for _ in (0, 1)]
        found = _hits(Haystack(texts, lambda: contexts), walk.plan)
        out: dict[int, list[_Found]] = {}
        for pair, (_, index) in enumerate(pairs):
            cut = len(texts[2 * pair])
            in_tail = {(h[2].name, h[0]) for h in found.get(2 * pair, ())}
            joined = texts[2 * pair + 1]
            for start, end, detector, _ in found.get(2 * pair + 1, ()):
                if start < cut < end and (detector.name, start) not in in_tail:
                    out.setdefault(index, []).append((0, end - cut, detector, joined[start:end]))
        return out

    def _remember(self, walk: _Walk) -> None:
        tails, window = self._tails, self.window
        continued: set[str] = set()
        for index, context in self._strings(walk):
            end = walk.texts[index][-window:]
            earlier = tails.pop(context, "")
            if context not in continued:  # the first string under a key continues its tail
                continued.add(context)
                end = (earlier + end)[-window:]
            tails[context] = end
        while len(tails) > self.keys:
            tails.pop(next(iter(tails)))


def scan(value: Any, detectors: Sequence[Detector]) -> dict[str, int]:
    """How many values each detector finds anywhere in a JSON value (for policy conditions)."""
    if not detectors:
        return {}
    plan = _Plan(tuple(detectors), {}, {}, (), None, _number_floor(detectors))
    walk = _Walk(plan, value)
    try:
        walk.collect()
    except RecursionError:
        raise MaskingError("the value is nested too deeply to scan") from None
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for index, found in walk.found().items():
        for start, end, detector, _ in found:
            spans.setdefault((detector.name, index), []).append((start, end))
    counts: Counter[str] = Counter()
    for (name, _), ranges in spans.items():
        ranges.sort()
        end = -1
        for start, stop in ranges:
            if start >= end:
                counts[name] += 1
            end = max(end, stop)
    return dict(counts)


_WHITESPACE = " \t\r\n"
_JSON_LEAD = frozenset("{[" + _WHITESPACE)


def _parse_embedded(text: str) -> Container | None:
    """The object or array a string holds as JSON text, or None if it is just text."""
    first = text[0]
    last = text[-1]
    if first in _WHITESPACE or last in _WHITESPACE:
        stripped = text.strip()
        if not stripped:
            return None
        first, last = stripped[0], stripped[-1]
    if not (first == "{" and last == "}" or first == "[" and last == "]"):
        return None
    try:
        value = loads_strict_text(text)
    except BodyError:
        return None
    return value if type(value) is dict or type(value) is list else None


def _serialise(value: Container) -> str:
    """Compact JSON text in key order, as `json.dumps` writes it (floats may be written
    shorter: `1e-5`, the same number). The documents come from the strict parser, so they
    hold no NaN or infinity (which orjson would write as null); ints past 64 bits and lone
    surrogates, which orjson refuses, go the json way."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        return _serialise_json(value)


def _serialise_json(value: Container) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise MaskingError("embedded JSON holds a number JSON cannot carry") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text


@dataclass(eq=False)
class _Doc:
    """A JSON document found inside a string, and where that string sits."""

    value: Container
    container: Container
    key: Key
    parent: int  # the document holding the string; -1 for the caller's value


_Found = tuple[int, int, Detector, str | None]
"""A span of one text to mask: start, end, detector, and the whole value when the text
holds only part of it (the rest went out in an earlier message of the stream), else None.
A plain tuple: there is one per value found, on the hot path."""


def _hits(hay: Haystack, plan: _Plan) -> dict[int, list[_Found]]:
    """Every value found in each text of a haystack, also through folding, by text index.

    Detectors whose trigger the prefilter does not see in the plain texts are not run on
    them; folded texts (rare) are scanned by all.
    """
    out: dict[int, list[_Found]] = {}
    plain = plan.prefilter.present(hay.blob)
    for hits in (detect(hay, plain), detect_folded(hay, plan.detectors)):
        for index, start, end, detector in hits:
            out.setdefault(index, []).append((start, end, detector, None))
    return out


def _number_floor(detectors: Iterable[Detector]) -> int:
    """Numbers below the floor are not scanned: no built-in finds short bare digits in
    text (keyed detectors get the numbers under their keys, see `_Plan.reads_key`)."""
    builtin = all(
        BUILTIN_DETECTORS.get(d.name) is d or isinstance(d, KeyedDetector | NationalPhoneDetector)
        for d in detectors
    )
    return CARD_NUMBER_FLOOR if builtin else 0


def _shown(value: str) -> str:
    """A found value as its strategy should read it: escapes and look-alikes folded."""
    if value.isascii() and "\\" not in value and "%" not in value and "&" not in value:
        return value
    folded = fold(value)
    return value if folded is None else folded.text


class _Walk:
    """One pass: collect every string (noting where it sits), detect once, patch what changed.

    Containers of the caller's value are copied on first change (copy-on-write up to the
    root); documents parsed from strings are ours and patched in place. Keys are collected
    once per distinct key; a masked key is renamed in every object that has it.
    """

    def __init__(self, plan: _Plan, value: Any, *, stream: bool = False) -> None:
        self.plan = plan
        # A stream keeps the tail of every string it walks, so it reads clean JSON too.
        self.prefilter = None if stream or plan.trees else plan.prefilter
        self.root: list[Any] = [value]
        self.texts: list[str] = []
        self.slots: list[tuple[Container, Key, int, str]] = []  # where, document, nearest key
        self.key_texts: dict[str, int] = {}  # each distinct key: its index in `texts`
        self.numbers: set[int] = set()  # indexes in `texts` that were numbers
        self.objects: list[list[dict[str, Any]]] = [[]]  # per document (+1), its objects
        self.docs: list[_Doc] = []
        self.parents: dict[int, list[tuple[Container, Key]]] = {}
        self.patches: list[tuple[Container, Key, int, str]] = []
        self.findings: Counter[str] = Counter()
        self.targets: dict[tuple[int, Key], tuple[FieldRule, Strategy]] = {}
        self.copies: dict[int, Container] = {}
        self.dirty: set[int] = set()

    def collect(self) -> None:
        self.targets = self._tree_targets(self.root[0])
        root_rule = self.targets.pop((0, 0), None)
        if root_rule is not None:
            self._path_hit(self.root, 0, -1, self.root[0], root_rule)
        else:
            self._collect(self.root, "", -1)

    def _collect(self, node: Container, context: str, doc: int) -> None:
        """Note every string under `node` and where it sits; `context` is the nearest key."""
        is_dict = type(node) is dict
        plan = self.plan
        rule_for = plan.rule_for if is_dict and plan.names else None
        reads_key = plan.reads_key if plan.keyed else None
        targets, parents = self.targets, self.parents
        texts, key_texts, floor = self.texts, self.key_texts, self.plan.number_floor
        add_text, add_slot = texts.append, self.slots.append
        items: Iterable[tuple[Key, Any]]
        if isinstance(node, dict):
            self.objects[doc + 1].append(node)
            if not key_texts.keys() >= node.keys():  # a new key (a C-speed test per object)
                for name in node:
                    if name not in key_texts and type(name) is str:
                        key_texts[name] = len(texts)
                        add_text(name)
                        add_slot((node, name, doc, ""))
            items = node.items()
        else:
            items = enumerate(node)
        for key, value in items:
            if is_dict:
                context = str(key)
            rule = rule_for(context) if rule_for else None
            if targets:
                other = targets.get((id(node), key))
                if other is not None and (rule is None or _STRENGTH[other[1]] > _STRENGTH[rule[1]]):
                    rule = other
            if rule is not None:
                self._path_hit(node, key, doc, value, rule)
                continue
            kind = type(value)
            if kind is str:
                if (
                    not value
                    or value[0] not in _JSON_LEAD
                    or not self._embedded(value, node, key, context, doc)
                ):
                    add_text(value)
                    add_slot((node, key, doc, context))
            elif kind is dict or kind is list:
                if doc < 0:
                    parents.setdefault(id(value), []).append((node, key))
                self._collect(value, context, doc)
            elif kind is int:
                if (
                    not -floor < value < floor or (reads_key is not None and reads_key(context))
                ) and -NUMBER_CEILING < value < NUMBER_CEILING:
                    self.numbers.add(len(texts))
                    add_text(str(value))
                    add_slot((node, key, doc, context))
            elif kind is float:
                if -floor < value < floor:
                    continue
                if -EXACT_FLOAT <= value <= EXACT_FLOAT:
                    if value.is_integer():
                        self.numbers.add(len(texts))
                        add_text(str(int(value)))
                        add_slot((node, key, doc, context))

    def haystack(self) -> Haystack:
        return Haystack(self.texts, lambda: [slot[3] for slot in self.slots])

    def _embedded(self, text: str, container: Container, key: Key, context: str, doc: int) -> bool:
        """Walk the JSON document a string holds, if it holds one (or skip one that holds
        nothing to mask: kept as it is either way)."""
        if self.prefilter is not None and self.prefilter.clean_json(text, context):
            return True
        value = _parse_embedded(text)
        if value is None:
            return False
        outer_targets = self.targets
        self.targets = self._tree_targets(value)
        root_rule = self.targets.pop((0, 0), None)
        if root_rule is not None:
            self._path_hit(container, key, doc, text, root_rule)
        else:
            self.docs.append(_Doc(value, container, key, doc))
            self.objects.append([])
            self._collect(value, context, len(self.docs) - 1)
        self.targets = outer_targets
        return True

    def _tree_targets(self, value: Any) -> dict[tuple[int, Key], tuple[FieldRule, Strategy]]:
        """Where the general JSONPath rules select in this document: (id(parent), key).

        The document root itself is reported as (0, 0).
        """
        targets: dict[tuple[int, Key], tuple[FieldRule, Strategy]] = {}
        for rule, strategy in self.plan.trees:
            for match in rule.expr.find(value):
                target = _target_of(match, rule)
                known = targets.get(target)
                if known is None or _STRENGTH[strategy] > _STRENGTH[known[1]]:
                    targets[target] = (rule, strategy)
        return targets

    def _path_hit(
        self, container: Container, key: Key, doc: int, value: Any, rule: tuple[FieldRule, Strategy]
    ) -> None:
        field_rule, strategy = rule
        replacement = _mask_whole(value, field_rule.path, strategy, self.plan.hash_key)
        self.patches.append((container, key, doc, replacement))
        self.findings[f"path:{field_rule.path}"] += 1

    def found(self) -> dict[int, list[_Found]]:
        if not self.texts or not self.plan.detectors:
            return {}
        return _hits(self.haystack(), self.plan)

    def finish(self, split: Mapping[int, list[_Found]] | None = None) -> MaskOutcome:
        """Mask what was found (and the `split` spans a stream adds), then patch it all in."""
        found = self.found()
        for index, spans in (split or {}).items():
            found.setdefault(index, []).extend(spans)
        key_indexes = {index: key for key, index in self.key_texts.items()} if found else {}
        renames: dict[str, tuple[str, Counter[str]]] = {}
        for index, spans in found.items():
            key = key_indexes.get(index)
            if key is not None:
                counts: Counter[str] = Counter()
                renames[key] = (self._mask_string(key, spans, counts), counts)
                continue
            container, slot_key, doc, _ = self.slots[index]
            masked = self._mask_string(self.texts[index], spans, self.findings)
            self._assign(container, slot_key, doc, masked)
        for container, slot, doc, replacement in self.patches:
            self._assign(container, slot, doc, replacement)
        for index in range(len(self.docs) - 1, -1, -1):  # inner documents first
            if renames:
                self._rename_keys(index, renames)
            if index in self.dirty:
                embedded = self.docs[index]
                text = _serialise(embedded.value)
                self._assign(embedded.container, embedded.key, embedded.parent, text)
        if renames:
            self._rename_keys(-1, renames)
        return MaskOutcome(self.root[0], dict(self.findings))

    def _rename_keys(self, doc: int, renames: Mapping[str, tuple[str, Counter[str]]]) -> None:
        """Rename masked keys in the objects of one document, keeping their order.

        Names that would clash (two e-mails redacted alike, or a key already named so)
        get `#2`, `#3`, ...: an entry is never dropped.
        """
        done: set[int] = set()
        for node in self.objects[doc + 1]:
            if id(node) in done or not any(key in renames for key in node):
                continue
            done.add(id(node))
            target: dict[str, Any] = node if doc >= 0 else self._writable(node)  # type: ignore[assignment]
            items = list(target.items())
            taken = {key for key, _ in items if key not in renames}
            renamed: dict[str, Any] = {}
            for key, value in items:
                entry = renames.get(key)
                if entry is None:
                    renamed[key] = value
                    continue
                masked, counts = entry
                self.findings.update(counts)
                name, suffix = masked, 2
                while name in taken or name in renamed:
                    name, suffix = f"{masked}#{suffix}", suffix + 1
                renamed[name] = value
            target.clear()
            target.update(renamed)
            if doc >= 0:
                self.dirty.add(doc)

    def _assign(self, container: Container, key: Key, doc: int, value: str) -> None:
        if doc >= 0:
            container[key] = value  # type: ignore[index]
            self.dirty.add(doc)
        else:
            self._writable(container)[key] = value  # type: ignore[index]

    def _writable(self, container: Container) -> Container:
        """The copy of a caller's container, made (and linked into copied parents) once."""
        if container is self.root:
            return container
        copy = self.copies.get(id(container))
        if copy is None:
            copy = container.copy()
            self.copies[id(container)] = copy
            for parent, key in self.parents[id(container)]:
                self._writable(parent)[key] = copy  # type: ignore[index]
        return copy

    def _mask_string(self, text: str, hits: list[_Found], findings: Counter[str]) -> str:
        """Replace each run of overlapping hits; the longest hit names it."""
        strategies, key = self.plan.strategies, self.plan.hash_key
        if len(hits) == 1:
            start, end, detector, whole = hits[0]
            findings[detector.name if whole is None else f"{detector.name}(split)"] += 1
            value = _shown(text[start:end] if whole is None else whole)
            masked = _mask_value(value, detector, strategies[detector.name], key)
            return text[:start] + masked + text[end:]
        hits.sort(key=lambda h: (h[0], -h[1]))
        out: list[str] = []
        position = 0
        index = 0
        while index < len(hits):
            label = hits[index]
            start, end = label[0], label[1]
            strategy = strategies[label[2].name]
            index += 1
            while index < len(hits) and hits[index][0] < end:
                other = hits[index]
                if other[1] - other[0] > label[1] - label[0]:
                    label = other
                strategy = _stronger(strategy, strategies[other[2].name])
                end = max(end, other[1])
                index += 1
            detector, whole = label[2], label[3]
            name = detector.name
            if whole is None:
                value = _shown(text[start:end])
            else:
                value, name = _shown(whole), f"{name}(split)"
            out.append(text[position:start])
            out.append(_mask_value(value, detector, strategy, key))
            findings[name] += 1
            position = end
        out.append(text[position:])
        return "".join(out)


def _target_of(match: Any, rule: FieldRule) -> tuple[int, Key]:
    """The (id(parent), key) a jsonpath-ng match addresses."""
    if match.context is None:
        return (0, 0)
    parent = match.context.value
    path = match.path
    if type(path) is Fields and len(path.fields) == 1 and type(parent) is dict:
        return (id(parent), path.fields[0])
    if type(path) is Index and len(path.indices) == 1 and type(parent) is list:
        return (id(parent), path.indices[0] % len(parent))
    raise MaskingError(f"JSONPath {rule.path!r} selected something that cannot be masked")


# --- strategies -------------------------------------------------------------------------


def _pseudonym(key: bytes | None, text: str) -> str:
    if not key:
        raise MaskingError("strategy hash needs a key")
    data = text.encode("utf-8", "surrogatepass")
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:8]


def _mask_value(value: str, detector: Detector, strategy: Strategy, key: bytes | None) -> str:
    kind = detector.kind
    if strategy == "hash":
        if kind == "email":
            normal = value.lower()
        elif kind == "iban":
            normal = "".join(c for c in value if c.isalnum()).upper()
        elif kind == "secret":
            normal = value
        else:
            normal = "".join(c for c in value if c.isdigit())
        return f"{detector.name}:{_pseudonym(key, normal)}"
    if strategy == "partial" and kind != "secret":
        return _partial(value, kind)
    return f"[REDACTED:{detector.name}]"


_STAR_DIGITS = str.maketrans("0123456789", "*" * 10)
_STAR_ALNUM = str.maketrans(dict.fromkeys(string.digits + string.ascii_letters, "*"))


def _partial(value: str, kind: str) -> str:
    """Star out all but what identifies the value to a person who already knows it."""
    if kind == "email":
        local, _, domain = value.rpartition("@")
        return f"{local[0] if len(local) > 1 else ''}***@{domain}"
    if kind == "iban":  # country code and last four
        cut = _nth_from_end(value, 4, str.isalnum)
        return value[:2] + value[2:cut].translate(_STAR_ALNUM) + value[cut:]
    cut = _nth_from_end(value, 4, str.isdigit)  # cards, phones, SSNs: last four digits
    return value[:cut].translate(_STAR_DIGITS) + value[cut:]


def _nth_from_end(value: str, n: int, counts: Callable[[str], bool]) -> int:
    """Index of the n-th counted character from the end (0 if there are fewer)."""
    for index in range(len(value) - 1, -1, -1):
        if counts(value[index]):
            n -= 1
            if n == 0:
                return index
    return 0


def _mask_whole(value: Any, path: str, strategy: Strategy, key: bytes | None) -> str:
    if strategy == "hash":
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return f"{path}:{_pseudonym(key, text)}"
    return f"[REDACTED:{path}]"


# --- config -----------------------------------------------------------------------------

_DETECTOR_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _parse_detector_list(node: Node, problems: Problems) -> dict[str, Detector]:
    """The top-level `detectors:` list: custom detectors `{name, regex, validator}`."""
    if node.missing:
        return {}
    out: dict[str, Detector] = {}
    for item in problems.elements(node):
        detector = problems.attempt(_parse_detector, item, out)
        if detector is not None:
            out[detector.name] = detector
    return out


def _parse_detector(item: Node, known: Mapping[str, Detector]) -> Detector:
    return keys_then(item, DETECTOR_KEYS, {"name", "regex"}, lambda: _detector_fields(item, known))


def _detector_fields(item: Node, known: Mapping[str, Detector]) -> Detector:
    name_node = item.child("name")
    name = name_node.string()
    if not _DETECTOR_NAME.fullmatch(name):
        raise name_node.error("a detector name uses only letters, digits, '_', '.' and '-'")
    if name in BUILTIN_DETECTORS:
        raise name_node.error(f"{name!r} is a built-in detector; choose another name")
    if name in known:
        raise name_node.error(f"detector {name!r} is defined twice")
    validator = item.child("validator").choice(tuple(VALIDATORS), default="none")
    regex_node = item.child("regex")
    try:
        return custom_detector(name, regex_node.string(), validator)
    except re.error as exc:
        raise regex_node.error(f"invalid regular expression: {exc}") from None
    except ValueError as exc:
        raise regex_node.error(f"{exc}; make it match only the sensitive value") from None


def parse_masking(
    masking: Node,
    detectors: Node,
    *,
    hash_key: bytes | None = None,
    problems: Problems | None = None,
) -> MaskingPolicy:
    """The `masking:` profiles and `detectors:` custom detectors, compiled once. Each
    profile and detector is checked on its own: one with a mistake is recorded in
    `problems` and left out (without `problems`, all mistakes are raised at the end)."""
    return collected(lambda found: _parse_masking(masking, detectors, hash_key, found), problems)


def _parse_masking(
    masking: Node, detectors: Node, hash_key: bytes | None, problems: Problems
) -> MaskingPolicy:
    custom = _parse_detector_list(detectors, problems)
    if masking.missing:
        return MaskingPolicy((), hash_key, custom)
    # Detectors written but not parsed (their own mistake is reported): a profile naming
    # one is not blamed for it. None: the list could not be read, so no name is doubted.
    declared = declared_names(detectors)
    failed = None if declared is None else declared - set(custom)
    profiles: list[Profile] = []
    for item in problems.elements(masking):
        profile = problems.attempt(
            _parse_profile, item, {**BUILTIN_DETECTORS, **custom}, failed, hash_key, profiles
        )
        if profile is not None:
            profiles.append(profile)
    return MaskingPolicy(tuple(profiles), hash_key, custom)


def _parse_profile(
    item: Node,
    known: Mapping[str, Detector],
    failed: set[str] | None,
    hash_key: bytes | None,
    profiles: Sequence[Profile],
) -> Profile:
    """One profile, every mistake in it reported: an unknown key or a bad value of one key
    never hides a mistake in another."""
    if not isinstance(item.value, dict):
        item.mapping(PROFILE_KEYS)  # raises: not a mapping
    found = Problems()
    found.attempt(item.mapping, PROFILE_KEYS, {"name"})
    name = found.attempt(item.child("name").string) if item.has("name") else None
    if name is not None and any(p.name == name for p in profiles):
        found.add(item.child("name").error(f"masking profile {name!r} is defined twice"))
    chosen: dict[str, Detector] = {}
    doubtful = False
    for entry in found.attempt(lambda: list(_entries(item.child("detectors")))) or ():
        detector_name = found.attempt(entry.string)
        if detector_name is None:
            doubtful = True
        elif detector_name not in known:
            doubtful = True
            if failed is not None and detector_name not in failed:
                valid = ", ".join(sorted(known))
                found.add(entry.error(f"unknown detector {detector_name!r}; valid: {valid}"))
        else:
            chosen.setdefault(detector_name, known[detector_name])
    paths: list[FieldRule] = []
    for entry in found.attempt(lambda: list(_entries(item.child("paths")))) or ():
        try:
            paths.append(FieldRule.parse(entry.string()))
        except ValueError as exc:
            doubtful = True
            found.add(entry.error(str(exc)))
        except ConfigError as exc:
            doubtful = True
            found.add(exc)
    if not chosen and not paths and not doubtful:
        found.add(item.error("a masking profile needs `detectors` or `paths`; this masks nothing"))
    strategy_node = item.child("strategy")
    strategy = found.attempt(strategy_node.choice, STRATEGIES, "redact")
    if strategy == "hash" and not hash_key:
        found.add(
            strategy_node.error(
                "strategy hash needs a top-level `hash_key` "
                "(e.g. hash_key: ${env:HOLDGATE_HASH_KEY})"
            )
        )
    tools_node = item.child("tools")
    tools = found.attempt(tools_node.strings)
    upstreams = found.attempt(item.child("upstreams").strings)
    exempt_groups = found.attempt(item.child("exempt_groups").strings)
    secret_keys = found.attempt(_secret_key_names, item.child("secret_keys"), chosen, doubtful)
    phone_regions = found.attempt(_phone_regions, item.child("phone_regions"), chosen, doubtful)
    found.raise_if_any()
    if name is None or strategy is None:  # cannot happen: recorded above
        raise item.error("the masking profile could not be read")
    return Profile(
        name=name,
        detectors=tuple(chosen.values()),
        paths=tuple(paths),
        strategy=cast(Strategy, strategy),
        upstreams=upstreams or (),
        tools=Globs.of(tools) if tools is not None and not tools_node.missing else None,
        exempt_groups=exempt_groups or (),
        secret_keys=secret_keys or (),
        phone_regions=phone_regions or (),
    )


def _secret_key_names(
    node: Node, chosen: Mapping[str, Detector], doubtful: bool
) -> tuple[str, ...]:
    """`secret_keys:` more JSON key names whose values `generic_secret` masks whole."""
    names: list[str] = []
    for entry in _entries(node):
        text = entry.string()
        if not key_name(text):
            raise entry.error(f"{text!r} is no key name; write one like session_id")
        names.append(text)
    if names and "generic_secret" not in chosen and not doubtful:
        raise node.error("secret_keys extends generic_secret; add it to this profile's detectors")
    return tuple(names)


def _phone_regions(node: Node, chosen: Mapping[str, Detector], doubtful: bool) -> tuple[str, ...]:
    """`phone_regions:` the countries whose national phone formats `phone` finds."""
    regions: list[str] = []
    for entry in _entries(node):
        region = entry.string()
        problem = phone_regions_problem(region)
        if problem is not None:
            raise entry.error(problem)
        regions.append(region)
    if regions and "phone" not in chosen and not doubtful:
        raise node.error("phone_regions configures the phone detector; add it to this profile")
    return tuple(dict.fromkeys(regions))


def _entries(node: Node) -> Iterable[Node]:
    """A string or a list of strings, element by element (so errors point at the element)."""
    if node.missing:
        return ()
    if isinstance(node.value, str):
        return (node,)
    return node.elements()
