"""The hash chain: rows checked against the schema, appended at the head, verified.

Every audited row (tables in `CHAINED`) carries a global `seq`, strictly increasing across
tables, the `prev_hash` of the row before it and its own `row_hash`:

    row_hash = sha256(prev_hash "\\n" table "\\n" canonical JSON of its non-NULL columns
                      other than prev_hash and row_hash, seq included)

Rows are never updated. Each append runs inside a `BEGIN IMMEDIATE` transaction that reads
the head of the chain (`chain_head`), inserts and moves the head, so several processes
(the gateway's writer thread, the CLI) can append. `purge` records a chained checkpoint;
`verify` starts from the latest one, and checks each row the purge kept in the purged range
(current pins, config versions in use) against the list the checkpoint holds. The hashes are
unkeyed: they show edits, removals and insertions made without recomputing the chain, not
those of someone who rewrites it; signed checkpoints (`checkpoints.py`) catch those.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from holdgate.protocol.canonical_json import canonical
from holdgate.store.errors import BadRow
from holdgate.store.rows import Row, iso
from holdgate.store.schema import CHAINED, COLUMNS, GENESIS, TIME_COLUMN
from holdgate.store.sqlconn import SqlConnection


def chain_hash(prev_hash: str, table: str, content: Row) -> str:
    """The row_hash of a row: its content columns (seq included, NULLs left out)."""
    body = {k: v for k, v in content.items() if v is not None}
    material = f"{prev_hash}\n{table}\n".encode() + canonical(body)
    return hashlib.sha256(material).hexdigest()


def _coerce(kind: type, value: Any) -> Any:
    """The exact Python value SQLite will store and read back, so hashes verify."""
    if kind is str:
        if not isinstance(value, str):
            value = canonical(value).decode("utf-8", "surrogatepass")
        text: str = value
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (from JSON "\ud800") SQLite cannot take
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")
    if kind is int and isinstance(value, int | float) and value == int(value):
        if not -(2**63) <= int(value) < 2**63:
            raise ValueError("out of range")
        return int(value)
    if kind is float and isinstance(value, int | float):
        return float(value)
    raise ValueError(f"expected {kind.__name__}")


def normalize_row(table: str, row: Row) -> Row:
    """Check a row against the schema and coerce its values; fills in a missing time."""
    columns = COLUMNS.get(table)
    if columns is None:
        raise BadRow(f"no audited table {table!r}")
    out: Row = {}
    for key, value in row.items():
        kind = columns.get(key)
        if kind is None:
            raise BadRow(f"{table} has no column {key!r}")
        if value is None:
            continue
        try:
            out[key] = _coerce(kind, value)
        except (ValueError, TypeError) as exc:
            raise BadRow(f"{table}.{key}: {exc}") from None
    out.setdefault(TIME_COLUMN[table], iso())
    return out


def append_rows(conn: SqlConnection, items: Iterable[tuple[str, Row]]) -> list[int]:
    """Append normalized rows at the head of the chain; call inside a transaction."""
    seq, prev = conn.execute("SELECT seq, row_hash FROM chain_head WHERE id = 1").fetchone()
    seqs = []
    for table, row in items:
        seq += 1
        content = {"seq": seq, **row}
        digest = chain_hash(prev, table, content)
        values = {**content, "prev_hash": prev, "row_hash": digest}
        names = ", ".join(f'"{k}"' for k in values)
        marks = ", ".join("?" for _ in values)
        conn.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', list(values.values()))
        prev = digest
        seqs.append(seq)
    conn.execute("UPDATE chain_head SET seq = ?, row_hash = ? WHERE id = 1", [seq, prev])
    return seqs


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify`: `at` names the first bad row as (table, seq)."""

    ok: bool
    rows_checked: int
    problem: str | None = None
    at: tuple[str, int] | None = None


def _rows(
    conn: SqlConnection, table: str, start: int, after: bool
) -> Iterator[tuple[int, str, Row]]:
    """A table's rows after `start` (or up to it), in seq order."""
    where = "seq > ?" if after else "seq <= ?"
    cursor = conn.execute(f'SELECT * FROM "{table}" WHERE {where} ORDER BY seq', [start])
    names = [d[0] for d in cursor.description]
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        yield row["seq"], table, row


def _merged(conn: SqlConnection, start: int, after: bool) -> Iterator[tuple[int, str, Row]]:
    """Every chained table's rows after `start` (or up to it), merged in seq order."""
    return heapq.merge(
        *(_rows(conn, t, start, after) for t in CHAINED), key=lambda item: (item[0], item[1])
    )


def verify_chain(conn: SqlConnection) -> VerifyReport:
    """Check the chain from the latest checkpoint (or the start) to the head, in one snapshot."""
    conn.execute("BEGIN")
    try:
        return _verify(conn)
    finally:
        conn.execute("COMMIT")


def _kept_rows(text: str | None) -> dict[int, tuple[str, str]]:
    """A purge record's `kept`: [[seq, table, row_hash], ...] -> {seq: (table, row_hash)}."""
    if not text:
        return {}
    return {int(seq): (str(table), str(digest)) for seq, table, digest in json.loads(text)}


def _verify(conn: SqlConnection) -> VerifyReport:
    head_seq, head_hash = conn.execute(
        "SELECT seq, row_hash FROM chain_head WHERE id = 1"
    ).fetchone()
    checkpoint = conn.execute(
        "SELECT seq, last_seq, last_hash, kept FROM checkpoints ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    purge_seq, start, prev, kept_text = checkpoint if checkpoint else (0, 0, GENESIS, None)
    kept = _kept_rows(kept_text)
    checked = 0
    found: set[int] = set()
    for seq, table, row in _merged(conn, start, after=False):
        checked += 1
        content = {k: v for k, v in row.items() if k not in ("prev_hash", "row_hash")}
        if kept.get(seq) != (table, row["row_hash"]):
            problem = f"row at seq {seq} lies in the range purged up to seq {start}: inserted"
        elif seq in found:
            problem = f"seq {seq} appears twice: a row was inserted"
        elif chain_hash(row["prev_hash"], table, content) != row["row_hash"]:
            problem = "row content does not match its row_hash: edited (or forged)"
        else:
            found.add(seq)
            continue
        return VerifyReport(False, checked, problem, (table, seq))
    if absent := sorted(set(kept) - found):
        return VerifyReport(
            False,
            checked,
            f"seq {absent[0]}, kept by the purge recorded at seq {purge_seq}, is missing: removed",
            (kept[absent[0]][0], absent[0]),
        )
    last, last_table = start, ""
    for seq, table, row in _merged(conn, start, after=True):
        checked += 1
        content = {k: v for k, v in row.items() if k not in ("prev_hash", "row_hash")}
        if seq == last:
            problem = f"seq {seq} appears twice: a row was inserted"
        elif seq != last + 1:
            missing = str(last + 1) if seq == last + 2 else f"{last + 1}..{seq - 1}"
            problem = f"seq {missing} missing before this row: removed"
        elif chain_hash(row["prev_hash"], table, content) != row["row_hash"]:
            problem = "row content does not match its row_hash: edited (or forged)"
        elif row["prev_hash"] != prev:
            problem = "prev_hash does not match the previous row: inserted or replaced"
        elif seq > head_seq:
            problem = f"row beyond the recorded chain head (seq {head_seq}): inserted"
        else:
            last, last_table, prev = seq, table, row["row_hash"]
            continue
        return VerifyReport(False, checked, problem, (table, seq))
    if last < head_seq:
        missing = str(head_seq) if last + 1 == head_seq else f"{last + 1}..{head_seq}"
        return VerifyReport(
            False,
            checked,
            f"seq {missing} missing at the end of the chain "
            f"(the head records seq {head_seq}): removed",
        )
    if prev != head_hash:
        return VerifyReport(
            False,
            checked,
            "the last row does not match the recorded chain head: replaced",
            (last_table, last),
        )
    return VerifyReport(True, checked)
