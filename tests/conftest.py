"""Fixtures only; what they use lives in `tests/helpers` (see its docstring).

Every process or server a fixture starts is stopped by that fixture, by its pid.

The suite runs its files in parallel (pytest-xdist, `-n auto --dist loadfile` in
pyproject.toml): a file's tests stay together on one worker, in order, so a module-scoped
fixture is started once per file. Ports come from `helpers.processes.free_port`, which no
two workers share; each worker has its own tmp folders and PostgreSQL cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from mitmproxy.log import LegacyLogEvents

from helpers.postgres import PostgresServer, start_postgres, stop_postgres
from helpers.processes import (
    DemoServer,
    Gateway,
    SharedDemo,
    start_demo,
    start_gateway,
    stop_soon,
    wait_for_stops,
)
from helpers.upstreams import Answer, FakeUpstream, hostile_upstream

# Hypothesis's per-example deadline is a timed assertion: on a loaded CI machine it fails
# correct code. Speed is measured by the benchmarks instead.
settings.register_profile("holdgate", deadline=None)
settings.load_profile("holdgate")

# Workers for `-n auto`: most of a test's time is spent waiting on the gateway and servers
# it starts, so more workers than cores (PYTEST_XDIST_AUTO_NUM_WORKERS=N overrides).
WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """As many workers as files named on the command line, up to WORKERS; none for one file
    (no workers to start when a single file is run)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own hook reads it
    paths = [Path(str(arg).split("::")[0]) for arg in config.args]
    if any(path.is_dir() for path in paths):
        return WORKERS
    files = len(set(paths))
    return 0 if files <= 1 else min(WORKERS, files)


@pytest.fixture(scope="session", autouse=True)
def _every_process_stopped() -> Iterator[None]:
    """The fixtures below stop their processes in the background (`stop_soon`); the session
    ends only once all have stopped."""
    yield
    wait_for_stops()


@pytest.fixture(autouse=True)
def _no_log_handler_of_a_closed_master() -> Iterator[None]:
    """A `taddons.context` that made its own event loop closes it on exit but leaves its
    master's log handler on the root logger; a later test in the same process that logs
    from a thread would then fail on the closed loop. Remove such handlers after each test."""
    yield
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, LegacyLogEvents) and handler.master.event_loop.is_closed():
            handler.uninstall()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDemo]:
    """The demo server of a module's tests (started on first use)."""
    shared = SharedDemo(tmp_path_factory.mktemp("demo"))
    yield shared
    shared.stop()


@pytest.fixture
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DemoServer]:
    """The demo MCP server, showing this test only its own requests: the module's shared
    one (`shared_demo`), or a new one for this test when the module sets
    `DEMO_PER_TEST = True` (its tests change the demo's data)."""
    if getattr(request.module, "DEMO_PER_TEST", False):
        server = start_demo(tmp_path)
        yield server
        stop_soon(server.proc)
    else:
        shared: SharedDemo = request.getfixturevalue("shared_demo")
        yield shared.for_a_test(tmp_path)


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
        stop_soon(gw.proc)


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
    wait_for_stops()  # no gateway still connected
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
