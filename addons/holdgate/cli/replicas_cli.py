"""`holdgate replicas`: the gateways sharing the store, whether each is alive, and whether
the live ones run the same config.

Alive, lapsed and heartbeat ages are judged by the database's clock (as the gateways judge
leases), so the answer is the same from any host.
"""

from __future__ import annotations

import click

from holdgate.cli.common import db_option, opened
from holdgate.store import ReplicaRecord
from holdgate.store.replica_records import quoted

SHORT_HASH = 12


def _state(row: ReplicaRecord) -> str:
    return "alive" if row["alive"] else "gone" if row["gone"] else "lapsed"


def _age(row: ReplicaRecord) -> str:
    age = row["age"]
    return "stopped" if age is None else f"{age:.1f}s ago"


def drifted(rows: list[ReplicaRecord]) -> bool:
    """Whether the live replicas run more than one config."""
    return len({r["config_hash"] for r in rows if r["alive"]}) > 1


def replica_lines(rows: list[ReplicaRecord]) -> list[str]:
    """One line per replica, a drift marker on live ones when their configs differ."""
    drift = drifted(rows)
    lines = []
    for row in rows:
        config = (row["config_hash"] or "-")[:SHORT_HASH]
        marker = "  * config drift" if drift and row["alive"] else ""
        lines.append(
            f"{quoted(row['replica'])}  {_state(row):<6}  heartbeat {_age(row)}  "
            f"config {config}  host {quoted(row['host'])}  pid {row['pid']}  "
            f"listen {quoted(row['listen'])}  version {row['version']}{marker}"
        )
    if drift:
        count = len({r["config_hash"] for r in rows if r["alive"]})
        lines.append(
            f"config drift: the live replicas run {count} different configs; reload or "
            "restart the ones marked * with the same config file"
        )
    return lines


@click.command("replicas")
@db_option
def replicas(db: str) -> None:
    """The gateways sharing the store: alive or lapsed, heartbeat age, config, host."""
    with opened(db) as store:
        rows = store.replicas()
    if not rows:
        click.echo("no replicas have registered in this store")
    for line in replica_lines(rows):
        click.echo(line)
