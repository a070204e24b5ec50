"""The MCP message model: JSON-RPC bodies parsed strictly, once, for every addon.

A gateway and the upstream must read the same bytes the same way, or a request can
be decided as one call and executed as another. So parsing refuses anything two
JSON parsers might disagree on (duplicate keys, NaN, non-UTF-8, trailing data) and
anything that is not a well-formed JSON-RPC 2.0 message.

Exceptions:
    BodyError        -- the body cannot be decided on; carries HTTP status and JSON-RPC code
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from holdgate.protocol.tasks import TASK_METHODS, requested_task_id

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
POLICY_DENIED = -32003
APPROVAL_REFUSED = -32004
RATE_LIMITED = -32005
HEADER_MISMATCH = -32020  # MCP 2026-07-28: headers disagree with the body (HTTP 400)

MessageKind = Literal["request", "notification", "response"]

NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class BodyError(Exception):
    """The body is malformed, ambiguous or too large; refused, never guessed at."""

    def __init__(self, message: str, *, status: int = 400, code: int = INVALID_REQUEST) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message, with the fields policy decides on pulled out."""

    raw: dict[str, Any]
    kind: MessageKind
    method: str | None
    id: str | int | None
    target: str | None  # tool name, resource URI or prompt name
    arguments: dict[str, Any] | None

    @property
    def tool(self) -> str | None:
        return self.target if self.method == "tools/call" else None

    def summary(self) -> dict[str, Any]:
        """Plain-JSON description kept in flow.metadata (no argument values)."""
        return {"kind": self.kind, "method": self.method, "id": self.id, "target": self.target}


@dataclass(frozen=True, slots=True)
class Body:
    """A parsed POST body: a single message or a batch."""

    messages: tuple[Message, ...]
    is_batch: bool


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # the common case costs one C-speed comparison
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(f"duplicate key {key[:40]!r} in JSON object", code=PARSE_ERROR)
            seen.add(key)
    return out


def _reject_constant(name: str) -> Any:
    raise BodyError(f"{name} is not valid JSON", code=PARSE_ERROR)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # 1e400: Python would read it as infinity, others as an error
        raise BodyError(f"number {literal[:40]} is out of range", code=PARSE_ERROR)
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)
# A lone surrogate can only come from a \uD800-\uDFFF escape (the bytes were UTF-8):
# only a text that has one is walked for them.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_lone_surrogates(value: Any) -> None:
    """Strings that are not Unicode (RFC 7493): parsers disagree on them (kept, replaced
    by U+FFFD, refused), so what the rules see could differ from what the upstream reads."""
    pending = [value]
    while pending:
        item = pending.pop()
        strings: Any = ()
        if isinstance(item, dict):
            strings = item.keys()
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            strings = (item,)
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise BodyError(
                    "a string holds a lone surrogate (\\uD800-\\uDFFF without its pair)",
                    code=PARSE_ERROR,
                ) from None


def loads_strict(data: bytes) -> Any:
    """Parse JSON the strict way: UTF-8 only, no BOM, no duplicate keys, no NaN."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise BodyError("body starts with a byte-order mark", code=PARSE_ERROR)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not UTF-8 (byte {exc.start})", code=PARSE_ERROR) from None
    return loads_strict_text(text)


def loads_strict_text(text: str) -> Any:
    """`loads_strict` for text already decoded: no duplicate keys, no NaN or infinities
    (nor numbers too large for a double), no lone surrogates."""
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", code=PARSE_ERROR
        ) from None
    except RecursionError:
        raise BodyError("JSON nested too deeply", code=PARSE_ERROR) from None
    if _SURROGATE_ESCAPE.search(text):
        _reject_lone_surrogates(value)
    return value


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_body(data: bytes, *, max_bytes: int) -> Body:
    """Parse a JSON-RPC POST body (single message or batch) into messages."""
    if len(data) > max_bytes:
        raise BodyError(
            f"body of {len(data)} bytes is over the {max_bytes}-byte limit (holdgate_max_body)",
            status=413,
        )
    value = loads_strict(data)
    if isinstance(value, list):
        if not value:
            raise BodyError("empty JSON-RPC batch")
        messages = tuple(parse_message(item, index) for index, item in enumerate(value))
        _reject_shared_ids(messages)
        return Body(messages, True)
    return Body((parse_message(value, None),), False)


def _reject_shared_ids(messages: tuple[Message, ...]) -> None:
    """Answers are matched to requests by id: two requests (or two responses) of one batch
    sharing an id would let an answer pass as another call's, past filtering and masking."""
    seen: set[tuple[str, str]] = set()
    for message in messages:
        if message.kind == "notification":
            continue
        key = ("request" if message.kind == "request" else "response", json.dumps(message.id))
        if key in seen:
            raise BodyError(
                f"two {key[0]}s in the batch share the id {key[1][:40]}; give each its own id"
            )
        seen.add(key)


def parse_message(value: Any, index: int | None) -> Message:
    where = f"batch item {index}: " if index is not None else ""
    if not isinstance(value, dict):
        raise BodyError(f"{where}a JSON-RPC message must be an object")
    if value.get("jsonrpc") != "2.0":
        raise BodyError(f'{where}"jsonrpc" must be "2.0"')
    has_id = "id" in value
    msg_id = value.get("id")
    if has_id and not _valid_id(msg_id):
        raise BodyError(f"{where}id must be a string, an integer or null")
    if "method" in value:
        method = value["method"]
        if not isinstance(method, str) or not method:
            raise BodyError(f"{where}method must be a non-empty string")
        if "result" in value or "error" in value:
            raise BodyError(f"{where}a message cannot have both a method and a result/error")
        params = value.get("params")
        if "params" in value and not isinstance(params, dict | list):
            raise BodyError(f"{where}params must be an object or an array")
        target, arguments = _target_and_arguments(method, params, where)
        kind: MessageKind = "request" if has_id else "notification"
        return Message(value, kind, method, msg_id, target, arguments)
    if ("result" in value) == ("error" in value) or not has_id:
        raise BodyError(f"{where}a response needs an id and exactly one of result or error")
    return Message(value, "response", None, msg_id, None, None)


def _valid_id(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
    )


def _target_and_arguments(
    method: str, params: Any, where: str
) -> tuple[str | None, dict[str, Any] | None]:
    key = NAME_PARAM.get(method)
    if key is None:
        return None, None
    if not isinstance(params, dict) or not isinstance(params.get(key), str):
        raise BodyError(f"{where}{method} needs params.{key} as a string")
    arguments = params.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise BodyError(f"{where}{method} params.arguments must be an object")
    return params[key], arguments


# Lowercased `x-mcp-header` names mapped to the argument path each mirrors
# (holdgate.policy.tool_pins).
HeaderParams = Mapping[str, tuple[str, ...]]
PARAM_PREFIX = "mcp-param-"


# The first protocol revision without sessions: it defines (and validates) the routing
# headers, takes client capabilities per request (URL elicitation) and lets a client cache
# listings (`ttlMs`, `cacheScope`).
STATELESS_REVISION = "2026-07-28"
# Where a 2026-07-28 request names its revision in `_meta` (besides the header).
PROTOCOL_VERSION_META = "io.modelcontextprotocol/protocolVersion"


def is_stateless_revision(version: object) -> bool:
    """Whether a declared protocol version is 2026-07-28 or later (versions are YYYY-MM-DD
    dates, so they compare as text)."""
    return (
        isinstance(version, str)
        and len(version) == len(STATELESS_REVISION)
        and version >= STATELESS_REVISION
    )


def check_routing_headers(
    body: Body, headers: Mapping[str, str], header_params: HeaderParams | None = None
) -> None:
    """Refuse a request whose Mcp-Method / Mcp-Name / Mcp-Param-* headers disagree with its
    body, lack a header MCP 2026-07-28 requires, or come with an older protocol version.

    An upstream that routes on headers must never see a different call than the one
    decided on the body; headers sent under a revision that does not define them were never
    validated by anyone, so they are refused rather than trusted (what the spec asks of
    intermediaries). `headers` has lowercased names. `header_params` is the called tool's
    `x-mcp-header` mapping when the gateway has seen its schema, else None.
    """
    version = headers.get("mcp-protocol-version")
    method_header = headers.get("mcp-method")
    name_header = headers.get("mcp-name")
    param_headers = {k: v for k, v in headers.items() if k.startswith(PARAM_PREFIX)}
    routing = method_header is not None or name_header is not None or bool(param_headers)
    if not is_stateless_revision(version):
        if routing:
            declared = (
                f"MCP-Protocol-Version {version[:32]!r}" if version else "no MCP-Protocol-Version"
            )
            raise BodyError(
                f"routing headers (Mcp-Method, Mcp-Name, Mcp-Param-*) are defined from MCP "
                f"{STATELESS_REVISION} on, and this request declares {declared}, so nothing "
                f"validated them: send MCP-Protocol-Version: {STATELESS_REVISION} or drop them"
            )
        return
    if body.is_batch:
        if routing:
            raise _mismatch("Mcp-Method / Mcp-Name headers cannot describe a batch")
        return
    message = body.messages[0]
    params = message.raw.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    declared_version = meta.get(PROTOCOL_VERSION_META) if isinstance(meta, dict) else None
    if declared_version is not None and declared_version != version:
        raise _mismatch(
            f"MCP-Protocol-Version header {version!r} does not match the body's "
            f"_meta {PROTOCOL_VERSION_META} {shown(declared_version)}"
        )
    if message.kind == "request" and method_header is None:
        raise _mismatch(f"the Mcp-Method header is required from MCP {STATELESS_REVISION} on")
    if method_header is not None and method_header != message.method:
        raise _mismatch(
            f"Mcp-Method header {method_header[:64]!r} does not match the body's method "
            f"{message.method!r}"
        )
    named = _header_name(message)
    if message.kind == "request" and named is not None and name_header is None:
        raise _mismatch(f"the Mcp-Name header is required for {message.method}")
    if name_header is not None or named is not None:
        if decode_header_value(name_header) != named:
            raise _mismatch("Mcp-Name header does not match the name in the body")
    for header, value in param_headers.items():
        _check_param_header(header, value, message.arguments or {}, header_params)


def _header_name(message: Message) -> str | None:
    """What Mcp-Name must carry: the tool, prompt or URI, or (MCP 2026-07-28's tasks
    extension) the task a tasks/* request names."""
    if message.target is not None or message.method not in TASK_METHODS:
        return message.target
    return requested_task_id(message.raw)


def _check_param_header(
    header: str, value: str, arguments: dict[str, Any], declared: HeaderParams | None
) -> None:
    """`Mcp-Param-<Name>` must carry exactly the argument the schema maps to Name.

    With the tool's schema unknown, Name must be an argument's own name (compared
    case-insensitively, and only one argument may fit): never "any argument that matches".
    """
    name = header[len(PARAM_PREFIX) :]
    header = header[:80]  # a header name is a token (no control characters), but unbounded
    if declared is not None:
        path = declared.get(name)
        if path is None:
            known = ", ".join(f"Mcp-Param-{n}" for n in sorted(declared)[:10]) or "none"
            raise _mismatch(
                f"{header}: the tool's inputSchema declares no x-mcp-header {name[:64]!r} "
                f"(it declares {known}); send only the headers the schema declares"
            )
    else:
        fits = [key for key in arguments if key.lower() == name]
        if len(fits) != 1:
            raise _mismatch(
                f"{header}: the gateway has not seen this tool's schema, so the header must "
                f"name one argument of the call; {len(fits)} arguments are named {name[:64]!r}"
            )
        path = (fits[0],)
    argument: Any = arguments
    for key in path:
        argument = argument.get(key) if isinstance(argument, dict) else None
    where = ("$." + ".".join(path))[:80]
    if argument is None:
        raise _mismatch(f"{header} is sent but the body has no argument {where}; omit the header")
    decoded = decode_header_value(value)
    if decoded is None:
        raise _mismatch(f"{header} is not valid =?base64?…?= (canonical base64 of UTF-8)")
    if not _mirrors(decoded, argument):
        raise _mismatch(f"{header} does not match the body's argument {where}")


def _mirrors(text: str, value: Any) -> bool:
    """Whether a header's text is the MCP string form of a primitive argument value."""
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    if isinstance(value, int | float):
        if not _JSON_NUMBER.fullmatch(text):
            return False
        try:
            return Decimal(text) == Decimal(str(value))
        except InvalidOperation:
            return False
    return isinstance(value, str) and text == value


def _mismatch(message: str) -> BodyError:
    return BodyError(message, code=HEADER_MISMATCH)


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")


def decode_header_value(value: str | None) -> str | None:
    """Undo MCP's `=?base64?…?=` header wrapping; a malformed wrapper decodes to None."""
    if value is None:
        return None
    match = _B64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def error_object(
    msg_id: str | int | None, code: int, message: str, data: Any = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


def single_valued(headers: dict[str, list[str]]) -> dict[str, str]:
    """Routing headers sent twice are ambiguous: an upstream may read either one."""
    for name, values in headers.items():
        if name.startswith("mcp-") and len(values) > 1:
            raise BodyError(f"the {name} header is sent {len(values)} times")
    return {name: values[0] for name, values in headers.items()}


SHOWN_VALUE_CHARS = 64


def shown(value: Any, limit: int = SHOWN_VALUE_CHARS) -> str:
    """A value taken from a request, safe to put in a body, log or audit row.

    JSON-quoted, with every control, quote and non-ASCII character escaped, and at most
    `limit` characters between the quotes (then `...`), so no request can set the shape
    or size of what the gateway writes about it.
    """
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True, default=repr)
    out: list[str] = []
    used = 0
    for char in text:
        piece = json.dumps(char, ensure_ascii=True)[1:-1]
        if used + len(piece) > limit:
            return '"' + "".join(out) + '"...'
        out.append(piece)
        used += len(piece)
    return '"' + "".join(out) + '"'
