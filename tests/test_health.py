"""Readiness from the addons' facts, one named case per reason, and `holdgate status`'s
text from the admin API's answer."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from holdgate.cli.status_cli import status_lines
from holdgate.telemetry.health import (
    LEASE_LOST,
    NO_CONFIG,
    NOT_REGISTERED,
    STALE_LEASE_SECONDS,
    STARTING,
    STORE_CLOSED,
    STORE_FAILING,
    Readiness,
    not_ready,
)

READY = Readiness(
    started=True,
    config_loaded=True,
    store_open=True,
    writer_healthy=True,
    replica="gw-a",
    lease_age=1.0,
)


def test_everything_up_is_ready() -> None:
    assert not_ready(READY) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"started": False}, STARTING),
        ({"config_loaded": False}, NO_CONFIG),
        ({"store_open": False}, STORE_CLOSED),
        ({"writer_healthy": False}, STORE_FAILING),
        ({"replica": None}, NOT_REGISTERED),
        ({"lease_age": None}, LEASE_LOST),  # the last heartbeat failed
        ({"lease_age": STALE_LEASE_SECONDS + 0.1}, LEASE_LOST),  # heartbeats hang
    ],
)
def test_each_part_down_is_named(change: dict[str, Any], reason: str) -> None:
    assert not_ready(dataclasses.replace(READY, **change)) == reason


def test_a_gateway_still_starting_is_not_ready_whatever_else_is_up() -> None:
    assert not_ready(dataclasses.replace(READY, started=False, writer_healthy=False)) == STARTING


def report(**config: Any) -> dict[str, Any]:
    return {
        "replica": "gw-a",
        "not_ready": None,
        "config": {
            "file": "/etc/holdgate.yaml",
            "in_force": {"sha256": "a" * 64, "loaded_at": "2026-12-07T04:00:00.000Z"},
            "file_sha256": "a" * 64,
            "file_in_force": True,
            "reload_failures": 0,
            "last_reload_error": None,
            **config,
        },
        "store": {
            "backend": "sqlite",
            "writable": True,
            "last_error": None,
            "queue_depth": 0,
            "rows_lost": 0,
        },
        "approvals": {"pending": 2, "held_here": 1},
        "feeds": [
            {
                "feed": "siem",
                "seq": 8,
                "head": 10,
                "lag": 2,
                "holder": "gw-a/1",
                "last_error": "HTTP 500",
            },
        ],
    }


def test_status_text_when_all_is_well() -> None:
    assert status_lines(report()) == [
        "replica    gw-a: ready",
        "config     sha256 aaaaaaaaaaaa from /etc/holdgate.yaml, in force since "
        "2026-12-07T04:00:00.000Z",
        "file       the file on disk is the config in force",
        "reloads    0 rejected",
        "store      sqlite, writable; 0 rows queued, 0 lost",
        "approvals  2 pending, 1 held by this gateway",
        "feed       siem: seq 8, head 10, lag 2 events, last error: HTTP 500",
    ]


def test_status_text_says_which_modules_run_compiled() -> None:
    described = "compiled (mypyc): holdgate.policy.rules"
    assert status_lines({**report(), "code": described})[-1] == f"code       {described}"


def test_status_text_names_a_file_not_in_force_and_its_error() -> None:
    lines = status_lines(
        report(
            file_sha256="b" * 64,
            file_in_force=False,
            reload_failures=2,
            last_reload_error={"at": "T", "error": "2 errors:\n/x.yaml:3:5: a\n/x.yaml:9:1: b"},
        )
    )
    assert lines[2].startswith("file       NOT IN FORCE: the file on disk (sha256 bbbbbbbbbbbb)")
    assert lines[3:6] == [
        "reloads    2 rejected; the last at T:",
        "             2 errors:",
        "             /x.yaml:3:5: a",
    ]
