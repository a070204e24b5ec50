"""Replicas in the store: who shares it, and whether each is still alive.

Each gateway process upserts its row in the unchained `replicas` table at start and
heartbeats it; a replica is alive while its heartbeat is within `LEASE` seconds, judged by
the database clock (`Store.db_now`), so hosts with skewed clocks agree. A row names its
`instance` (random per process start): a second live process under the same replica name
is refused at registration, and a heartbeat that finds another instance in the row
returns False. At shutdown a replica sets its heartbeat to `GONE`.

These are plain statements in a write transaction: the table is shared state, not
evidence, and is never hashed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import cast

from holdgate.protocol.jsonrpc import shown
from holdgate.store.errors import ReplicaNameTaken
from holdgate.store.rows import ReplicaRecord
from holdgate.store.sqlconn import SqlConnection, select, transaction

LEASE = 10.0  # seconds a heartbeat keeps a replica alive, by the database clock
GONE = 0.0  # the heartbeat of a replica that shut down


@dataclass(frozen=True)
class ReplicaInfo:
    """What a replica says about itself when it registers."""

    replica: str
    instance: str
    host: str
    pid: int
    listen: str
    started: str
    config_hash: str | None
    version: str


def quoted(replica: str | None) -> str:
    """A replica name as messages show it: quoted, escaped, bounded."""
    return shown(replica or "")


# Whether the process (host, pid) of a row is known to have exited (e.g. on this host).
ProcessGone = Callable[[str | None, int | None], bool]


def register(
    conn: SqlConnection,
    info: ReplicaInfo,
    now: float,
    lease: float = LEASE,
    process_gone: ProcessGone | None = None,
) -> None:
    """Claim the replica's row (heartbeat `now`), unless another instance holds the name
    and is alive (its lease runs, and `process_gone` does not know it exited, as after a
    crash and restart on the same host): then `ReplicaNameTaken`."""
    with transaction(conn):
        rows = select(
            conn,
            "SELECT instance, heartbeat, host, pid FROM replicas WHERE replica = ?",
            [info.replica],
        )
        holder = rows[0] if rows else None
        if (
            holder is not None
            and holder["instance"] != info.instance
            and _alive(holder["heartbeat"], now, lease)
            and not (process_gone is not None and process_gone(holder["host"], holder["pid"]))
        ):
            raise ReplicaNameTaken(
                f"replica {quoted(info.replica)} is already in use by a live gateway (another "
                f"process heartbeats under that name): give each gateway its own "
                f"holdgate_replica"
            )
        conn.execute(
            "INSERT INTO replicas (replica, instance, host, pid, listen, started, heartbeat, "
            "config_hash, version) VALUES (:replica, :instance, :host, :pid, :listen, :started, "
            ":heartbeat, :config_hash, :version) ON CONFLICT (replica) DO UPDATE SET "
            "instance = excluded.instance, host = excluded.host, pid = excluded.pid, "
            "listen = excluded.listen, started = excluded.started, "
            "heartbeat = excluded.heartbeat, config_hash = excluded.config_hash, "
            "version = excluded.version",
            {**asdict(info), "heartbeat": now},
        )


def heartbeat(
    conn: SqlConnection, replica: str, instance: str, config_hash: str | None, now: float
) -> bool:
    """Renew this instance's lease; False when the row is another instance's, or marked
    gone (a beat racing the shutdown never revives it)."""
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE replicas SET heartbeat = ?, config_hash = ? "
            "WHERE replica = ? AND instance = ? AND heartbeat <> ?",
            [now, config_hash, replica, instance, GONE],
        )
        return bool(cursor.rowcount == 1)


def retire(conn: SqlConnection, replica: str, instance: str) -> None:
    """Mark this instance gone (shutdown); another instance's row is left alone."""
    with transaction(conn):
        conn.execute(
            "UPDATE replicas SET heartbeat = ? WHERE replica = ? AND instance = ?",
            [GONE, replica, instance],
        )


def listed(conn: SqlConnection, now: float, lease: float = LEASE) -> list[ReplicaRecord]:
    """Every replica, by name, with `alive`, `gone` and `age` as of `now`."""
    rows = select(conn, "SELECT * FROM replicas ORDER BY replica")
    for row in rows:
        beat = float(row["heartbeat"] or GONE)
        row["heartbeat"] = beat
        row["gone"] = beat == GONE
        row["alive"] = _alive(beat, now, lease)
        row["age"] = None if row["gone"] else max(0.0, now - beat)
    return cast(list[ReplicaRecord], rows)


def lapsed(
    conn: SqlConnection, replicas: Iterable[str], now: float, lease: float = LEASE
) -> set[str]:
    """Which of these replica names are not alive: lease lapsed, marked gone, or no row."""
    names = sorted(set(replicas))
    if not names:
        return set()
    marks = ", ".join("?" for _ in names)
    rows = select(
        conn, f"SELECT replica, heartbeat FROM replicas WHERE replica IN ({marks})", names
    )
    alive = {r["replica"] for r in rows if _alive(r["heartbeat"], now, lease)}
    return set(names) - alive


def holder_lost(replica: str) -> str:
    """The reason an approval whose holder died is closed with."""
    return f"holder lost: replica {quoted(replica)} stopped heartbeating"


def _alive(heartbeat: float | None, now: float, lease: float) -> bool:
    beat = float(heartbeat or GONE)
    return beat != GONE and now - beat < lease
