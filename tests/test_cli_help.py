"""Every `holdgate` command says what it does, and `--help` works for each; the command
groups load their modules only when used (so `holdgate --help` starts fast)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from helpers.processes import HOLDGATE
from holdgate.cli.lazy_group import LazyGroup
from holdgate.cli.main import main


def subcommand(group: click.Group, name: str) -> click.Command:
    """`name` in `group`, loaded (a lazy group imports its module here)."""
    command = group.get_command(click.Context(group), name)
    assert command is not None, name
    return command


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name in group.list_commands(click.Context(group)):
        command = subcommand(group, name)
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
        "sessions event",
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
        command = subcommand(command, name)
    assert command.help and command.get_short_help_str().strip()
    result = CliRunner().invoke(main, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert " ".join(command.help.split()[:6]) in " ".join(result.output.split())
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name != "help":
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"


def lazy_groups(group: click.Group) -> Iterator[LazyGroup]:
    if isinstance(group, LazyGroup):
        yield group
    for name in group.list_commands(click.Context(group)):
        command = subcommand(group, name)
        if isinstance(command, click.Group):
            yield from lazy_groups(command)


def test_the_listed_summaries_are_the_commands_own() -> None:
    """A lazy group lists a command by a summary written beside its import path: it must be
    the first sentence of the command's own help, as click would show it."""
    for group in lazy_groups(main):
        for name, lazy in group.lazy.items():
            assert lazy.summary == subcommand(group, name).get_short_help_str(10_000), name


def test_help_lists_the_same_before_and_after_the_commands_load() -> None:
    """`holdgate --help` (nothing loaded: the summaries) shows what it shows once every
    command is loaded (their own help), both in fresh processes of the same width."""
    load_all_then_help = textwrap.dedent("""
        import click, sys
        from holdgate.cli.main import main
        def load(group):
            for name in group.list_commands(click.Context(group)):
                command = group.get_command(click.Context(group), name)
                if isinstance(command, click.Group):
                    load(command)
        load(main)
        sys.argv[0] = "holdgate"
        main(["--help"])
    """)
    outputs = []
    for command in ([HOLDGATE, "--help"], [sys.executable, "-c", load_all_then_help]):
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80"}
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    fresh, loaded = outputs
    assert "approvals" in fresh and "verify" in fresh
    assert fresh == loaded


HEAVY = ("psycopg", "mitmproxy.io", "holdgate.config.gateway_config", "holdgate.identity")


def loaded_modules(code: str) -> set[str]:
    """The modules a fresh interpreter has after running `code`."""
    done = subprocess.run(
        [sys.executable, "-c", code + '\nimport sys\nprint("\\n".join(sys.modules))'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_the_command_line_starts_without_the_heavy_imports() -> None:
    """`import holdgate.cli.main` loads no store backend, no mitmproxy flow files and no
    config stack: a structural check that `holdgate --help` stays cheap to start."""
    assert heavy(loaded_modules("import holdgate.cli.main")) == set()


def test_approvals_on_a_sqlite_store_load_no_postgresql_driver(tmp_path) -> None:
    """`holdgate approvals list` on a SQLite store runs without psycopg, mitmproxy's flow
    files or the config stack ever being imported."""
    db = tmp_path / "audit.sqlite3"
    code = textwrap.dedent(f"""
        from holdgate.store import open_store
        open_store({str(db)!r}, create=True).close()
        from click.testing import CliRunner
        from holdgate.cli.main import main
        result = CliRunner().invoke(main, ["approvals", "list", "--db", {str(db)!r}])
        assert result.exit_code == 0 and "no approvals waiting" in result.output, result.output
    """)
    assert heavy(loaded_modules(code)) == set()
