"""Signed checkpoints: each way of tampering with the store, as someone with write access to
it would, is named by `holdgate verify --witness` at the first checkpoint it contradicts."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from holdgate import store
from holdgate.cli.main import main
from holdgate.config.configfile import ConfigError
from holdgate.config.gateway_config import parse_config_text
from holdgate.store.checkpoints import (
    Signer,
    append_line,
    key_id,
    load_private_key,
    parse_checkpoint,
)

NOW = 1_800_000_000.0
DAY = 86400.0


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "keys" / "audit-signing.pem"
    out.parent.mkdir()
    result = run("keys", "signing", "new", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, Path(str(out) + ".pub")


class Setup:
    """A store, a signer and its witness file, checkpointed as the gateway does."""

    def __init__(self, tmp: Path, key_file: Path) -> None:
        self.path = tmp / "audit.sqlite3"
        self.witness = tmp / "checkpoints.log"
        self.db = store.SqliteStore(self.path)
        self.use_key(load_private_key(key_file.read_bytes()))

    def use_key(self, key: Ed25519PrivateKey) -> None:
        self.signer = Signer(key, self.db.store_id)

    def rows(self, n: int, ts: str | None = None) -> None:
        for i in range(n):
            self.db.append("events", {"ts": ts or store.iso(), "flow_id": f"f{i}", "user": "bob"})

    def checkpoint(self) -> None:
        cp = self.signer.checkpoint(self.db.chain_head(), store.iso())
        assert cp is not None
        append_line(self.witness, cp.line())

    def verify(self, *public: Path) -> Result:
        args = ["verify", "--db", str(self.path), "--witness", str(self.witness)]
        for p in public:
            args += ["--public-key", str(p)]
        return CliRunner().invoke(main, args)


@pytest.fixture
def setup(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[Setup]:
    built = Setup(tmp_path, keys[0])
    built.rows(3)
    built.checkpoint()  # #1: seq 3
    built.rows(3)
    built.checkpoint()  # #2: seq 6
    built.rows(3)
    built.checkpoint()  # #3: seq 9
    yield built
    built.db.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    return result.output.splitlines()[-1]


# --- keys -----------------------------------------------------------------------------------


def test_keys_signing_new_writes_a_private_key_0600_and_never_overwrites(
    keys: tuple[Path, Path],
) -> None:
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    again = CliRunner().invoke(main, ["keys", "signing", "new", "--out", str(private)])
    assert again.exit_code == 1
    assert "exists; refusing to overwrite a key" in again.output
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()


# --- verify passes, then each tamper case -----------------------------------------------------


def test_an_untouched_store_verifies_against_its_witness(
    setup: Setup, keys: tuple[Path, Path]
) -> None:
    result = setup.verify(keys[1])
    assert result.exit_code == 0, result.output
    kid = key_id(load_private_key(keys[0].read_bytes()).public_key())
    lines = result.output.splitlines()
    assert lines[0] == "ok: 9 rows, head #9, hash chain intact"
    assert lines[1].startswith(
        f"ok: 3 checkpoints in {setup.witness}, signatures good and every head reproduced "
        f"(key {kid}: #1..#3); the latest signs seq 9 at "
    )


def recompute_chain_from(path: Path, seq: int) -> None:
    """What someone with write access does after editing a row: rehash every row from it on."""
    conn = raw(path)
    prev = conn.execute("SELECT row_hash FROM events WHERE seq = ?", [seq - 1]).fetchone()[0]
    cursor = conn.execute("SELECT * FROM events WHERE seq >= ? ORDER BY seq", [seq])
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    for row in rows:
        content = {k: v for k, v in row.items() if k not in ("prev_hash", "row_hash")}
        digest = store.chain_hash(prev, "events", content)
        conn.execute(
            "UPDATE events SET prev_hash = ?, row_hash = ? WHERE seq = ?",
            [prev, digest, row["seq"]],
        )
        prev = digest
    conn.execute("UPDATE chain_head SET row_hash = ? WHERE id = 1", [prev])
    conn.close()


def test_a_recomputed_chain_is_named_at_the_first_checkpoint_after_the_edit(
    setup: Setup, keys: tuple[Path, Path]
) -> None:
    with raw(setup.path) as conn:
        conn.execute("UPDATE events SET user = 'mallory' WHERE seq = 5")
    recompute_chain_from(setup.path, 5)
    assert setup.db.verify().ok  # the unkeyed chain alone is fooled
    line = error_line(setup.verify(keys[1]))
    assert line.startswith(f"Error: checkpoint #2 ({setup.witness} line 2): seq 6, signed ")
    assert "the store has" in line and "at seq 6: rows in seq 4..6 were changed" in line
    assert "and the chain recomputed" in line


def cut_tail(path: Path, after: int) -> None:
    conn = raw(path)
    conn.execute("DELETE FROM events WHERE seq > ?", [after])
    last = conn.execute("SELECT row_hash FROM events WHERE seq = ?", [after]).fetchone()[0]
    conn.execute("UPDATE chain_head SET seq = ?, row_hash = ? WHERE id = 1", [after, last])
    conn.close()


def test_a_cut_tail_is_named_at_the_first_checkpoint_past_the_cut(
    setup: Setup, keys: tuple[Path, Path]
) -> None:
    cut_tail(setup.path, 4)
    assert setup.db.verify().ok
    line = error_line(setup.verify(keys[1]))
    assert line.startswith(f"Error: checkpoint #2 ({setup.witness} line 2): seq 6, signed ")
    assert line.endswith(
        "the store ends at seq 4: seq 5..6, signed here, are gone (the tail was cut, or an "
        "older copy of the store was restored)"
    )


def test_a_restored_older_copy_is_named(
    tmp_path: Path, setup: Setup, keys: tuple[Path, Path]
) -> None:
    copy = tmp_path / "backup.sqlite3"
    source, target = raw(setup.path), sqlite3.connect(copy)
    source.backup(target)  # at seq 9
    source.close()
    target.close()
    setup.rows(2)
    setup.checkpoint()  # #4: seq 11
    setup.db.close()
    for suffix in ("-wal", "-shm"):
        Path(str(setup.path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(copy, setup.path)
    setup.db = store.SqliteStore(setup.path)
    line = error_line(setup.verify(keys[1]))
    assert line.startswith(f"Error: checkpoint #4 ({setup.witness} line 4): seq 11, signed ")
    assert "the store ends at seq 9: seq 10..11" in line

    setup.rows(3)  # the restored copy written on: seq 10..12 exist, but other rows
    line = error_line(setup.verify(keys[1]))
    assert "checkpoint #4" in line and "at seq 11: rows in seq 10..11 were changed" in line
    assert "an older copy of the store was restored and written on" in line


@pytest.mark.parametrize(
    "change",
    [
        lambda cp: {**cp, "seq": cp["seq"] - 1},
        lambda cp: {**cp, "head": "0" * 64},
        lambda cp: {**cp, "time": "2020-01-01T00:00:00.000Z"},
        lambda cp: {**cp, "sig": base64.b64encode(b"x" * 64).decode()},
        lambda cp: {**cp, "sig": "not base64!"},
    ],
)
def test_a_forged_or_altered_checkpoint_is_named(
    setup: Setup, keys: tuple[Path, Path], change: Any
) -> None:
    lines = setup.witness.read_text().splitlines()
    lines[1] = json.dumps(change(json.loads(lines[1])))
    setup.witness.write_text("\n".join(lines) + "\n")
    line = error_line(setup.verify(keys[1]))
    assert line.startswith(f"Error: checkpoint #2 ({setup.witness} line 2): seq ")
    assert line.endswith("bad signature: the checkpoint was forged or altered")


def test_a_checkpoint_signed_by_an_unknown_key_is_named(
    setup: Setup, keys: tuple[Path, Path]
) -> None:
    setup.use_key(Ed25519PrivateKey.generate())
    setup.rows(1)
    setup.checkpoint()
    line = error_line(setup.verify(keys[1]))
    assert line.startswith(f"Error: checkpoint #4 ({setup.witness} line 4): seq 10")
    assert "which no --public-key matches" in line


def test_a_line_that_is_no_checkpoint_and_an_empty_witness_fail(
    setup: Setup, keys: tuple[Path, Path]
) -> None:
    with setup.witness.open("a") as sink:
        sink.write("garbage\n")
    assert error_line(setup.verify(keys[1])).endswith(
        f"checkpoint #4 ({setup.witness} line 4): not a checkpoint (no JSON object)"
    )
    setup.witness.write_text("")
    assert error_line(setup.verify(keys[1])) == (
        f"Error: {setup.witness}: the witness holds no checkpoints"
    )


def test_the_witness_of_another_store_is_refused(
    tmp_path: Path, setup: Setup, keys: tuple[Path, Path]
) -> None:
    other = store.SqliteStore(tmp_path / "other.sqlite3")
    for _ in range(9):
        other.append("events", {"user": "x"})
    other.close()
    result = CliRunner().invoke(
        main,
        ["verify", "--db", str(tmp_path / "other.sqlite3"), "--witness", str(setup.witness)]
        + ["--public-key", str(keys[1])],
    )
    assert "is of store" in error_line(result) and "the witness of another store" in result.output


def test_a_syslog_collectors_lines_verify(setup: Setup, keys: tuple[Path, Path]) -> None:
    lines = setup.witness.read_text().splitlines()
    setup.witness.write_text(
        "".join(f"<110>1 2026-12-01T00:00:00Z host holdgate 1 checkpoint - {x}\n" for x in lines)
    )
    assert setup.verify(keys[1]).exit_code == 0


# --- rotation --------------------------------------------------------------------------------


def test_a_rotated_key_starts_a_new_run_and_old_checkpoints_verify_with_the_old_key(
    tmp_path: Path, setup: Setup, keys: tuple[Path, Path]
) -> None:
    new_private = tmp_path / "keys" / "audit-signing-2.pem"
    run("keys", "signing", "new", "--out", str(new_private))
    new_public = Path(str(new_private) + ".pub")
    setup.use_key(load_private_key(new_private.read_bytes()))
    setup.checkpoint()  # a new key signs the head at once, even unmoved: #4 at seq 9
    setup.rows(2)
    setup.checkpoint()  # #5 at seq 11
    old_id = key_id(load_private_key(keys[0].read_bytes()).public_key())
    new_id = key_id(load_private_key(new_private.read_bytes()).public_key())
    result = setup.verify(keys[1], new_public)
    assert result.exit_code == 0, result.output
    assert f"(key {old_id}: #1..#3; key {new_id}: #4..#5)" in result.output
    only_new = error_line(setup.verify(new_public))
    assert only_new.startswith(f"Error: checkpoint #1 ({setup.witness} line 1)")
    assert f"signed by key {old_id}, which no --public-key matches" in only_new


def test_signer_signs_only_when_the_head_moved(setup: Setup) -> None:
    assert setup.signer.checkpoint(setup.db.chain_head(), store.iso()) is None
    setup.rows(1)
    cp = setup.signer.checkpoint(setup.db.chain_head(), store.iso())
    assert cp is not None and cp.seq == 10
    assert parse_checkpoint(cp.line()) == cp


# --- a purge explains the gap ------------------------------------------------------------------


@pytest.fixture
def purged(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[Setup]:
    built = Setup(tmp_path, keys[0])
    built.rows(3, ts=store.iso(NOW - 100 * DAY))
    built.checkpoint()  # #1: seq 3
    built.rows(3, ts=store.iso(NOW - 95 * DAY))
    built.checkpoint()  # #2: seq 6
    built.rows(2, ts=store.iso(NOW - DAY))
    built.checkpoint()  # #3: seq 8
    yield built
    built.db.close()


def test_verify_after_a_purge_passes_and_says_the_range_was_purged(
    purged: Setup, keys: tuple[Path, Path]
) -> None:
    report = purged.db.purge(90 * DAY, now=NOW)
    assert (report.first_seq, report.last_seq, report.checkpoint_seq) == (1, 6, 9)
    not_yet = error_line(purged.verify(keys[1]))
    assert not_yet.startswith(f"Error: checkpoint #1 ({purged.witness} line 1): checkpoints")
    assert "no later checkpoint signs that purge" in not_yet
    purged.checkpoint()  # the gateway signs the new head: #4 at seq 9
    result = purged.verify(keys[1])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith(
        "purged: checkpoints #1..#2 precede the purge recorded at seq 9 ("
    )
    assert "seq up to 6 was purged (0 rows kept), as that record says; checkpoint #4 signs" in (
        result.output
    )


def test_the_purge_can_sign_its_own_checkpoint(purged: Setup, keys: tuple[Path, Path]) -> None:
    result = run(
        "purge", "--db", str(purged.path), "--older-than", "1d", "--recordings", "none",
        "--signing-key", str(keys[0]), "--witness", str(purged.witness),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert purged.verify(keys[1]).exit_code == 0


def test_a_rewritten_purge_record_is_named_at_the_checkpoint_it_contradicts(
    purged: Setup, keys: tuple[Path, Path]
) -> None:
    purged.db.purge(90 * DAY, now=NOW)  # the record: seq 9, up to seq 6
    purged.checkpoint()  # #4 signs it
    conn = raw(purged.path)  # a forged record (another hash at seq 6), the chain rehashed
    conn.execute("UPDATE checkpoints SET last_hash = ?", ["f" * 64])
    prev = "f" * 64
    for seq in range(7, 10):
        table = "checkpoints" if seq == 9 else "events"
        cursor = conn.execute(f"SELECT * FROM {table} WHERE seq = ?", [seq])
        names = [d[0] for d in cursor.description]
        row = dict(zip(names, cursor.fetchone(), strict=True))
        content = {k: v for k, v in row.items() if k not in ("prev_hash", "row_hash")}
        digest = store.chain_hash(prev, table, content)
        conn.execute(
            f"UPDATE {table} SET prev_hash = ?, row_hash = ? WHERE seq = ?", [prev, digest, seq]
        )
        prev = digest
    conn.execute("UPDATE chain_head SET row_hash = ?", [prev])
    conn.close()
    assert purged.db.verify().ok
    line = error_line(purged.verify(keys[1]))
    assert line.startswith(f"Error: checkpoint #2 ({purged.witness} line 2): seq 6, signed ")
    assert (
        "the purge recorded at seq 9 says the chain's hash at seq 6 was ffffffffffffffff…" in line
    )


# --- config ----------------------------------------------------------------------------------

CONFIG = """version: 1
upstreams:
  - name: demo
    url: http://127.0.0.1:1/mcp
checkpoints:
{section}"""


def test_the_checkpoints_section_parses_and_the_key_stays_out_of_the_stored_text(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    text = CONFIG.format(section=f'  key: "${{file:{keys[0]}}}"\n  every: 2s\n  witness: cp.log\n')
    config = parse_config_text(text, str(tmp_path / "holdgate.yaml"))
    settings = config.checkpoints
    assert settings is not None and settings.every == 2.0
    assert settings.witness.kind == "file" and settings.witness.target == str(tmp_path / "cp.log")
    pem = keys[0].read_text().strip()
    body = "".join(pem.splitlines()[1:-1])
    for shown in (config.redacted_text(), repr(config), repr(settings)):
        assert body not in shown and "PRIVATE KEY" not in shown


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            '  key: "-----BEGIN PRIVATE KEY-----"\n  witness: cp.log\n',
            "checkpoints.key: write the key in a file and name it",
        ),
        ('  key: "${file:nope.pem}"\n  witness: cp.log\n', "cannot read secret file"),
        ('  key: "${file:KEY}"\n  witness: cp.log\n  every: 0\n', "checkpoints.every: at least"),
        ('  key: "${file:KEY}"\n  witness: "syslog:nohost"\n', "expected syslog:HOST:PORT"),
        ('  key: "${file:KEY}"\n  witness: "ftp://x/y"\n', "expected a file, syslog"),
        ('  key: "${file:KEY}"\n  witnes: cp.log\n', "did you mean 'witness'"),
        ('  key: "${file:PUB}"\n  witness: cp.log\n', "make one with `holdgate keys signing new"),
    ],
)
def test_checkpoint_config_errors_name_the_key(
    tmp_path: Path, keys: tuple[Path, Path], section: str, message: str
) -> None:
    text = CONFIG.format(section=section.replace("KEY", str(keys[0])).replace("PUB", str(keys[1])))
    with pytest.raises(ConfigError, match="checkpoints") as caught:
        parse_config_text(text, str(tmp_path / "holdgate.yaml"))
    assert message in str(caught.value)
    assert re.search(r"holdgate\.yaml:[6-8]:\d+: checkpoints\.", str(caught.value))


def test_policy_check_reads_the_section_without_the_key(tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(CONFIG.format(section='  key: "${file:missing.pem}"\n  witness: cp.log\n'))
    result = run("policy", "check", str(config))
    assert result.exit_code == 0, result.output
    assert os.path.basename(str(config)) in result.output
