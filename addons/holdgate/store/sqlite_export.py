"""The export feed as a standalone SQLite file (one `events` table), for tools that read
SQLite rather than JSON lines or CSV. Not an audit store: no chain, no schema version."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from sqlite_utils import Database

from holdgate.store.rows import EventRow


def write_sqlite_export(
    path: str | os.PathLike[str], rows: Iterable[EventRow], progress: Callable[[int], None]
) -> None:
    """Add `rows` to the `events` table of the SQLite file at `path` (created if need be)."""

    def counted() -> Iterator[dict[str, object]]:
        for row in rows:
            progress(1)
            yield dict(row)

    target = Database(os.fspath(path))
    try:
        # alter: a file exported before a field was added takes the new field
        target["events"].insert_all(counted(), batch_size=500, alter=True)  # type: ignore[union-attr]
    finally:
        target.close()
