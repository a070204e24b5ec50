"""The chain hashes rows in the project's one canonical JSON, byte for byte as it always did,
so stores written before the store became a package still verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given

from helpers.strategies import json_values
from holdgate import store
from holdgate.protocol.canonical_json import canonical

# What the store used before it moved to protocol.canonical_json (a str, encoded strictly).
_OLD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@given(json_values)
def test_canonical_json_is_the_old_encoding_byte_for_byte(value: Any) -> None:
    try:
        old = _OLD.encode(value).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the old hash raised; rows never hold them
        return
    assert canonical(value) == old


def test_a_row_hash_from_before_the_split_still_matches() -> None:
    row = {
        "seq": 7,
        "ts": "2026-11-24T10:00:00.000Z",
        "user": "alice",
        "groups": '["dev"]',
        "args_masked": '{"q":"é ☃ \\ud800"}',
        "status": 200,
        "latency_ms": 1.5,
        "decision": "allow",
    }
    # computed with the store as of ff2af33 (one 1,029-line module)
    expected = "d9140ac24e017f968e4cf22c48b8cc092db4f83b3f33fec99f713c071a3a00b2"
    assert store.chain_hash(store.GENESIS, "events", row) == expected


def test_json_columns_are_stored_in_canonical_form() -> None:
    row = store.normalize_row("events", {"ts": "x", "extra": {"b": [1, 2.5, None, True], "a": "ü"}})
    assert row["extra"] == '{"a":"ü","b":[1,2.5,null,true]}'


def test_a_store_written_row_by_row_verifies_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with store.SqliteStore(path) as db:
        db.append("events", {"user": "alice", "extra": {"k": "ü"}, "latency_ms": 2})
        db.append("sessions", {"session_id": "s1", "user": "alice"})
    with store.SqliteStore(path, create=False) as db:
        assert db.verify() == store.VerifyReport(True, 2)
