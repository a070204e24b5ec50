"""A real PostgreSQL server for the tests: Debian's PostgreSQL 15 binaries (installed by
scripts/system-deps.sh), a throwaway cluster on a Unix socket and a loopback port.

`initdb` refuses to run as root, so the cluster belongs to the `postgres` user and lives
in a folder that user can reach (pytest's tmp tree is root-only). `fsync=off` unless a test
asks for durability. Each test gets a database of its own (`fresh_database`), made from
the empty `template0` in a few milliseconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from helpers.processes import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "holdgate"


@dataclass
class PostgresServer:
    root: Path
    port: int
    options: str = ""  # pg_ctl's -o, to start it again as it was

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str = "postgres") -> str:
        """A URL for psycopg over loopback TCP (what a replica elsewhere would use)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                "psql",
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def fresh_database(self) -> str:
        """A new, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)


def _as_postgres(*args: str) -> subprocess.CompletedProcess[str]:
    command = list(args)
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def start_postgres(durable: bool = False) -> PostgresServer:
    """initdb and start a cluster (under a second); `stop_postgres` ends it."""
    if not (BIN / "initdb").exists():
        raise RuntimeError(f"no PostgreSQL server in {BIN}: run scripts/system-deps.sh")
    root = Path(tempfile.mkdtemp(prefix="holdgate-pg-"))
    root.chmod(0o755)
    (root / "sock").mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "sock", "postgres", "postgres")
    data = root / "data"
    init = _as_postgres(
        str(BIN / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8"
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
    port = free_port()
    options = (
        f"-p {port} -k {root / 'sock'} -c listen_addresses=127.0.0.1 "
        f"-c max_connections=200 -c fsync={'on' if durable else 'off'} "
        f"-c synchronous_commit={'on' if durable else 'off'} -c full_page_writes=off"
    )
    server = PostgresServer(root, port, options)
    start_again(server)
    return server


def start_again(server: PostgresServer) -> None:
    """Start a cluster this helper made (after `pause`) on its port, with its data."""
    root = server.root
    started = _as_postgres(
        str(BIN / "pg_ctl"),
        *("-D", str(root / "data"), "-o", server.options, "-l", str(root / "log"), "-w", "start"),
    )
    if started.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {log[-2000:]}")


def pause(server: PostgresServer) -> None:
    """Stop the server, keeping its data (pg_ctl stops it by its own pid file)."""
    _as_postgres(str(BIN / "pg_ctl"), "-D", str(server.root / "data"), "-m", "fast", "-w", "stop")


def stop_postgres(server: PostgresServer) -> None:
    """Stop the cluster this helper started, and remove it."""
    pause(server)
    shutil.rmtree(server.root, ignore_errors=True)
