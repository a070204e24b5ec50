"""MCP 2026-07-28 in the policy: a config must let modern clients discover."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from holdgate.cli.main import main
from holdgate.config.gateway_config import parse_config_text

HEAD = "version: 1\nupstreams: [{name: d, url: 'http://127.0.0.1:1'}]\nrules:\n"


def warnings_of(rules: str) -> tuple[str, ...]:
    return parse_config_text(HEAD + rules, "x.yaml").policy.warnings


def test_initialize_without_discover_is_warned_about() -> None:
    (warning,) = warnings_of("  - {name: hs, match: {method: initialize}, action: allow}\n")
    assert warning.startswith("x.yaml:3:1: rules: warning: `initialize` is allowed but")
    assert "allow server/discover where initialize is allowed" in warning


def test_initialize_with_discover_or_a_catch_all_is_fine() -> None:
    both = "  - {name: hs, match: {method: [initialize, server/discover]}, action: allow}\n"
    catch_all = "  - {name: all, match: {groups: [x]}, action: allow}\n"
    assert warnings_of(both) == ()
    assert warnings_of(catch_all) == ()


def test_a_denied_discover_does_not_count_as_allowed() -> None:
    rules = (
        "  - {name: no discover, match: {method: server/discover}, action: deny}\n"
        "  - {name: hs, match: {method: [initialize, 'server/*']}, action: allow}\n"
    )
    # the allow rule's glob would let it through: only what allow rules match is judged
    assert warnings_of(rules) == ()
    only_deny = (
        "  - {name: hs, match: {method: initialize}, action: allow}\n"
        "  - {name: nd, match: {method: server/discover}, action: deny}\n"
    )
    assert len(warnings_of(only_deny)) == 1


def test_policy_check_prints_the_warning_and_passes(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(HEAD + "  - {name: hs, match: {method: initialize}, action: allow}\n")
    result = CliRunner().invoke(main, ["policy", "check", str(config)])
    assert result.exit_code == 0
    assert "warning: `initialize` is allowed but `server/discover` is not" in result.stderr
