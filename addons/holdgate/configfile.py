"""YAML config reading that remembers where every value came from.

Errors a person sees must name the file, line, column and key, so the loader keeps
the position of every node and each section parser walks the document through
`Node`, which turns a mistake into a `ConfigError` pointing at the offending key.

A file is checked in one pass: section parsers take a `Problems` collector, parse each
item (rule, upstream, profile, identity entry) on its own, record an item's mistake and
go on with the next, so every mistake of a file is reported at once.

Exceptions:
    ConfigError      -- the config is invalid; str() is "file:line:col: key: what, fix"
      ConfigErrors   -- several of them; str() is one per line, in file order
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]
# Top-level lists whose items errors name by their `name` rather than their position.
NAMED_SECTIONS = ("rules", "masking")


class ConfigError(Exception):
    """The config is invalid; carries the file, line, column and key path."""

    def __init__(
        self, message: str, *, file: str, line: int = 0, column: int = 0, key: str = ""
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        where = f"{file}:{line}:{column}" if line else file
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Each mistake on its own (this one alone; `ConfigErrors` has several)."""
        return (self,)

    def report(self) -> str:
        """For a person: the error, or "N errors:" and one per line."""
        errors = self.errors
        if len(errors) == 1:
            return str(errors[0])
        return f"{len(errors)} errors:\n" + "\n".join(str(e) for e in errors)


class ConfigErrors(ConfigError):
    """Every mistake found in a file, in file order; the first one's fields are its own."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        flat = [single for error in errors for single in error.errors]
        if not flat:
            raise ValueError("ConfigErrors needs at least one error")
        unique: dict[str, ConfigError] = {}
        for error in flat:
            unique.setdefault(str(error), error)
        self._errors = tuple(sorted(unique.values(), key=lambda e: (e.line, e.column)))
        first = self._errors[0]
        self.message, self.file, self.key = first.message, first.file, first.key
        self.line, self.column = first.line, first.column
        Exception.__init__(self, "\n".join(str(e) for e in self._errors))

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors


class Problems:
    """The mistakes found so far in one file, so parsing goes on after the first.

    Parsers give each item its own `attempt`: an item with a mistake is recorded and left
    out, the rest are still checked. Nothing built while problems exist is ever used.
    """

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def add(self, error: ConfigError) -> None:
        self.found.extend(error.errors)

    def attempt[T](self, parse: Callable[..., T], *args: Any) -> T | None:
        """`parse(*args)`, or None with its mistake recorded."""
        try:
            return parse(*args)
        except ConfigError as exc:
            self.add(exc)
            return None

    def elements(self, node: Node) -> list[Node]:
        """The items of a list (none, with the mistake recorded, if it is not one)."""
        return self.attempt(lambda: list(node.elements())) or []

    def raise_if_any(self) -> None:
        if self.found:
            raise ConfigErrors(self.found)


def collected[T](parse: Callable[[Problems], T], problems: Problems | None) -> T:
    """Run a section parser that records its mistakes in `problems`; with None (a caller
    that parses the section alone) the section's mistakes are raised, all of them."""
    if problems is not None:
        return parse(problems)
    own = Problems()
    result = parse(own)
    own.raise_if_any()
    return result


def keys_then[T](
    node: Node, allowed: set[str], required: set[str] | frozenset[str], parse: Callable[[], T]
) -> T:
    """`parse()` of a mapping whose key check does not stop it: an unknown key is reported
    together with the mistake `parse` finds in the item's other keys, so a typo never hides
    a bad value beside it. A mapping that lacks a required key reports its keys alone."""
    try:
        node.mapping(allowed, required)
    except ConfigError as keys:
        if not isinstance(node.value, dict) or any(key not in node.value for key in required):
            raise
        try:
            parse()
        except ConfigError as other:
            raise ConfigErrors([keys, other]) from None
        raise
    return parse()


def declared_names(node: Node) -> set[str] | None:
    """The `name` written in each item of a list, parsed or not; None when some item's name
    cannot be read. A reference to a declared item that failed to parse is not a mistake of
    its own (that item's error is already reported)."""
    if node.missing:
        return set()
    if not isinstance(node.value, list):
        return None
    names: set[str] = set()
    for item in node.value:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            return None
        names.add(name)
    return names


def format_keypath(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True)
class Document:
    """A parsed YAML file: plain values plus the (line, column) of every key path."""

    file: str
    data: Any
    marks: dict[KeyPath, tuple[int, int]]

    def error(self, path: KeyPath, message: str) -> ConfigError:
        line, column = self._nearest_mark(path)
        return ConfigError(message, file=self.file, line=line, column=column, key=self.key(path))

    def key(self, path: KeyPath) -> str:
        """The key path as a person reads it: a rule or masking profile by its `name`
        (`rules['no shell']`), not its position, which shifts as items are added; by
        position when it has none."""
        if len(path) >= 2 and path[0] in NAMED_SECTIONS and isinstance(path[1], int):
            items = self.data.get(path[0]) if isinstance(self.data, dict) else None
            item = items[path[1]] if isinstance(items, list) and path[1] < len(items) else None
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name:
                rest = format_keypath(path[2:])
                named = f"{path[0]}[{name!r}]"
                return named + (rest if rest[:1] in ("", "[") else f".{rest}")
        return format_keypath(path)

    def _nearest_mark(self, path: KeyPath) -> tuple[int, int]:
        for end in range(len(path), -1, -1):
            if path[:end] in self.marks:
                return self.marks[path[:end]]
        return (1, 1)

    @property
    def root(self) -> Node:
        return Node(self, (), self.data)


def parse_yaml(text: str, file: str) -> Document:
    """Parse YAML into plain values, refusing duplicate keys and remembering positions."""
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError(
            f"not valid YAML: {exc.problem}", file=file, line=line, column=column
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file) from None
    marks: dict[KeyPath, tuple[int, int]] = {}
    data = _to_python(tree, (), marks, file) if tree is not None else None
    return Document(file, data, marks)


def load_yaml_file(path: str | os.PathLike[str]) -> tuple[Document, bytes]:
    """Read and parse a config file; returns the document and the raw bytes (for hashing)."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file ({exc.strerror}); check the path", file=name
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte {exc.start}); save it as UTF-8", file=name
        ) from None
    return parse_yaml(text, name), raw


def _to_python(
    node: yaml.Node, path: KeyPath, marks: dict[KeyPath, tuple[int, int]], file: str
) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader.construct_scalar(yaml.SafeLoader(""), key_node)
            if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key, str):
                raise ConfigError(
                    "keys must be plain strings",
                    file=file,
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                    key=format_keypath(path),
                )
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r}; remove one of them",
                    file=file,
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                    key=format_keypath((*path, key)),
                )
            marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _to_python(value_node, (*path, key), marks, file)
            marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), marks, file) for i, item in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"bad value: {exc}",
            file=file,
            line=node.start_mark.line + 1,
            column=node.start_mark.column + 1,
            key=format_keypath(path),
        ) from None
    finally:
        loader.dispose()


@dataclass(frozen=True)
class Node:
    """One value of the document, with the means to complain about it precisely."""

    doc: Document
    path: KeyPath
    value: Any

    def error(self, message: str) -> ConfigError:
        return self.doc.error(self.path, message)

    def warning(self, message: str) -> str:
        """A warning about this value, placed like an error: "file:line:col: key: warning: …"."""
        return str(self.doc.error(self.path, f"warning: {message}"))

    def child(self, key: str | int) -> Node:
        value = self.value[key] if self._has(key) else None
        return Node(self.doc, (*self.path, key), value)

    def _has(self, key: str | int) -> bool:
        if isinstance(key, int):
            return isinstance(self.value, list) and 0 <= key < len(self.value)
        return isinstance(self.value, dict) and key in self.value

    def has(self, key: str) -> bool:
        return self._has(key)

    @property
    def missing(self) -> bool:
        return self.value is None

    def mapping(self, allowed: set[str], required: frozenset[str] | set[str] = frozenset()) -> Node:
        """Check this is a mapping with only `allowed` keys (suggesting the closest for typos)."""
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping, got {_kind(self.value)}")
        errors: list[ConfigError] = []
        for key in self.value:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"valid keys: {', '.join(sorted(allowed))}"
                )
                errors.append(self.child(key).error(f"unknown key {key!r}; {hint}"))
        for key in sorted(required):
            if key not in self.value:
                errors.append(self.error(f"missing required key {key!r}"))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ConfigErrors(errors)
        return self

    def items(self) -> Iterator[tuple[str, Node]]:
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping, got {_kind(self.value)}")
        for key in self.value:
            yield key, self.child(key)

    def elements(self) -> Iterator[Node]:
        if not isinstance(self.value, list):
            raise self.error(f"expected a list, got {_kind(self.value)}")
        for i in range(len(self.value)):
            yield self.child(i)

    def string(self, default: str | None = None) -> str:
        if self.value is None and default is not None:
            return default
        if not isinstance(self.value, str) or not self.value:
            raise self.error(f"expected a non-empty string, got {_kind(self.value)}")
        return self.value

    def optional_string(self) -> str | None:
        return None if self.value is None else self.string()

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            raise self.error(f"expected true or false, got {_kind(self.value)}")
        return self.value

    def strings(self) -> tuple[str, ...]:
        """A string or a list of strings (YAML users write both)."""
        if self.value is None:
            return ()
        if isinstance(self.value, str):
            return (self.string(),)
        return tuple(item.string() for item in self.elements())

    def choice(self, options: tuple[str, ...], default: str | None = None) -> str:
        if self.value is None and default is not None:
            return default
        if self.value not in options:
            raise self.error(f"expected one of {', '.join(options)}; got {self.value!r}")
        return str(self.value)

    def duration(self, default: float | None = None) -> float:
        """Seconds from `90`, `30s`, `10m`, `2h`, `7d`."""
        if self.value is None and default is not None:
            return default
        seconds = parse_duration(self.value)
        if seconds is None:
            raise self.error(f"expected a duration like 30s, 10m, 2h or 7d; got {self.value!r}")
        return seconds

    def secret(self, resolve: bool = True) -> str:
        """A string whose `${env:NAME}` / `${file:PATH}` references are resolved now; with
        `resolve=False` (a command that reads only the rules) SECRET_PLACEHOLDER instead."""
        text = self.string()
        return resolve_secrets(text, self) if resolve else SECRET_PLACEHOLDER


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.IGNORECASE)


def parse_size(value: str) -> int | None:
    """Bytes from `4m`, `512k`, `1g` or a plain number."""
    match = _SIZE.match(value)
    if not match:
        return None
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * scale


_SECRET_REF = re.compile(r"\$\{(env|file):([^}]+)\}")
SECRET_PLACEHOLDER = "[secret not loaded]"


def resolve_secrets(text: str, node: Node) -> str:
    """Replace `${env:NAME}` and `${file:PATH}` (relative to the config file) with their values."""
    return _SECRET_REF.sub(lambda match: _lookup(match, node), text)


def _lookup(match: re.Match[str], node: Node) -> str:
    kind, name = match.group(1), match.group(2).strip()
    if kind == "env":
        value = os.environ.get(name)
        if value is None:
            raise node.error(f"environment variable {name} is not set; export it before start")
        return value
    path = Path(name)
    if not path.is_absolute():
        path = Path(node.doc.file).parent / path
    try:
        return path.read_text("utf-8").strip()
    except OSError as exc:
        raise node.error(f"cannot read secret file {path} ({exc.strerror})") from None


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address; any other name may resolve to anything."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
