"""An export row as the JSON record `holdgate export` and the feeds send.

Columns that hold JSON text in the store (`groups`, `args_masked`, `masked`, `extra`)
become real arrays and objects, so a consumer parses each line once; `flat=True` keeps
them as the strings they are in the store (the CSV shape, for consumers that rely on it).
Each record names its `table` and carries `seq` (to resume and dedupe) and `row_hash`
(to check against `holdgate verify`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

JSON_FIELDS = ("groups", "args_masked", "masked", "extra")


def feed_record(row: Mapping[str, Any], *, flat: bool = False) -> dict[str, Any]:
    """`row` (an export row) as a record: {"table": "events", ...the row's fields}."""
    record: dict[str, Any] = {"table": "events", **row}
    if flat:
        return record
    for name in JSON_FIELDS:
        value = record.get(name)
        if isinstance(value, str):
            try:
                record[name] = json.loads(value)
            except ValueError:
                pass  # not JSON after all (an older row): the text, as stored
    return record


def feed_line(row: Mapping[str, Any], *, flat: bool = False) -> str:
    """One JSON line (no newline): compact, non-ASCII kept as is."""
    return json.dumps(feed_record(row, flat=flat), ensure_ascii=False, separators=(",", ":"))
