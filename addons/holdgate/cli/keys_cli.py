"""`holdgate keys …`: API keys for service identities, and (`keys signing`, in
records_cli) the key that signs audit checkpoints."""

from __future__ import annotations

import json
import sys

import click

from holdgate.cli.lazy_group import LazyCommand, LazyGroup
from holdgate.identity.identities import api_key_hash, generate_api_key


@click.group(
    cls=LazyGroup,
    lazy={
        "signing": LazyCommand(
            "holdgate.cli.records_cli:signing",
            "Ed25519 keys that sign audit checkpoints (the config's checkpoints.key).",
        )
    },
)
def keys() -> None:
    """API keys for service identities (the config stores only their SHA-256), and the
    key that signs audit checkpoints (`keys signing new`)."""


@keys.command("new")
@click.option("--name", required=True, help="The identity's name, e.g. ci-bot.")
@click.option("--groups", default="", help="Comma-separated groups.")
def keys_new(name: str, groups: str) -> None:
    """Make a random API key and print the config entry that accepts it."""
    key, digest = generate_api_key()
    group_list = [g.strip() for g in groups.split(",") if g.strip()]
    click.echo(f"API key (give it to the client, it is not stored anywhere): {key}")
    click.echo("config entry for identity.api_keys:")
    click.echo(f"  - name: {name}\n    sha256: {digest}\n    groups: {json.dumps(group_list)}")


@keys.command("hash")
@click.argument("key", required=False)
def keys_hash(key: str | None) -> None:
    """Print the SHA-256 of an existing key (read from stdin when not given)."""
    value = key if key is not None else sys.stdin.readline().strip()
    if not value:
        raise click.UsageError("give the key as an argument or on stdin")
    click.echo(api_key_hash(value))
