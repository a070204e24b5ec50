"""The SQLite store's tables, views and migrations, and how a connection to it is opened.

`MIGRATIONS[n]` takes a store from schema version n to n + 1; opening a store runs the
missing ones in one transaction, so a store is never left half migrated.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable

from sqlite_utils import Database

from holdgate.store.errors import SchemaTooNew, StoreError, StoreNotFound, StoreUnavailable
from holdgate.store.sqlconn import transaction

GENESIS = "0" * 64
DECISIONS = ("approved", "denied", "expired", "cancelled")
# Logged against an approval without changing its state (`redeemed`: the one call an
# approval given through MCP elicitation let through).
ANNOTATIONS = ("refused_attempt", "grant_used", "redeemed")
APPROVAL_STATES = ("pending", *DECISIONS, *ANNOTATIONS)
# The columns `v_approvals` carries beyond schema 1's, since schema 8.
APPROVALS_V8_COLUMNS = ", a.via, a.replica, a.rule_lineage, a.channel, a.decided_as"

_V1: dict[str, dict[str, type]] = {
    "sessions": {
        "session_id": str,
        "user": str,
        "upstream": str,
        "client_addr": str,
        "protocol_version": str,
        "first_seen": str,
    },
    "events": {
        "ts": str,
        "flow_id": str,
        "session_id": str,
        "direction": str,
        "user": str,
        "groups": str,
        "auth_method": str,
        "upstream": str,
        "method": str,
        "target": str,
        "jsonrpc_id": str,
        "args_digest": str,
        "args_masked": str,
        "decision": str,
        "rule": str,
        "reason": str,
        "approval_id": str,
        "status": int,
        "latency_ms": float,
        "masked": str,
        "config_hash": str,
        "client_addr": str,
        "extra": str,
    },
    "approvals": {
        "ts": str,
        "approval_id": str,
        "state": str,
        "requester": str,
        "upstream": str,
        "method": str,
        "tool": str,
        "args_masked": str,
        "args_digest": str,
        "request_digest": str,
        "rule": str,
        "approvers": str,
        "decider": str,
        "reason": str,
        "created": str,
        "expires": str,
        "changes": str,
        "flow_id": str,
    },
    "config_versions": {
        "ts": str,
        "config_hash": str,
        "source": str,
        "outcome": str,
        "detail": str,
        "content": str,
    },
    "tool_pins": {
        "ts": str,
        "upstream": str,
        "tool": str,
        "definition_digest": str,
        "definition": str,
        "event": str,
        "actor": str,
        "detail": str,
    },
    "checkpoints": {
        "ts": str,
        "first_seq": int,
        "last_seq": int,
        "last_hash": str,
        "cutoff": str,
        "removed": str,
        "actor": str,
    },
}

# v2: a purge record lists the rows it kept in the purged range (current pins, config
# versions in use).
_V2 = {**_V1, "checkpoints": {**_V1["checkpoints"], "kept": str}}
# The content columns of each chained table as of the newest schema version. v3: sessions
# name their client and their kind ("mcp": a protocol session id, "grouped": Holdgate
# grouped activity without one); events keep the request's W3C traceparent; approvals say
# how they wait (`via`; NULL in older rows: held). v4: a held approval names the replica
# holding it; each closed flow file (segment) is a `recordings` row.
_V3 = {
    **_V2,
    "sessions": {**_V2["sessions"], "client": str, "kind": str},
    "events": {**_V2["events"], "traceparent": str},
    "approvals": {**_V2["approvals"], "via": str},
}
RECORDINGS: dict[str, type] = {
    "ts": str,
    "replica": str,
    "session_id": str,
    "file": str,
    "flows": int,
    "bytes": int,
    "sha256": str,
}
# Access-review certification campaigns: a campaign's life (started, closed, applied) and
# its items, each an (identity, grant) whose rows go open -> keep | revoke, never updated.
CAMPAIGNS: dict[str, type] = {
    "ts": str,
    "campaign_id": str,
    "event": str,
    "period_start": str,
    "period_end": str,
    "config_hash": str,
    "actor": str,
    "detail": str,
}
CERTIFICATIONS: dict[str, type] = {
    "ts": str,
    "campaign_id": str,
    "item_id": str,
    "user": str,
    "upstream": str,
    "target_kind": str,
    "target": str,
    "rule": str,
    "usage": str,
    "state": str,
    "reviewer": str,
    "reason": str,
}
# v6: an approval names the lineage of the rule that asked for it (`rules.rule_lineage`):
# it may be spent only while that rule is unchanged.
# v8: a decision names its channel (api, cli, inbox, mitmweb, break-glass)
# and the identity that made it as authenticated (`decided_as`, JSON); a config version
# names its role (active, candidate: a shadow policy; NULL before v8: active) and the
# replica that loaded it.
COLUMNS: dict[str, dict[str, type]] = {
    **_V3,
    "approvals": {
        **_V3["approvals"],
        "replica": str,
        "rule_lineage": str,
        "channel": str,
        "decided_as": str,
    },
    "config_versions": {**_V3["config_versions"], "role": str, "replica": str},
    "recordings": RECORDINGS,
    "campaigns": CAMPAIGNS,
    "certifications": CERTIFICATIONS,
}
# State the replicas share that is not evidence (never hashed, updated in place): who is
# alive (heartbeats by the database clock), rate-limit windows, approval grants, session
# owners (schema 4); each audit feed's cursor (schema 5).
SHARED_V4 = {
    "replicas": {
        "replica": str,
        "instance": str,
        "host": str,
        "pid": int,
        "listen": str,
        "started": str,
        "heartbeat": float,
        "config_hash": str,
        "version": str,
    },
    "rate_counters": {"bucket": str, "window_start": float, "hits": int},
    "grants": {"grant_key": str, "approval_id": str, "expires": float},
    # which identity opened each upstream session (keyed by a digest, not the raw id)
    "session_owners": {"session_key": str, "owner": str, "first_seen": float},
}
# each audit feed's durable cursor (the last seq its receiver took) and who sends it now:
# the replica whose lease (database clock) runs
FEED_CURSORS = {
    "feed": str,
    "seq": int,
    "updated": float,
    "holder": str,
    "lease_until": float,
    "last_error": str,
}
# which identity each upstream task belongs to and the call that created it (schema 7;
# keyed by a digest of upstream and task id; holdgate.store.task_records)
TASK_OWNERS = {
    "task_key": str,
    "owner": str,
    "upstream": str,
    "session_id": str,
    "tool": str,
    "call_flow_id": str,
    "call_jsonrpc_id": str,
    "created": float,
    "expires": float,
}
SHARED = {**SHARED_V4, "feed_cursors": FEED_CURSORS, "task_owners": TASK_OWNERS}
SHARED_KEYS = {
    "replicas": "replica",
    "rate_counters": "bucket",
    "grants": "grant_key",
    "session_owners": "session_key",
    "feed_cursors": "feed",
    "task_owners": "task_key",
}
# a caller's tasks are listed newest first (tasks/list filtering)
TASK_OWNERS_INDEX = ["owner", "upstream", "created"]
CHAINED = tuple(COLUMNS)
TIME_COLUMN = {t: "first_seen" if t == "sessions" else "ts" for t in CHAINED}

_INDEXES_V1 = {
    "events": [
        ["ts"],
        ["session_id", "seq"],
        ["user", "ts"],
        ["upstream", "target"],
        ["approval_id"],
    ],
    "approvals": [["approval_id", "seq"], ["ts"]],
    "sessions": [["session_id"], ["first_seen"]],
}
# Every index as of the newest version (PostgreSQL stores are built with these at once).
INDEXES = {
    **_INDEXES_V1,
    "recordings": [["session_id", "seq"]],
    "certifications": [["campaign_id", "item_id", "seq"]],
}

# Requests that were refused, whatever the reason: everything but these decisions.
_NOT_DENIED = "('allow', 'pass', 'approve', 'dropped')"


def _sessions_view(session_columns: str, extra_select: str) -> str:
    """Each session: its `sessions` row (who opened it) joined with what its events say."""
    return f"""
WITH s AS (
  SELECT session_id, user, upstream, client_addr, protocol_version{session_columns},
         min(first_seen) AS first_seen
  FROM sessions GROUP BY session_id
), e AS (
  SELECT session_id, user, upstream, client_addr, min(ts) AS first_event,
         max(ts) AS last_event, count(*) AS events,
         sum(decision NOT IN {_NOT_DENIED}) AS denials
  FROM events WHERE session_id IS NOT NULL GROUP BY session_id
)
SELECT ids.session_id,
       coalesce(s.user, e.user) AS user,
       coalesce(s.upstream, e.upstream) AS upstream,
       coalesce(s.client_addr, e.client_addr) AS client_addr,
       s.protocol_version,
       coalesce(s.first_seen, e.first_event) AS first_seen,
       coalesce(e.last_event, s.first_seen) AS last_seen,
       coalesce(e.events, 0) AS events,
       coalesce(e.denials, 0) AS denials{extra_select}
FROM (SELECT session_id FROM s UNION SELECT session_id FROM e) AS ids
LEFT JOIN s ON s.session_id = ids.session_id
LEFT JOIN e ON e.session_id = ids.session_id"""


def approvals_view(annotations: tuple[str, ...], extra_columns: str) -> str:
    """Each approval's latest state (annotations do not change it).

    A row is the latest when no later row of its approval is a state (an anti-join on the
    (approval_id, seq) index): `WHERE approval_id IN (…)` (the held calls' sweep, four
    times a second) reads those approvals' rows only, and a whole read costs about what
    the grouped join it replaces (schema 9) did, which built the latest seq of every
    approval ever asked for on each read, however few were asked for."""
    return f"""
SELECT a.approval_id, a.state, a.requester, a.upstream, a.method, a.tool, a.rule,
       a.approvers, a.decider, a.reason, a.created, a.expires,
       CASE WHEN a.state = 'pending' THEN NULL ELSE a.ts END AS decided,
       a.args_masked, a.args_digest, a.request_digest, a.changes, a.flow_id, a.seq{extra_columns}
FROM approvals AS a
WHERE a.state NOT IN {annotations!r}
  AND NOT EXISTS (SELECT 1 FROM approvals AS later
                  WHERE later.approval_id = a.approval_id AND later.seq > a.seq
                    AND later.state NOT IN {annotations!r})"""


_VIEWS_V1 = {
    "v_sessions": _sessions_view("", ""),
    "v_approvals": approvals_view(("refused_attempt", "grant_used"), ""),
    "v_calls_by_identity": f"""
SELECT user, upstream, method, target AS tool, count(*) AS "count", min(ts) AS "first",
       max(ts) AS "last", sum(decision NOT IN {_NOT_DENIED}) AS denials
FROM events WHERE direction = 'request'
GROUP BY user, upstream, method, target""",
}


def _migrate_v1(db: Database) -> None:
    """Tables, indexes, views and the head of an empty chain."""
    db["meta"].create({"key": str, "value": str}, pk="key")  # type: ignore[union-attr]
    db["chain_head"].create({"id": int, "seq": int, "row_hash": str}, pk="id")  # type: ignore[union-attr]
    db.execute("INSERT INTO chain_head (id, seq, row_hash) VALUES (1, 0, ?)", [GENESIS])
    for table, columns in _V1.items():
        db[table].create(  # type: ignore[union-attr]
            {"seq": int, **columns, "prev_hash": str, "row_hash": str},
            pk="seq",
            not_null={"prev_hash", "row_hash"},
        )
        for index in _INDEXES_V1.get(table, []):
            db[table].create_index(index, index_name=f"ix_{table}_{'_'.join(index)}")  # type: ignore[union-attr]
    for name, sql in _VIEWS_V1.items():
        db.create_view(name, sql.strip())


def _migrate_v2(db: Database) -> None:
    """The store's random id (signed checkpoints name it) and `checkpoints.kept`."""
    db.execute("ALTER TABLE checkpoints ADD COLUMN kept TEXT")
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)", [uuid.uuid4().hex])


def _migrate_v3(db: Database) -> None:
    """`sessions.client`, `sessions.kind`, `events.traceparent`, `approvals.via` (nullable:
    old rows, which hash without them, still verify); `v_sessions` carrying client and
    kind, `v_approvals` carrying `via` and keeping the `redeemed` annotation out of an
    approval's state."""
    db.execute("ALTER TABLE sessions ADD COLUMN client TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN kind TEXT")
    db.execute("ALTER TABLE events ADD COLUMN traceparent TEXT")
    db.execute("ALTER TABLE approvals ADD COLUMN via TEXT")
    db.execute("DROP VIEW v_sessions")
    db.create_view(
        "v_sessions",
        _sessions_view(
            ", client, kind", ",\n       s.client,\n       coalesce(s.kind, 'mcp') AS kind"
        ).strip(),
    )
    db.execute("DROP VIEW v_approvals")
    db.create_view("v_approvals", approvals_view(ANNOTATIONS, ", a.via").strip())


def _migrate_v4(db: Database) -> None:
    """`approvals.replica`, the chained `recordings`, `campaigns` and `certifications`
    tables, and the replicas' shared state (`replicas`, `rate_counters`, `grants`: not
    chained, updated in place)."""
    db.execute("ALTER TABLE approvals ADD COLUMN replica TEXT")
    for table, columns in (
        ("recordings", RECORDINGS),
        ("campaigns", CAMPAIGNS),
        ("certifications", CERTIFICATIONS),
    ):
        db[table].create(  # type: ignore[union-attr]
            {"seq": int, **columns, "prev_hash": str, "row_hash": str},
            pk="seq",
            not_null={"prev_hash", "row_hash"},
        )
    db["recordings"].create_index(["session_id", "seq"], index_name="ix_recordings_session")  # type: ignore[union-attr]
    db["certifications"].create_index(  # type: ignore[union-attr]
        ["campaign_id", "item_id", "seq"], index_name="ix_certifications_item"
    )
    for table, columns in SHARED_V4.items():
        db[table].create(columns, pk=SHARED_KEYS[table])  # type: ignore[union-attr]
    db.execute("DROP VIEW v_approvals")
    db.create_view("v_approvals", approvals_view(ANNOTATIONS, ", a.via, a.replica").strip())


def _migrate_v5(db: Database) -> None:
    """`feed_cursors`: where each audit feed stands (not chained, updated in place)."""
    db["feed_cursors"].create(FEED_CURSORS, pk=SHARED_KEYS["feed_cursors"])  # type: ignore[union-attr]


def _migrate_v6(db: Database) -> None:
    """`approvals.rule_lineage` (NULL in older rows: such an approval is never spent after
    its decision's hold), carried by `v_approvals`."""
    db.execute("ALTER TABLE approvals ADD COLUMN rule_lineage TEXT")
    db.execute("DROP VIEW v_approvals")
    db.create_view(
        "v_approvals",
        approvals_view(ANNOTATIONS, ", a.via, a.replica, a.rule_lineage").strip(),
    )


def _migrate_v7(db: Database) -> None:
    """`task_owners`: who owns each upstream task (not chained, shared by replicas)."""
    db["task_owners"].create(TASK_OWNERS, pk=SHARED_KEYS["task_owners"])  # type: ignore[union-attr]
    db["task_owners"].create_index(TASK_OWNERS_INDEX, index_name="ix_task_owners_owner")  # type: ignore[union-attr]


def _migrate_v8(db: Database) -> None:
    """`approvals.channel` and `approvals.decided_as` (carried by `v_approvals`),
    `config_versions.role` and `config_versions.replica`."""
    db.execute("ALTER TABLE approvals ADD COLUMN channel TEXT")
    db.execute("ALTER TABLE approvals ADD COLUMN decided_as TEXT")
    db.execute("ALTER TABLE config_versions ADD COLUMN role TEXT")
    db.execute("ALTER TABLE config_versions ADD COLUMN replica TEXT")
    _recreate_approvals_view(db)


def _migrate_v9(db: Database) -> None:
    """`v_approvals` reads an approval's rows through the index, not every approval's."""
    _recreate_approvals_view(db)


def _recreate_approvals_view(db: Database) -> None:
    db.execute("DROP VIEW v_approvals")
    db.create_view("v_approvals", approvals_view(ANNOTATIONS, APPROVALS_V8_COLUMNS).strip())


MIGRATIONS: list[Callable[[Database], None]] = [
    _migrate_v1,
    _migrate_v2,
    _migrate_v3,
    _migrate_v4,
    _migrate_v5,
    _migrate_v6,
    _migrate_v7,
    _migrate_v8,
    _migrate_v9,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's schema version; 0 for an empty file."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    if schema_version(conn) == SCHEMA_VERSION:
        return
    with transaction(conn):
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{path}: schema {version}, this holdgate knows {SCHEMA_VERSION}")
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreUnavailable(f"{path} is an SQLite file but not a holdgate audit store")
        db = Database(conn, recursive_triggers=False, execute_plugins=False)
        for migration in MIGRATIONS[version:]:
            migration(db)
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            [str(SCHEMA_VERSION)],
        )


def open_db(
    path: str | os.PathLike[str], *, create: bool = True, busy_timeout: float = 5.0
) -> Database:
    """Open (and create or migrate) a store: WAL mode, busy timeout, autocommit connection."""
    name = os.fspath(path)
    if not create and not os.path.exists(name):
        raise StoreNotFound(f"no audit store at {name}")
    try:
        conn = sqlite3.connect(
            name, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{name}: {exc}") from exc
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        _migrate(conn, name)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreUnavailable(f"{name}: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return Database(conn, recursive_triggers=False, execute_plugins=False)
