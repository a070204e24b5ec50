"""Fixtures only; what they use lives in `tests/helpers` (see its docstring).

Every process or server a fixture starts is stopped by that fixture, by its pid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.postgres import PostgresServer, start_postgres, stop_postgres
from helpers.processes import DemoServer, Gateway, start_demo, start_gateway, stop
from helpers.upstreams import Answer, FakeUpstream, hostile_upstream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoServer]:
    server = start_demo(tmp_path)
    yield server
    stop(server.proc)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`gateway_factory(config_text, upstream_url, **options)`: a real gateway in tmp_path."""
    started: list[Gateway] = []

    def factory(config_text: str, upstream_url: str, **kwargs: Any) -> Gateway:
        gw = start_gateway(tmp_path, config_text, upstream_url, **kwargs)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        stop(gw.proc)


@pytest.fixture
def gateway(
    request: pytest.FixtureRequest, demo: DemoServer, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    """A gateway in front of the demo server, with the test module's `CONFIG`: a template
    of `{url}` and of the module's `CONFIG_VALUES`, if it has any."""
    module = request.module
    values = getattr(module, "CONFIG_VALUES", {})
    return gateway_factory(module.CONFIG.format(url=demo.url, **values), demo.url)


@pytest.fixture
def fake_upstream() -> Iterator[Callable[[Answer], FakeUpstream]]:
    """`fake_upstream(handler_or_table)`: a started `FakeUpstream`, stopped after the test."""
    started: list[FakeUpstream] = []

    def factory(answer: Answer) -> FakeUpstream:
        upstream = FakeUpstream(answer).start()
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        upstream.stop()


@pytest.fixture
def hostile() -> Iterator[FakeUpstream]:
    """The hostile upstream (`helpers.upstreams.hostile_answer`)."""
    upstream = hostile_upstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL 15 server for the session (started on first use, by its pid)."""
    server = start_postgres()
    yield server
    stop_postgres(server)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres.fresh_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new store's location on each backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url
