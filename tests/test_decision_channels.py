"""How a decision is attributed: the channel a request may claim, how its caller proved who
they are, and who the mitmweb console operator is (pure parts of issue 27)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.configs import identity
from holdgate.approvals.adminhttp import AdminRequest, authenticated_as, claimed_channel
from holdgate.approvals.approval_rules import console_operator_groups, decision_record
from holdgate.cli.approvals_cli import break_glass_problems, decided_how
from holdgate.config.gateway_config import GatewayConfig, load_config
from holdgate.identity import Identity


def request(headers: dict[str, list[str]]) -> AdminRequest:
    return AdminRequest("POST", "/approvals/a1/approve", headers, b"{}", "127.0.0.1")


@pytest.mark.parametrize(
    ("values", "channel"),
    [
        (["cli"], "cli"),
        ([" CLI "], "cli"),
        ([], "api"),
        (["api"], "api"),
        # only cli and api may be claimed: the others are set where they happen
        (["inbox"], "api"),
        (["mitmweb"], "api"),
        (["break-glass"], "api"),
        (["elicitation"], "api"),
        (["cli", "cli"], "api"),
    ],
)
def test_a_request_claims_cli_or_is_the_api(values: list[str], channel: str) -> None:
    headers = {"x-holdgate-channel": values} if values else {}
    assert claimed_channel(request(headers)) == channel


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    text = (
        "version: 1\n"
        + identity("alice", "dana")
        + "upstreams:\n  - name: db\n    url: http://127.0.0.1:9\n"
        + "admin:\n  trusted_header:\n    from: [127.0.0.1/32]\n    user: X-Forwarded-User\n"
        + "rules: []\n"
    )
    path = tmp_path / "holdgate.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize(
    ("caller", "how"),
    [
        (
            Identity("dana", ("dba",), "oidc", issuer="https://idp.example"),
            {"via": "jwt", "issuer": "https://idp.example"},
        ),
        (Identity("dana", ("dba",), "api_key", name="dana"), {"via": "api_key", "key": "dana"}),
        (
            Identity("dana", ("dba",), "trusted_header"),
            {"via": "trusted_header", "header": "x-forwarded-user"},
        ),
    ],
)
def test_how_a_caller_authenticated_is_recorded(
    config: GatewayConfig, caller: Identity, how: dict[str, str]
) -> None:
    assert authenticated_as(caller, config) == how


def test_the_console_operator_is_an_api_keys_name(config: GatewayConfig) -> None:
    assert console_operator_groups(config, "dana") == ("dba", "engineering")
    assert console_operator_groups(config, "mallory") is None  # groups unknown: refused
    assert console_operator_groups(config, "") is None


def test_a_decision_record_carries_decided_as_as_an_object() -> None:
    row = {"channel": "cli", "decided_as": '{"user": "dana", "via": "api_key"}'}
    assert decision_record(row) == {
        "channel": "cli",
        "decided_as": {"user": "dana", "via": "api_key"},
    }
    assert decision_record({"channel": None, "decided_as": "not json"}) == {}


@pytest.mark.parametrize(
    ("break_glass", "user", "reason", "problem"),
    [
        (False, None, None, None),
        (False, None, "why", None),
        (False, "dana", "why", "--as is for break-glass only"),
        (True, None, None, "--break-glass needs --as NAME and --reason TEXT"),
        (True, "dana", None, "--break-glass needs --reason TEXT"),
        (True, None, "why", "--break-glass needs --as NAME"),
        (True, "dana", "why", None),
    ],
)
def test_break_glass_needs_a_name_and_a_reason(
    break_glass: bool, user: str | None, reason: str | None, problem: str | None
) -> None:
    found = break_glass_problems(break_glass, user, reason)
    assert (found is None) if problem is None else (found or "").startswith(problem)


def test_a_decision_is_described_for_people() -> None:
    decided_as = {
        "via": "jwt",
        "issuer": "https://idp.example",
        "groups": ["dba", "ops"],
        "qualified_by": "dba",
    }
    assert decided_how("api", decided_as) == (
        "via api; JWT from https://idp.example; groups dba, ops; qualified by dba"
    )
    assert decided_how(None, None) == ""  # rows from before channels were recorded
