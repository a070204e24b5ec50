"""The PostgreSQL store's tables, views and migrations.

The same tables and columns as the SQLite store (`schema.COLUMNS`, which both backends'
rows are checked against), typed for PostgreSQL. The PostgreSQL history starts at SQLite
schema 4: `MIGRATIONS[0]` builds that whole schema, and later versions add a step to both
backends' lists, so `schema_version` means the same on both. Migrations run under the
chain's advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from holdgate.store.errors import SchemaTooNew, StoreUnavailable
from holdgate.store.schema import (
    ANNOTATIONS,
    APPROVALS_V8_COLUMNS,
    COLUMNS,
    FEED_CURSORS,
    GENESIS,
    INDEXES,
    SHARED_KEYS,
    SHARED_V4,
    TASK_OWNERS,
    TASK_OWNERS_INDEX,
    approvals_view,
)
from holdgate.store.sqlconn import SqlConnection, transaction

FIRST_VERSION = 4  # the SQLite schema version PostgreSQL stores start at
_TYPES = {str: "TEXT", int: "BIGINT", float: "DOUBLE PRECISION"}
# Requests that were refused, whatever the reason: everything but these decisions.
_NOT_DENIED = "('allow', 'pass', 'approve', 'dropped')"

_VIEWS = {
    # A session's own row may be written more than once (each replica notes it): the
    # first one (lowest seq) speaks for it, as SQLite's bare columns do.
    "v_sessions": f"""
WITH s AS (
  SELECT DISTINCT ON (session_id) session_id, "user", upstream, client_addr,
         protocol_version, client, kind, first_seen
  FROM sessions ORDER BY session_id, seq
), e AS (
  SELECT session_id, (array_agg("user" ORDER BY seq))[1] AS "user",
         (array_agg(upstream ORDER BY seq))[1] AS upstream,
         (array_agg(client_addr ORDER BY seq))[1] AS client_addr,
         min(ts) AS first_event, max(ts) AS last_event, count(*) AS events,
         count(*) FILTER (WHERE decision NOT IN {_NOT_DENIED}) AS denials
  FROM events WHERE session_id IS NOT NULL GROUP BY session_id
)
SELECT ids.session_id,
       coalesce(s."user", e."user") AS "user",
       coalesce(s.upstream, e.upstream) AS upstream,
       coalesce(s.client_addr, e.client_addr) AS client_addr,
       s.protocol_version,
       coalesce(s.first_seen, e.first_event) AS first_seen,
       coalesce(e.last_event, s.first_seen) AS last_seen,
       coalesce(e.events, 0) AS events,
       coalesce(e.denials, 0) AS denials,
       s.client,
       coalesce(s.kind, 'mcp') AS kind
FROM (SELECT session_id FROM s UNION SELECT session_id FROM e) AS ids
LEFT JOIN s ON s.session_id = ids.session_id
LEFT JOIN e ON e.session_id = ids.session_id""",
    "v_approvals": approvals_view(ANNOTATIONS, APPROVALS_V8_COLUMNS),
    "v_calls_by_identity": f"""
SELECT "user", upstream, method, target AS tool, count(*) AS "count", min(ts) AS "first",
       max(ts) AS "last", count(*) FILTER (WHERE decision NOT IN {_NOT_DENIED}) AS denials
FROM events WHERE direction = 'request'
GROUP BY "user", upstream, method, target""",
}


def _columns(columns: dict[str, type]) -> str:
    return ", ".join(f'"{name}" {_TYPES[kind]}' for name, kind in columns.items())


def _create_v4(conn: SqlConnection) -> None:
    """The whole schema as of SQLite schema 4, and the head of an empty chain."""
    conn.execute("CREATE TABLE chain_head (id INTEGER PRIMARY KEY, seq BIGINT, row_hash TEXT)")
    conn.execute("INSERT INTO chain_head (id, seq, row_hash) VALUES (1, 0, ?)", [GENESIS])
    for table, columns in SHARED_V4.items():
        _create_shared(conn, table, columns)
    for table, columns in COLUMNS.items():
        conn.execute(
            f'CREATE TABLE "{table}" (seq BIGINT PRIMARY KEY, {_columns(columns)}, '
            "prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL)"
        )
        for index in INDEXES.get(table, []):
            names = ", ".join(f'"{c}"' for c in index)
            conn.execute(f'CREATE INDEX "ix_{table}_{"_".join(index)}" ON "{table}" ({names})')
    for name, sql in _VIEWS.items():
        conn.execute(f'CREATE VIEW "{name}" AS {sql.strip()}')
    conn.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?)", [uuid.uuid4().hex])


def _create_shared(conn: SqlConnection, table: str, columns: dict[str, type]) -> None:
    key = SHARED_KEYS[table]
    conn.execute(f'CREATE TABLE "{table}" ({_columns(columns)}, PRIMARY KEY ("{key}"))')


def _migrate_v5(conn: SqlConnection) -> None:
    """`feed_cursors`, as SQLite's schema 5."""
    _create_shared(conn, "feed_cursors", FEED_CURSORS)


def _migrate_v6(conn: SqlConnection) -> None:
    """`approvals.rule_lineage` and `v_approvals` carrying it, as SQLite's schema 6 (a
    database created at this version already has both: `_create_v4` builds the newest)."""
    conn.execute("ALTER TABLE approvals ADD COLUMN IF NOT EXISTS rule_lineage TEXT")
    conn.execute(f'CREATE OR REPLACE VIEW "v_approvals" AS {_VIEWS["v_approvals"].strip()}')


def _migrate_v7(conn: SqlConnection) -> None:
    """`task_owners`, as SQLite's schema 7."""
    _create_shared(conn, "task_owners", TASK_OWNERS)
    names = ", ".join(f'"{c}"' for c in TASK_OWNERS_INDEX)
    conn.execute(f'CREATE INDEX "ix_task_owners_owner" ON "task_owners" ({names})')


def _migrate_v8(conn: SqlConnection) -> None:
    """`approvals.channel`, `approvals.decided_as`, `config_versions.role` and
    `config_versions.replica`, as SQLite's schema 8."""
    for table, column in (
        ("approvals", "channel"),
        ("approvals", "decided_as"),
        ("config_versions", "role"),
        ("config_versions", "replica"),
    ):
        conn.execute(f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS "{column}" TEXT')
    conn.execute(f'CREATE OR REPLACE VIEW "v_approvals" AS {_VIEWS["v_approvals"].strip()}')


def _migrate_v9(conn: SqlConnection) -> None:
    """`v_approvals` through the (approval_id, seq) index, as SQLite's schema 9."""
    conn.execute(f'CREATE OR REPLACE VIEW "v_approvals" AS {_VIEWS["v_approvals"].strip()}')


MIGRATIONS: list[Callable[[SqlConnection], None]] = [
    _create_v4,
    _migrate_v5,
    _migrate_v6,
    _migrate_v7,
    _migrate_v8,
    _migrate_v9,
]
SCHEMA_VERSION = FIRST_VERSION + len(MIGRATIONS) - 1


def schema_version(conn: SqlConnection) -> int:
    """The store's schema version; 0 for an empty database."""
    found = conn.execute("SELECT to_regclass('meta')").fetchone()
    if found is None or found[0] is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: SqlConnection, name: str) -> None:
    """Bring the database to SCHEMA_VERSION in one transaction (under the chain lock)."""
    if schema_version(conn) == SCHEMA_VERSION:
        return
    with transaction(conn):
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{name}: schema {version}, this holdgate knows {SCHEMA_VERSION}")
        if version == 0:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            ).fetchone()[0]
            if tables:
                raise StoreUnavailable(
                    f"{name} has tables but is not a holdgate audit store; give holdgate a "
                    "database (or schema) of its own"
                )
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            steps = MIGRATIONS
        else:
            steps = MIGRATIONS[version - FIRST_VERSION + 1 :]
        for step in steps:
            step(conn)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [str(SCHEMA_VERSION)],
        )
