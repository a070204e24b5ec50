"""`holdgate backup` and `verify` on copies, over stores built here: what a careless
operator does (a file that exists, a folder that does not, a store that is not one, a
PostgreSQL store) and a copy that misses its tail."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from holdgate import store
from holdgate.cli.main import main
from holdgate.store.backup import pg_dump_command
from holdgate.store.checkpoints import Signer, append_line, load_private_key, new_key_pair
from holdgate.store.dsn import safe_dsn, shown_dsn


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def add_rows(path: Path, n: int) -> tuple[int, str]:
    with store.SqliteStore(path) as opened:
        for i in range(n):
            opened.append("events", {"ts": store.iso(), "user": "alice", "flow_id": f"f{i}"})
        return opened.chain_head()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.sqlite3"
    add_rows(path, 5)
    return path


def test_a_backup_holds_every_row_and_says_what_it_holds(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "evidence" / "copy.sqlite3"
    out.parent.mkdir()
    with sqlite3.connect(db) as live:  # rows only in -wal, as on a running gateway
        live.execute("PRAGMA wal_autocheckpoint=0")
    head = add_rows(db, 3)
    result = run("backup", str(out), "--store", str(db))
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"{out}: 8 rows (events 8), head #8 {head[1][:16]}…, store "
        f"{store.SqliteStore(db).store_id}\n"
        "ok: the copy's hash chain is intact up to head #8\n"
    )
    assert [p.name for p in out.parent.iterdir()] == ["copy.sqlite3"]  # one file, no -wal
    assert oct(out.stat().st_mode & 0o777) == oct(db.stat().st_mode & 0o777)
    verified = run("verify", "--store", str(out))
    assert verified.output == "ok: 8 rows, head #8, hash chain intact\n"


def test_an_existing_out_is_never_overwritten_without_force(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.sqlite3"
    out.write_bytes(b"yesterday's evidence")
    refused = run("backup", str(out), "--db", str(db))
    assert refused.exit_code == 1
    assert refused.output == f"Error: {out} exists; pass --force to replace it\n"
    assert out.read_bytes() == b"yesterday's evidence"
    Path(f"{out}-wal").write_bytes(b"stale")
    forced = run("backup", str(out), "--db", str(db), "--force")
    assert forced.exit_code == 0, forced.output
    assert not Path(f"{out}-wal").exists()
    assert run("verify", "--db", str(out)).output == "ok: 5 rows, head #5, hash chain intact\n"


def test_a_stale_wal_beside_out_is_refused(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.sqlite3"
    Path(f"{out}-wal").write_bytes(b"stale")
    refused = run("backup", str(out), "--db", str(db))
    assert refused.exit_code == 1
    assert "SQLite would read them with the copy" in refused.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("missing/copy.sqlite3", "folder {tmp}/missing does not exist; create it first"),
        (".", "is a folder; name the file to write"),
        ("audit.sqlite3", "is the store itself; name another file"),
    ],
)
def test_careless_outs_are_refused(db: Path, tmp_path: Path, out: str, says: str) -> None:
    result = run("backup", str(tmp_path / out), "--db", str(db), "--force")
    assert result.exit_code == 1
    assert says.format(tmp=tmp_path) in result.output
    assert not (tmp_path / "missing").exists()
    assert run("verify", "--db", str(db)).exit_code == 0  # the store is untouched


def test_only_a_holdgate_store_is_backed_up(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (t TEXT)")
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just some words of text here")
    out = tmp_path / "copy.sqlite3"
    not_ours = run("backup", str(out), "--db", str(other))
    assert not_ours.exit_code == 1
    assert "is an SQLite file but not a holdgate audit store" in not_ours.output
    not_sqlite = run("backup", str(out), "--db", str(text))
    assert not_sqlite.exit_code == 1 and "file is not a database" in not_sqlite.output
    missing = run("backup", str(out), "--db", str(tmp_path / "nope.sqlite3"))
    assert missing.output.startswith("Error: no audit store at ")
    assert not out.exists() and not list(tmp_path.glob(".copy.sqlite3.*"))


def test_a_postgresql_store_gets_the_pg_dump_command_without_its_password(
    tmp_path: Path,
) -> None:
    dsn = "postgresql://auditor:s3cret-pw@db.internal:5433/holdgate?sslmode=require"
    result = run("backup", "evidence.dump", "--store", dsn)
    assert result.exit_code == 1
    assert "s3cret-pw" not in result.output
    assert (
        "pg_dump --format=custom --file=evidence.dump "
        "'postgresql://auditor@db.internal:5433/holdgate?sslmode=require'"
    ) in result.output
    assert "holdgate verify --store URL" in result.output
    assert not (tmp_path / "evidence.dump").exists()


def test_the_pg_dump_command_drops_every_password() -> None:
    assert pg_dump_command("postgres://u@[::1]/db?password=x&application_name=a", "o d") == (
        "pg_dump --format=custom --file='o d' 'postgres://u@[::1]/db?application_name=a'"
    )
    # libpq's sslpassword (the client key's passphrase) is a secret too
    shown = pg_dump_command("postgresql://u:pw@h/db?sslpassword=k3y&sslmode=verify-full", "o")
    assert "k3y" not in shown and "pw" not in shown and "sslmode=verify-full" in shown
    # a password with an unescaped '/' splits the URL in the wrong place: nothing is shown
    for dsn in ("postgresql://u:1234/ab@h/x", "postgresql://u:s3cr/t@db.example/x"):
        shown = pg_dump_command(dsn, "o")
        assert "ab@" not in shown and "s3cr" not in shown and "$HOLDGATE_STORE" in shown


# --- verify on a copy that misses its tail ------------------------------------------------


def witnessed(tmp_path: Path, db: Path) -> Path:
    """A witness holding a signed checkpoint of the store's head."""
    key = load_private_key(new_key_pair()[0])
    with store.SqliteStore(db) as opened:
        checkpoint = Signer(key, opened.store_id).checkpoint(opened.chain_head(), store.iso())
    assert checkpoint is not None
    witness = tmp_path / "checkpoints.log"
    append_line(witness, checkpoint.line())
    return witness


def test_a_cp_copy_missing_rows_of_the_wal_fails_verify_with_a_witness(
    db: Path, tmp_path: Path
) -> None:
    live = sqlite3.connect(db)  # held open: the -wal stays, as under a running gateway
    live.execute("PRAGMA wal_autocheckpoint=0")
    live.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # rows 1..5 in the main file
    add_rows(db, 3)  # rows 6..8 in -wal only
    witness = witnessed(tmp_path, db)
    copy = tmp_path / "copy.sqlite3"
    shutil.copyfile(db, copy)
    live.close()
    alone = run("verify", "--db", str(copy))
    assert alone.output == "ok: 5 rows, head #5, hash chain intact\n"  # the chain alone can't tell
    result = run("verify", "--db", str(copy), "--witness", str(witness))
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: {witness}: the store ends at seq 5, but line 1 is a checkpoint of seq 8 "
    )
    assert "seq 6..8 are missing from this store" in result.output
    assert "take copies with holdgate backup" in result.output
    good = run("verify", "--db", str(db), "--witness", str(witness))
    assert good.exit_code == 0, good.output
    assert good.output.splitlines()[1].startswith(
        f"ok: the store reaches the latest checkpoint (seq 8) in {witness}; signatures not checked"
    )


def test_verify_reads_the_witness_from_the_config(db: Path, tmp_path: Path) -> None:
    witnessed(tmp_path, db)  # checkpoints.log, beside the config
    key = tmp_path / "signing.pem"
    key.write_bytes(new_key_pair()[0])
    config = tmp_path / "holdgate.yaml"
    config.write_text(
        "version: 1\nupstreams:\n  - name: u\n    url: http://127.0.0.1:9\n"
        "rules: []\ncheckpoints:\n"
        f'  key: "${{file:{key}}}"\n  witness: checkpoints.log\n'
    )
    cut = tmp_path / "cut.sqlite3"
    shutil.copyfile(db, cut)
    with sqlite3.connect(cut) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("DELETE FROM events WHERE seq > 3")  # the tail cut, the head moved back
        row = conn.execute("SELECT row_hash FROM events WHERE seq = 3").fetchone()
        conn.execute("UPDATE chain_head SET seq = 3, row_hash = ?", row)
    assert run("verify", "--db", str(cut)).exit_code == 0
    result = run("verify", "--db", str(cut), "--config", str(config))
    assert result.exit_code == 1
    assert "the store ends at seq 3, but line 1 is a checkpoint of seq 5" in result.output
    assert run("verify", "--db", str(db), "--config", str(config)).exit_code == 0


def test_a_witness_of_another_store_fails(db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    add_rows(other, 2)
    witness = witnessed(tmp_path, other)
    result = run("verify", "--db", str(db), "--witness", str(witness))
    assert result.exit_code == 1 and "no checkpoint in it is of this store" in result.output


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:pw@db.example:5433/audit", "postgresql://u@db.example:5433/audit"),
        (
            "postgresql://u@h/db?password=s3cret&sslmode=require",
            "postgresql://u@h/db?sslmode=require",
        ),
        ("postgresql://u@h/db?sslpassword=k3y", "postgresql://u@h/db"),
        ("postgresql://u:p/w@h/db", None),  # '/' in the password: the host is not where it seems
        ("postgresql://u:p@ss@h/db", "postgresql://u@h/db"),  # the last '@' ends the user info
    ],
)
def test_a_dsn_is_shown_without_any_password(dsn: str, shown: str | None) -> None:
    """Messages and logs (`PostgresStore`'s errors, `holdgate backup`) show a DSN through
    one helper: no password from the user info or the query, or nothing at all."""
    assert safe_dsn(dsn) == shown
    assert "s3cret" not in shown_dsn(dsn) and "k3y" not in shown_dsn(dsn)
    assert "pw" not in shown_dsn(dsn) and "p@ss" not in shown_dsn(dsn)
