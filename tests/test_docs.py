"""The docs are held to the code: every `holdgate_*` option, CLI command and metric is
documented, the addon order written in docs/architecture.md is `default_addons()`'s, and
every link in README.md and docs/ resolves inside the repository (or is a public web page).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click
import pytest
from mitmproxy.test import taddons
from prometheus_client.parser import text_string_to_metric_families

from holdgate.addons import default_addons
from holdgate.addons.pipeline import Pipeline
from holdgate.cli.main import main
from holdgate.config.options import OPTIONS, PREFIX
from holdgate.telemetry.metrics import GatewayMetrics, Snapshot

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
AUTOLINK = re.compile(r"<((?:https?|file|ftp)://[^>\s]+)>")
INLINE_CODE = re.compile(r"`+[^`]*`+")


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a Markdown file outside fenced blocks, inline code removed."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, INLINE_CODE.sub("", line)


def documentation() -> str:
    return "\n".join(path.read_text() for path in DOCS)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines_with_code(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match is None:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def prose_lines_with_code(path: Path) -> Iterator[tuple[int, str]]:
    """Lines outside fenced blocks, inline code kept (headings keep their code spans)."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            yield number, line


def links(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in prose_lines(path):
        for pattern in (LINK, IMAGE, AUTOLINK):
            for match in pattern.finditer(line):
                yield number, match.group(1)
        if (match := REFERENCE.match(line)) is not None:
            yield number, match.group(1)


def declared_options() -> set[str]:
    """Every `holdgate_*` option the addons declare in `load`, as mitmproxy sees them."""
    with taddons.context(Pipeline(default_addons())) as tctx:
        return {name for name in tctx.options.keys() if name.startswith(PREFIX)}


def cli_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and subcommand (the lazy groups load their modules here)."""
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, (*path, name)
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from cli_commands(command, (*path, name))


def metric_names() -> set[str]:
    """Every metric in the gateway's registry, as a scraper sees it (counters with `_total`)."""
    snapshot = Snapshot(
        queue_depth=0,
        rows_lost=0,
        store_healthy=True,
        approvals_pending=0,
        config_digest="d",
        jwks_fetches={},
        config_reload_failures=0,
        config_file_in_force=True,
    )
    metrics = GatewayMetrics(lambda: snapshot, "0")
    metrics.know(["crm"], ["reads"], ["email"])
    text = metrics.exposition()[1].decode()
    return {
        family.name + "_total" if family.type == "counter" else family.name
        for family in text_string_to_metric_families(text)
    }


def documented_command(path: tuple[str, ...], text: str) -> bool:
    """`holdgate a b` written out, or in a table row listing a group's subcommands the way
    the CLI table does: `holdgate a x / b / c`, `holdgate a x|b|c`."""
    if f"holdgate {' '.join(path)}" in text:
        return True
    *group, last = path
    if not group:
        return False
    listing = re.compile(
        rf"holdgate {re.escape(' '.join(group))} [\w-]+(?:\s*(?:/|\\?\|)\s*[\w-]+)*"
    )
    return any(
        last in re.split(r"\s*(?:/|\\?\|)\s*|\s+", m.group(0)) for m in listing.finditer(text)
    )


def test_the_option_list_is_what_the_addons_declare() -> None:
    assert declared_options() == set(OPTIONS)


@pytest.mark.parametrize("option", sorted(set(OPTIONS) | declared_options()))
def test_every_option_is_documented(option: str) -> None:
    assert f"| `{option}` |" in documentation(), (
        f"{option} has no row in an options table (docs/operations.md, 'Options')"
    )


def test_the_options_table_names_only_real_options() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Options (`--set name=value`)", 1)[1].split("\n## ", 1)[0]
    written = set(re.findall(r"^\| `(holdgate_\w+)` \|", section, re.M))
    assert written == set(OPTIONS) | declared_options()


@pytest.mark.parametrize("command", [" ".join(c) for c in cli_commands(main)])
def test_every_cli_command_is_documented(command: str) -> None:
    assert documented_command(tuple(command.split()), documentation()), (
        f"`holdgate {command}` is not in the docs (docs/guide.md, 'CLI')"
    )


@pytest.mark.parametrize("metric", sorted(metric_names()))
def test_every_metric_is_documented(metric: str) -> None:
    assert f"| `{metric}` |" in documentation(), (
        f"{metric} has no row in the metrics table (docs/operations.md, 'Metrics')"
    )


def test_the_architecture_page_has_the_addon_order() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"^```addon-order\n(.*?)^```", text, re.M | re.S)
    assert block is not None, "docs/architecture.md has no ```addon-order block"
    written = block.group(1).split()
    assert written == [type(addon).__name__ for addon in default_addons()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(doc: Path) -> None:
    problems = []
    for number, target in links(doc):
        where = f"{doc.relative_to(ROOT)}:{number}: {target}"
        parts = urlsplit(target)
        if parts.scheme in ("http", "https"):
            host = parts.hostname or ""
            if host in ("localhost", "") or host.startswith(("127.", "[::1]", "::1")):
                problems.append(f"{where}: a local address, not a public page")
            continue
        if parts.scheme or parts.netloc or target.startswith("/"):
            problems.append(f"{where}: not a page of this repository nor a public web page")
            continue
        file = (doc.parent / unquote(parts.path)).resolve() if parts.path else doc
        if not file.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
        elif not file.exists():
            problems.append(f"{where}: no such file")
        elif parts.fragment and file.suffix == ".md" and parts.fragment not in anchors(file):
            problems.append(f"{where}: no heading #{parts.fragment} in {file.name}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_doc_names_a_file_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "DESIGN.md" not in text, f"{doc.name} cites DESIGN.md, which is not in the repository"
    assert not re.search(r"(?<![\w.])(?:/work/|/home/|/tmp/|\.\./shared)", text), doc.name


def test_the_readme_stays_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
