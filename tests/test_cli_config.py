"""Commands that read a config only for its rules never need its secrets; the gateway does."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from holdgate import store
from holdgate.cli.main import main
from holdgate.config.gateway_config import load_config
from holdgate.configfile import SECRET_PLACEHOLDER, ConfigError

CONFIG = """version: 1
upstreams:
  - name: demo
    url: http://127.0.0.1:9
    inject:
      headers:
        Authorization: "Bearer ${env:HOLDGATE_TEST_UNSET_TOKEN}"
rules:
  - name: support
    match: {groups: [support], tool: get_customer}
    action: allow
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("HOLDGATE_TEST_UNSET_TOKEN", raising=False)
    path = tmp_path / "holdgate.yaml"
    path.write_text(CONFIG)
    return str(path)


def test_the_gateway_still_needs_every_secret(config: str) -> None:
    with pytest.raises(ConfigError, match="HOLDGATE_TEST_UNSET_TOKEN is not set"):
        load_config(config)


def test_rules_only_loading_reads_no_secret(config: str) -> None:
    loaded = load_config(config, secrets=False)
    assert loaded.upstreams[0].inject_headers == (("Authorization", SECRET_PLACEHOLDER),)


def test_policy_check_needs_no_secret_and_says_nothing_of_it(config: str) -> None:
    """It warned about the unset secret on every run: rules are checked without secrets."""
    result = CliRunner().invoke(main, ["policy", "check", config], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout.startswith(f"{config}: ok (1 rules, 1 upstreams, sha256 ")


def test_policy_check_with_secrets_reads_them_as_the_gateway_does(
    config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner().invoke(main, ["policy", "check", "--secrets", config])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {config}:7:9: upstreams[0].inject.headers.Authorization: environment "
        "variable HOLDGATE_TEST_UNSET_TOKEN is not set; export it before start"
    )
    monkeypatch.setenv("HOLDGATE_TEST_UNSET_TOKEN", "set-here")
    result = CliRunner().invoke(main, ["policy", "check", "--secrets", config])
    assert result.exit_code == 0, result.output
    assert "set-here" not in result.output


def test_policy_explain_needs_no_secret(config: str) -> None:
    result = CliRunner().invoke(
        main,
        [
            "policy",
            "explain",
            config,
            "--user",
            "alice",
            "--groups",
            "support",
            "--tool",
            "get_customer",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    assert "allow" in result.output


def test_review_needs_no_secret(config: str, tmp_path: Path) -> None:
    """A reviewer without the upstream's token in their shell got an error."""
    db = tmp_path / "audit.sqlite3"
    with store.SqliteStore(db) as opened:
        opened.append(
            "events",
            {
                "direction": "request",
                "user": "alice",
                "groups": ["support"],
                "upstream": "demo",
                "method": "tools/call",
                "target": "get_customer",
                "decision": "allow",
            },
        )
    result = CliRunner().invoke(
        main, ["review", "--db", str(db), "--config", config], catch_exceptions=False
    )
    assert result.exit_code == 0
    assert "| ` demo tool get_customer ` | ` support ` | 1 |" in result.output  # inert text
