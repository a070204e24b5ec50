"""Every `holdgate` command says what it does, and `--help` works for each."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from holdgate.cli.main import main


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = list(commands(main))


def test_the_tree_has_every_command() -> None:
    assert {" ".join(c) for c in ALL} >= {
        "approvals approve",
        "approvals deny",
        "approvals list",
        "approvals show",
        "approvals watch",
        "export",
        "keys hash",
        "keys new",
        "policy check",
        "policy explain",
        "policy replay",
        "policy test",
        "purge",
        "review",
        "sessions list",
        "sessions show",
        "tools list",
        "tools pin",
        "tools show",
        "verify",
    }


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help and command.get_short_help_str().strip()
    result = CliRunner().invoke(main, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert " ".join(command.help.split()[:6]) in " ".join(result.output.split())
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name != "help":
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"
