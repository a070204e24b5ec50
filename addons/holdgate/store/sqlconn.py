"""The one connection shape the store's SQL is written against, and PostgreSQL behind it.

The chain, approvals, queries, purge and checkpoint modules are written once, in SQL both
backends read the same way (qmark or `:name` parameters, quoted identifiers such as
`"user"`), against `SqlConnection`: what `sqlite3.Connection` already offers. `PgConnection`
gives psycopg the same shape: it rewrites parameters to psycopg's `%s` / `%(name)s`, and
turns the two transaction kinds the modules open into their PostgreSQL meaning:

- `BEGIN IMMEDIATE` (every change): BEGIN, then a transaction-scoped advisory lock, so the
  writers of every replica append to the one chain one at a time, `seq` dense and in commit
  order, and two deciders of one approval are serialized exactly as SQLite serializes them;
- `BEGIN` (a read that must see one snapshot, e.g. `verify`): REPEATABLE READ.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import psycopg

# The advisory lock every write transaction takes (any constant; "hg" in ASCII).
CHAIN_LOCK = 0x6867


class Cursor(Protocol):
    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SqlConnection(Protocol):
    """What the store's SQL modules use of a connection (sqlite3's own shape)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def to_pyformat(sql: str, named: bool) -> str:
    """qmark (`?`) or `:name` parameters as psycopg's; a literal `%` doubled. The store's
    SQL never has `?` or `:name` inside a string literal."""
    text = sql.replace("%", "%%")
    if named:
        return _NAMED.sub(r"%(\1)s", text)
    return text.replace("?", "%s")


class PgConnection:
    """A psycopg connection in autocommit mode with sqlite3's execute shape (see above).
    Reconnects on the next use after the server went away. psycopg is imported here, on
    use, not with the module: a SQLite-only process (most `holdgate` commands) never pays
    for loading it."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._open = False  # a transaction we began is not finished yet
        self._connection()

    def _connection(self, ending: bool = False) -> psycopg.Connection[Any]:
        """The live connection, a new one after a loss — never in the middle of a
        transaction, whose statements must not go on outside it (`ending`: its ROLLBACK)."""
        import psycopg

        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if self._open and not ending:
                raise psycopg.OperationalError("the connection was lost inside a transaction")
            self._open = False
            if conn is not None:
                conn.close()
            self._conn = conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
            )
        return conn

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        conn = self._conn
        return self._open or (
            conn is not None
            and not conn.closed
            and conn.info.transaction_status != TransactionStatus.IDLE
        )

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        word = sql.strip().upper()
        conn = self._connection(ending=word == "ROLLBACK")
        if word in ("COMMIT", "ROLLBACK"):
            self._open = False
            return conn.execute(word)
        if word == "BEGIN IMMEDIATE":
            conn.execute("BEGIN")
            self._open = True
            return conn.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK])
        if word == "BEGIN":
            self._open = True
            return conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        if not parameters:  # psycopg reads no placeholders then: nothing to rewrite
            return conn.execute(sql)
        named = isinstance(parameters, dict)
        return conn.execute(to_pyformat(sql, named), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any:
        conn = self._connection()
        cursor = conn.cursor()
        cursor.executemany(to_pyformat(sql, named=False), list(parameters))
        return cursor

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@contextmanager
def transaction(conn: SqlConnection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT (a write: one at a time, on either backend), rolled back on
    any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(Exception):
                conn.execute("ROLLBACK")
        raise


def select(
    conn: SqlConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
) -> list[dict[str, Any]]:
    """Every row of a query, as dicts keyed by column name."""
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor]
