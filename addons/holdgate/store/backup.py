"""`holdgate backup`: a copy of a SQLite store that holds every committed row.

A store runs in WAL mode: rows committed since SQLite's last checkpoint live in `-wal`, so
a `cp` of the main file alone is an older store, and one that still verifies (its chain
simply ends earlier). `backup_sqlite` copies with SQLite's online backup API instead: one
consistent snapshot, `-wal` included, taken while the gateway keeps writing. The copy is
built as a hidden temporary file next to OUT, switched out of WAL mode (one
self-contained file), checked read-only (hash chain, head), fsynced, and only then moved
to OUT; a failure leaves no OUT behind.

PostgreSQL stores are copied with PostgreSQL's own tool: `pg_dump_command` gives the
command, without the password (pg_dump reads it from `~/.pgpass` or `PGPASSWORD`).

Exceptions: `BackupRefused` (OUT exists, its folder is missing, it is the store itself);
`StoreNotFound`, `StoreUnavailable` from opening the store.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from holdgate.store.chain import VerifyReport, verify_chain
from holdgate.store.checkpoints import chain_head, store_id
from holdgate.store.dsn import safe_dsn
from holdgate.store.errors import StoreError, StoreUnavailable
from holdgate.store.schema import CHAINED, open_db

# The files SQLite keeps beside a database: a stale one next to OUT would be read with it.
SIDE_FILES = ("-wal", "-shm", "-journal")


class BackupRefused(StoreError):
    """The copy was not made: OUT is taken, cannot be written there, or is the store."""


@dataclass(frozen=True)
class BackupReport:
    """What the copy at `path` holds, checked after it was written."""

    path: str
    store_id: str
    head: tuple[int, str]
    rows: dict[str, int]
    chain: VerifyReport

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def backup_sqlite(source: str, out: str, *, force: bool = False) -> BackupReport:
    """Copy the store at `source` to `out` (refused if `out` exists, unless `force`)."""
    target = Path(out)
    _check_target(Path(source), target, force)
    database = open_db(source, create=False)  # StoreNotFound, StoreUnavailable, not a store
    temporary = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    try:
        copy = sqlite3.connect(temporary, isolation_level=None)
        os.chmod(temporary, os.stat(source).st_mode & 0o777)  # as private as the store
        try:
            database.conn.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
        report = inspect_copy(str(temporary), str(target))
        _fsync(temporary)
        if force:
            for suffix in SIDE_FILES:
                Path(str(target) + suffix).unlink(missing_ok=True)
            os.replace(temporary, target)
        else:
            os.link(temporary, target)  # fails if OUT appeared meanwhile: never overwritten
            temporary.unlink()
        _fsync(target.parent)
    except FileExistsError:
        raise BackupRefused(f"{out} exists; pass --force to replace it") from None
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"backup of {source} to {out} failed: {exc}") from exc
    finally:
        database.close()
        temporary.unlink(missing_ok=True)
    return report


def _check_target(source: Path, target: Path, force: bool) -> None:
    folder = target.parent
    if not folder.is_dir():
        raise BackupRefused(
            f"{target}: folder {folder} does not exist; create it first (mkdir -p {folder})"
        )
    if target.is_dir():
        raise BackupRefused(
            f"{target} is a folder; name the file to write, e.g. {target}/copy.sqlite3"
        )
    if target.exists() and source.exists() and os.path.samefile(source, target):
        raise BackupRefused(f"{target} is the store itself; name another file")
    if target.exists() and not force:
        raise BackupRefused(f"{target} exists; pass --force to replace it")
    stale = [str(target) + s for s in SIDE_FILES if Path(str(target) + s).exists()]
    if stale and not force:
        raise BackupRefused(
            f"{', '.join(stale)} exist beside {target}: SQLite would read them with the copy; "
            "remove them, or pass --force to replace them too"
        )


def inspect_copy(path: str, shown_as: str) -> BackupReport:
    """The copy's store id, head, rows per table and hash chain, read without writing."""
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None)
    try:
        rows = {
            table: int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
            for table in CHAINED
        }
        return BackupReport(shown_as, store_id(conn), chain_head(conn), rows, verify_chain(conn))
    finally:
        conn.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pg_dump_command(dsn: str, out: str) -> str:
    """The pg_dump command that copies the database `dsn` names to `out` (custom format),
    every password (`password`, `sslpassword`) left out of the DSN it shows."""
    safe = safe_dsn(dsn)
    if safe is None or not urlsplit(safe).hostname:
        return f'pg_dump --format=custom --file={shlex.quote(out)} "$HOLDGATE_STORE"'
    return f"pg_dump --format=custom --file={shlex.quote(out)} {shlex.quote(safe)}"
