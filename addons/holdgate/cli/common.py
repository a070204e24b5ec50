"""What every `holdgate` command shares: the store option, store errors as messages, the
`--since/--until` time type, and loading a config for its rules only.

Store errors are mapped here, once: each becomes a message and exit status 1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from holdgate.configfile import ConfigError, parse_duration
from holdgate.store import Store, StoreError, StoreNotFound, iso, open_store, parse_iso

if TYPE_CHECKING:
    from holdgate.config.gateway_config import GatewayConfig


class CheckFailed(click.ClickException):
    """A check ran and found a problem: exit status 1."""

    exit_code = 1


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "--db",
        "db",
        default="holdgate.sqlite3",
        show_default=True,
        envvar="HOLDGATE_STORE",
        show_envvar=True,
        help="Audit store: a SQLite path or a postgresql:// URL (the gateway's holdgate_store).",
    )(func)


@contextmanager
def store_errors() -> Iterator[None]:
    """Store errors (the approval rules' refusals included) as messages, exit status 1."""
    try:
        yield
    except StoreNotFound as exc:
        raise CheckFailed(f"{exc}; pass --store with the gateway's holdgate_store") from None
    except StoreError as exc:
        raise CheckFailed(str(exc)) from None


@contextmanager
def opened(db: str) -> Iterator[Store]:
    """The store at `db`, which must exist: readers never create one."""
    with store_errors(), open_store(db, create=False) as store:
        yield store


_DURATION = re.compile(r"^\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*$")


class TimeBound(click.ParamType[str]):
    """An ISO time, or a duration back from now (7d, 12h, 30m), given to the store as an
    ISO time in its own format (times compare as text there)."""

    name = "time"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if _DURATION.match(text):
            return iso(self.clock() - (parse_duration(text) or 0.0))
        try:
            return iso(parse_iso(text))
        except ValueError:
            self.fail(
                f"{text!r} is neither an ISO time (2026-11-01T00:00:00Z) nor a duration "
                "back from now (7d, 12h, 30m)",
                param,
                ctx,
            )


TIME = TimeBound()


def format_option(
    help: str = "text for a person, json for a script.",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--format text|json` (the value as `fmt`)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help=help,
    )


def since_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--since", type=TIME, help="From this ISO time, or this long ago (7d, 12h, 30m)."
    )(func)


def until_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--until", type=TIME, help="Before this ISO time, or this long ago (7d, 12h, 30m)."
    )(func)


def load_rules(path: str) -> GatewayConfig:
    """A config read for its rules only: `${env:…}`/`${file:…}` values are not needed.
    (The config stack is imported here: the commands that read no config skip loading it.)"""
    from holdgate.config.gateway_config import load_config

    try:
        return load_config(path, secrets=False)
    except ConfigError as exc:
        raise CheckFailed(str(exc)) from None
