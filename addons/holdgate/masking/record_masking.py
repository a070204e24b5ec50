"""Masking for the record: what the audit store and the flow files keep, whoever called.

A client gets what its profiles allow, exemptions included (compliance may see cleartext).
The record never does: every value written to it is masked with every profile that
applies to the message, exemptions notwithstanding, and every value the gateway injected
towards an upstream (its credentials) is replaced wherever it shows up, in any direction.

`mask_for_record` is the one function for that: a JSON-like value or a text goes in, its
record copy comes out. The helpers below apply it to what a flow file holds: whole
bodies (JSON, event streams, text; a body that is not text is replaced by a placeholder
naming its size and keyed digest) and headers (credential-bearing ones replaced by a
placeholder, the others masked as text).

The tool a message belongs to decides which tool-scoped profiles apply. Where it is not
known (`UNKNOWN_TOOL`: an answer nothing correlates, a client's answer to a server
request) every profile of the upstream applies: the record errs on the masked side.

Exceptions: `MaskingError` (from `holdgate.masking.masker`) when a value cannot be masked safely;
the body helpers turn it into a placeholder instead of raising.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Final

from holdgate.config.configfile import parse_yaml
from holdgate.config.gateway_config import CREDENTIAL_HEADERS, GatewayConfig
from holdgate.masking.injected import InjectedForms, forms_for
from holdgate.masking.masker import (
    MaskingError,
    MaskingPolicy,
    MaskOutcome,
    ProfilesInEffect,
    mask_json,
    parse_masking,
)
from holdgate.protocol.jsonrpc import BodyError, loads_strict_text
from holdgate.protocol.mrtr import without_request_state
from holdgate.protocol.sse import SSEDecoder, SSEError, SSEEvent, encode_event

SECRET_FINDING: Final = "injected_credential"
CREDENTIAL_MARK: Final = b"[credential removed by holdgate]"
INJECTED_MARK: Final = b"[injected by holdgate]"

# Header names whose values are credentials: replaced whole, never masked as text.
_CREDENTIAL_NAME = re.compile(
    rb"authorization|authentication-info|cookie|token|secret|passw|api[-_]?key|credential"
    rb"|x-amz-security",
    re.IGNORECASE,
)
# Headers that describe the stored body itself; they must stay true to it.
_STRUCTURAL = frozenset({b"content-length", b"content-encoding", b"transfer-encoding"})
CALLER_CREDENTIALS: Final = frozenset(name.encode() for name in (*CREDENTIAL_HEADERS, "cookie"))


class UnknownTool(Enum):
    """The tool a message belongs to is not known: every profile of the upstream applies."""

    UNKNOWN = "unknown"


UNKNOWN_TOOL: Final = UnknownTool.UNKNOWN
ToolHint = str | None | UnknownTool


@dataclass(frozen=True)
class PortableRecordMasking:
    """A `RecordMasking` as plain data, to hand to another process (detectors cannot be
    pickled): the config text its masking is parsed from again, and the values."""

    config_text: str
    config_file: str
    hash_key: bytes | None
    secrets: tuple[str, ...]
    digest_key: bytes

    def build(self) -> RecordMasking:
        """Raises ConfigError or ValueError if the masking sections no longer parse."""
        root = parse_yaml(self.config_text, self.config_file).root
        policy = parse_masking(
            root.child("masking"), root.child("detectors"), hash_key=self.hash_key
        )
        return RecordMasking(policy, self.secrets, self.digest_key, self)


@dataclass(frozen=True, eq=False)
class RecordMasking:
    """The masking policy, the injected values and the digest key the record is kept with."""

    policy: MaskingPolicy
    secrets: tuple[str, ...] = ()
    digest_key: bytes = b""
    portable_form: PortableRecordMasking | None = field(default=None, repr=False)
    _any_tool: dict[str, ProfilesInEffect] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_config(cls, config: GatewayConfig, digest_key: bytes) -> RecordMasking:
        portable = PortableRecordMasking(
            config.text, config.file, config.hash_key, config.secrets, digest_key
        )
        return cls(config.masking, config.secrets, digest_key, portable)

    def portable(self) -> PortableRecordMasking:
        if self.portable_form is None:
            raise ValueError("this record masking was not built from a config file")
        return self.portable_form

    @cached_property
    def injected(self) -> InjectedForms:
        """Every form of every secret to scrub, compiled once."""
        return forms_for(self.secrets)

    def effect(self, upstream: str, tool: ToolHint) -> ProfilesInEffect:
        """The record's profiles: no groups, so no exemptions."""
        if tool is not UNKNOWN_TOOL:
            return self.policy.profiles_for(upstream, tool, ())
        effect = self._any_tool.get(upstream)
        if effect is None:
            profiles = tuple(
                p for p in self.policy.profiles if not p.upstreams or upstream in p.upstreams
            )
            effect = self._any_tool[upstream] = ProfilesInEffect(profiles, (), self.policy.hash_key)
        return effect

    def scrub(self, text: str) -> tuple[str, int]:
        """`text` with every injected value replaced, and how many were."""
        return self.injected.scrub_text(text)

    def digest(self, data: bytes) -> str:
        return hmac.new(self.digest_key, data, hashlib.sha256).hexdigest()


# --- the one function ------------------------------------------------------------------


def mask_for_record(
    value: Any, record: RecordMasking, upstream: str, tool: ToolHint = UNKNOWN_TOOL
) -> MaskOutcome:
    """The record's copy of a JSON-like value or a text: injected values scrubbed from every
    string and key, then masked with every profile that applies, exemptions ignored.

    Findings count `injected_credential` next to the detectors. Raises MaskingError when
    it cannot be done safely (the caller must not record the value in clear).
    """
    scrubbed = 0
    if record.injected:
        try:
            value, scrubbed = record.injected.scrub_value(value)
        except RecursionError:
            raise MaskingError("the value is nested too deeply to mask") from None
    outcome = mask_json(value, record.effect(upstream, tool))
    if not scrubbed:
        return outcome
    return MaskOutcome(outcome.value, {**outcome.findings, SECRET_FINDING: scrubbed})


def scrub_row(row: Mapping[str, Any], record: RecordMasking) -> dict[str, Any]:
    """An audit row with injected values scrubbed from its text columns (already masked
    values, serialised JSON included: the JSON-escaped forms are among the forms found)."""
    out = dict(row)
    for key, value in row.items():
        if isinstance(value, str) and record.injected:
            out[key] = record.scrub(value)[0]
    return out


# --- bodies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedBody:
    """A body's record copy; `dropped` says why it was replaced by a placeholder."""

    content: bytes
    findings: dict[str, int]
    dropped: str | None = None


def _loads(text: str) -> tuple[bool, Any]:
    try:
        return True, loads_strict_text(text)
    except BodyError:
        return False, None


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def tools_by_id(content: bytes) -> dict[str, ToolHint]:
    """What each request in a JSON-RPC body calls, by id: the tool of its answers. An id
    used twice (with different tools) is unknown rather than guessed."""
    try:
        ok, value = _loads(content.decode("utf-8"))
    except UnicodeDecodeError:
        return {}
    if not ok:
        return {}
    out: dict[str, ToolHint] = {}
    for message in value if isinstance(value, list) else [value]:
        if not isinstance(message, dict) or "id" not in message or "method" not in message:
            continue
        key = json.dumps(message["id"], sort_keys=True)
        tool = _request_tool(message)
        out[key] = tool if key not in out or out[key] == tool else UNKNOWN_TOOL
    return out


def _request_tool(message: dict[str, Any]) -> str | None:
    params = message.get("params")
    if message.get("method") == "tools/call" and isinstance(params, dict):
        name = params.get("name")
        return name if isinstance(name, str) else None
    return None


def _message_tool(message: Any, answers: Mapping[str, ToolHint]) -> ToolHint:
    if not isinstance(message, dict):
        return UNKNOWN_TOOL
    if "method" in message:
        return _request_tool(message)
    try:
        key = json.dumps(message.get("id"), sort_keys=True)
    except (TypeError, ValueError):
        return UNKNOWN_TOOL
    return answers.get(key, UNKNOWN_TOOL)


def _mask_message(
    value: Any, record: RecordMasking, upstream: str, answers: Mapping[str, ToolHint]
) -> MaskOutcome:
    """A JSON body, message by message (each is its own document, as the client stages see
    it), with each message's tool."""
    if isinstance(value, list):
        findings: dict[str, int] = {}
        items = []
        for item in value:
            outcome = _mask_one(item, record, upstream, answers)
            items.append(outcome.value)
            for name, count in outcome.findings.items():
                findings[name] = findings.get(name, 0) + count
        return MaskOutcome(items, findings)
    return _mask_one(value, record, upstream, answers)


def _mask_one(
    message: Any, record: RecordMasking, upstream: str, answers: Mapping[str, ToolHint]
) -> MaskOutcome:
    """One message for the record; an MCP `requestState` is kept only as a placeholder (its
    keyed digest is on the audit row), whatever it holds."""
    kept = without_request_state(message)
    outcome = mask_for_record(kept, record, upstream, _message_tool(message, answers))
    if kept is message:
        return outcome
    return MaskOutcome(outcome.value, {**outcome.findings, "request_state": 1})


def record_body(
    content: bytes,
    record: RecordMasking,
    upstream: str,
    *,
    event_stream: bool = False,
    answers: Mapping[str, ToolHint] | None = None,
) -> RecordedBody:
    """The record copy of a whole body: JSON walked message by message, an event stream
    event by event, other text masked as text; a body that is not UTF-8 text, or cannot be
    masked, is replaced by a placeholder naming its size and keyed digest.

    `answers` maps request ids to their tool, for the messages of a response body.
    """
    if not content:
        return RecordedBody(content, {})
    answers = answers or {}
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return placeholder(content, record, "not UTF-8 text")
    try:
        if event_stream:
            return _record_event_stream(content, record, upstream, answers)
        ok, value = _loads(text)
        outcome = (
            _mask_message(value, record, upstream, answers)
            if ok
            else mask_for_record(text, record, upstream, UNKNOWN_TOOL)
        )
    except MaskingError as exc:
        return placeholder(content, record, f"cannot be masked: {exc}")
    if not outcome.findings:
        return RecordedBody(content, {})
    masked = _dumps(outcome.value) if ok else outcome.value.encode("utf-8", "surrogatepass")
    return RecordedBody(masked, outcome.findings)


def _record_event_stream(
    content: bytes, record: RecordMasking, upstream: str, answers: Mapping[str, ToolHint]
) -> RecordedBody:
    """Each event's data masked as its message; its id, event name and comments as text.
    An unterminated last event (a stream recorded in part) is left out, as a client
    would never have seen it."""
    try:
        events = SSEDecoder(max_event_bytes=len(content) + 1).feed(content)
    except SSEError as exc:
        return placeholder(content, record, f"not a valid event stream: {type(exc).__name__}")
    findings: dict[str, int] = {}
    out: list[bytes] = []
    for event in events:
        fields = [event.event, event.id, *event.comments]
        texts = mask_for_record([f for f in fields if f is not None], record, upstream)
        _add(findings, texts.findings)
        masked_fields = iter(texts.value)
        name = next(masked_fields) if event.event is not None else None
        event_id = next(masked_fields) if event.id is not None else None
        comments = tuple(masked_fields)
        data = event.data
        if data is not None:
            ok, value = _loads(data)
            if ok:
                outcome = _mask_message(value, record, upstream, answers)
                if outcome.findings:
                    data = _dumps(outcome.value).decode("utf-8", "surrogatepass")
            else:
                outcome = mask_for_record(data, record, upstream, UNKNOWN_TOOL)
                data = outcome.value
            _add(findings, outcome.findings)
        try:
            out.append(encode_event(SSEEvent(data, name, event_id, event.retry, comments)))
        except ValueError as exc:
            return placeholder(content, record, f"cannot be re-encoded: {exc}")
    return RecordedBody(b"".join(out), findings)


def _add(totals: dict[str, int], findings: Mapping[str, int]) -> None:
    for name, count in findings.items():
        totals[name] = totals.get(name, 0) + count


def placeholder(content: bytes, record: RecordMasking, why: str) -> RecordedBody:
    note = (
        f"[holdgate: a body of {len(content)} bytes was left out of the record ({why}); "
        f"hmac-sha256 {record.digest(content)}]"
    )
    return RecordedBody(note.encode(), {}, why)


# --- headers ----------------------------------------------------------------------------


def record_headers(
    headers: Iterable[tuple[bytes, bytes]],
    record: RecordMasking,
    upstream: str,
    *,
    injected: frozenset[bytes] = frozenset(),
    drop: frozenset[bytes] = frozenset(),
) -> tuple[tuple[bytes, bytes], ...]:
    """Headers for the record: `drop` names left out, `injected` ones shown as a marker,
    credential-bearing ones replaced by a placeholder, the others scrubbed and masked as
    text (all values in one pass). Names are lower-cased bytes in `injected` and `drop`.

    Raises MaskingError when the values cannot be masked.
    """
    kept: list[bytes | None] = []  # the value to keep, or None: masked as text
    texts: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower in drop:
            continue
        if lower in injected:
            kept.append(INJECTED_MARK)
        elif _CREDENTIAL_NAME.search(lower):
            kept.append(CREDENTIAL_MARK)
        elif lower in _STRUCTURAL:
            kept.append(value)
        else:
            kept.append(None)
            texts.append(value.decode("utf-8", "surrogateescape"))
        texts.append(name.decode("utf-8", "surrogateescape"))
    masked = iter(mask_for_record(texts, record, upstream).value if texts else ())
    out: list[tuple[bytes, bytes]] = []
    for kept_value in kept:
        value = (
            next(masked).encode("utf-8", "surrogateescape") if kept_value is None else kept_value
        )
        masked_name = next(masked).encode("utf-8", "surrogateescape")
        out.append((masked_name, value))
    return tuple(out)
