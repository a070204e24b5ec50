"""Signed checkpoints: the chain's head, signed with a key the store never holds, kept in a
witness outside the store, so a recomputed chain, a cut tail or a restored older copy shows.

A checkpoint is one JSON line:

    {"v":1,"store":"<store id>","seq":812,"head":"<row_hash at seq 812>",
     "time":"2026-12-01T10:00:00.000Z","key":"<key id>","sig":"<base64 Ed25519 signature>"}

The signature covers `SIGNED_PREFIX` + the canonical JSON of every field but `sig`. `key`
is the key id: the first 16 hex digits of the SHA-256 of the raw public key, so a witness
that spans a key rotation verifies with each run's public key. `store` is the store's random
id (`meta.store_id`), so a checkpoint never vouches for another store.

`verify_witness` checks each checkpoint in witness order and names the first one the store
contradicts. Checkpoints inside the range a purge removed are checked against the purge's
record (its hash at the end of the range, and the rows it kept) instead.

Exceptions:
    BadKey  -- a key file is not an Ed25519 key in PEM form
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from holdgate.protocol.canonical_json import canonical
from holdgate.store.sqlconn import SqlConnection

if TYPE_CHECKING:
    from holdgate.store.interface import Store

VERSION = 1
SIGNED_PREFIX = b"holdgate checkpoint\n"


class BadKey(ValueError):
    """A key file is not an Ed25519 key in PEM form."""


# --- keys ---------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key_pair() -> tuple[bytes, bytes]:
    """A fresh signing key: (private key PEM, public key PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BadKey(f"not a PEM private key without a passphrase ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey(f"a {type(key).__name__.removeprefix('_')}, not an Ed25519 private key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise BadKey(f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadKey(f"a {type(key).__name__.removeprefix('_')}, not an Ed25519 public key")
    return key


# --- the checkpoint -----------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    store: str
    seq: int
    head: str
    time: str
    key: str
    sig: str = ""
    v: int = VERSION

    def body(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "store": self.store,
            "seq": self.seq,
            "head": self.head,
            "time": self.time,
            "key": self.key,
        }

    def signed_bytes(self) -> bytes:
        return SIGNED_PREFIX + canonical(self.body())

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    def line(self) -> str:
        """The witness line (no newline)."""
        return canonical(self.to_json()).decode()

    def signature_valid(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.sig, validate=True), self.signed_bytes())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


def sign(private_key: Ed25519PrivateKey, store: str, seq: int, head: str, time: str) -> Checkpoint:
    unsigned = Checkpoint(store, seq, head, time, key_id(private_key.public_key()))
    signature = private_key.sign(unsigned.signed_bytes())
    return Checkpoint(store, seq, head, time, unsigned.key, base64.b64encode(signature).decode())


def parse_checkpoint(text: str) -> Checkpoint:
    """A checkpoint from a witness line: the JSON object in it (a syslog collector's line
    has a header before it). Raises ValueError saying what is wrong."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object")
    value = json.loads(text[start:])
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    want: Mapping[str, type] = {
        "v": int,
        "store": str,
        "seq": int,
        "head": str,
        "time": str,
        "key": str,
        "sig": str,
    }
    for name, kind in want.items():
        if not isinstance(value.get(name), kind) or isinstance(value.get(name), bool):
            raise ValueError(f"field {name!r} missing or not {kind.__name__}")
    if value["v"] != VERSION:
        raise ValueError(f"checkpoint version {value['v']}, this holdgate reads {VERSION}")
    return Checkpoint(**{name: value[name] for name in want})


@dataclass(frozen=True)
class WitnessLine:
    number: int  # the line in the witness file
    checkpoint: Checkpoint | None
    error: str | None = None


def read_witness(path: str | Path) -> list[WitnessLine]:
    """Every non-empty line of a witness file (OSError when it cannot be read)."""
    out = []
    text = Path(path).read_text("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(WitnessLine(number, parse_checkpoint(line)))
        except ValueError as exc:
            out.append(WitnessLine(number, None, str(exc)))
    return out


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a witness file: O_APPEND, fsynced before it returns (OSError)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the store's side ---------------------------------------------------------------------


def store_id(conn: SqlConnection) -> str:
    return str(conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0])


def chain_head(conn: SqlConnection) -> tuple[int, str]:
    seq, digest = conn.execute("SELECT seq, row_hash FROM chain_head WHERE id = 1").fetchone()
    return int(seq), str(digest)


def row_hashes(conn: SqlConnection, tables: Iterable[str], seqs: set[int]) -> dict[int, str]:
    """The row_hash of the row at each of `seqs` that exists: the chain's hash there."""
    wanted = sorted(seqs)
    out: dict[int, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for table in tables:
            for seq, digest in conn.execute(
                f'SELECT seq, row_hash FROM "{table}" WHERE seq IN ({marks})', chunk
            ):
                out[int(seq)] = str(digest)
    return out


# --- verifying a witness against the store ------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Consecutive checkpoints signed by one key."""

    key: str
    first: int
    last: int


@dataclass(frozen=True)
class WitnessReport:
    """`ok`, or `problem` about checkpoint number `at` (1-based, witness order) on `line`."""

    ok: bool
    checked: int
    problem: str | None = None
    at: int | None = None
    line: int | None = None
    runs: tuple[Run, ...] = ()
    latest: Checkpoint | None = None
    purged: tuple[int, int] | None = None  # checkpoints (first, last number) a purge explains
    purge_note: str | None = None


def _fail(number: int, line: int, checkpoint: Checkpoint | None, problem: str) -> WitnessReport:
    what = f"seq {checkpoint.seq}, signed {checkpoint.time}: " if checkpoint else ""
    return WitnessReport(False, number - 1, f"{what}{problem}", number, line)


def verify_witness(
    store: Store, lines: list[WitnessLine], public_keys: Iterable[Ed25519PublicKey]
) -> WitnessReport:
    """Check every checkpoint's signature and that the store reproduces its head. Call after
    `store.verify()` passed: that proves the rows hash as their row_hash says."""
    keys = {key_id(k): k for k in public_keys}
    if not lines:
        return WitnessReport(False, 0, "the witness holds no checkpoints")
    head_seq, _ = store.chain_head()
    own_id = store.store_id
    purge = store.last_purge()
    hashes = store.row_hashes({w.checkpoint.seq for w in lines if w.checkpoint})
    runs: list[Run] = []
    matched_seq = 0
    explained: list[int] = []
    covered_by: int | None = None
    latest: Checkpoint | None = None
    for number, entry in enumerate(lines, 1):
        cp = entry.checkpoint
        if cp is None:
            return _fail(number, entry.number, None, f"not a checkpoint ({entry.error})")
        public_key = keys.get(cp.key)
        if public_key is None:
            given = ", ".join(sorted(keys)) or "none"
            return _fail(
                number,
                entry.number,
                cp,
                f"signed by key {cp.key}, which no --public-key matches (given: {given}); "
                "pass the public key of every key that signed checkpoints",
            )
        if not cp.signature_valid(public_key):
            return _fail(
                number, entry.number, cp, "bad signature: the checkpoint was forged or altered"
            )
        if cp.store != own_id:
            return _fail(
                number,
                entry.number,
                cp,
                f"is of store {cp.store}, this store is {own_id}: the witness of another store, "
                "or the store was replaced by a new one",
            )
        if cp.seq > head_seq:
            gone = str(cp.seq) if cp.seq == head_seq + 1 else f"{head_seq + 1}..{cp.seq}"
            return _fail(
                number,
                entry.number,
                cp,
                f"the store ends at seq {head_seq}: seq {gone}, signed here, are gone "
                "(the tail was cut, or an older copy of the store was restored)",
            )
        if purge is not None and cp.seq <= purge.last_seq:
            expected = purge.last_hash if cp.seq == purge.last_seq else purge.kept.get(cp.seq)
            explained.append(number)
            if expected is not None and expected != cp.head:
                return _fail(
                    number,
                    entry.number,
                    cp,
                    f"the purge recorded at seq {purge.seq} says the chain's hash at seq "
                    f"{cp.seq} was {expected[:16]}…, this checkpoint signed {cp.head[:16]}…: "
                    "the purged range was rewritten before the purge",
                )
        else:
            actual = hashes.get(cp.seq)
            if actual != cp.head:
                lo = matched_seq + 1
                where = f"seq {cp.seq}" if lo >= cp.seq else f"seq {lo}..{cp.seq}"
                found = f"{actual[:16]}…" if actual else "no row"
                return _fail(
                    number,
                    entry.number,
                    cp,
                    f"signed head {cp.head[:16]}…, the store has {found} at seq {cp.seq}: "
                    f"rows in {where} were changed and the chain recomputed (or an older "
                    "copy of the store was restored and written on)",
                )
            matched_seq = max(matched_seq, cp.seq)
            if purge is not None and cp.seq >= purge.seq and covered_by is None:
                covered_by = number
        if runs and runs[-1].key == cp.key:
            runs[-1] = Run(cp.key, runs[-1].first, number)
        else:
            runs.append(Run(cp.key, number, number))
        latest = cp
    note = None
    if explained and purge is not None:
        span = (explained[0], explained[-1])
        if covered_by is None:
            return WitnessReport(
                False,
                len(lines),
                f"checkpoints #{span[0]}..#{span[1]} lie in the range up to seq {purge.last_seq} "
                f"that the purge recorded at seq {purge.seq} removed, but no later checkpoint "
                "signs that purge: it may hide removed rows. Let the gateway sign the new head "
                "(it does within `every`), or purge with --signing-key and --witness",
                span[0],
                lines[span[0] - 1].number,
            )
        note = (
            f"checkpoints #{span[0]}..#{span[1]} precede the purge recorded at seq {purge.seq} "
            f"({purge.ts}, rows older than {purge.cutoff}): seq up to {purge.last_seq} was "
            f"purged ({len(purge.kept)} rows kept), as that record says; checkpoint "
            f"#{covered_by} signs the purge"
        )
    return WitnessReport(
        True,
        len(lines),
        runs=tuple(runs),
        latest=latest,
        purged=(explained[0], explained[-1]) if explained else None,
        purge_note=note,
    )


def tail_problem(store: Store, lines: list[WitnessLine]) -> str | None:
    """Why the store ends before the latest checkpoint of it in the witness, if it does
    (a copy made without its `-wal`, a cut tail, an older copy restored). Needs no key: a
    forged line can only make this fail, never pass; `verify_witness` checks signatures."""
    own_id = store.store_id
    signed = [(w.number, w.checkpoint) for w in lines if w.checkpoint is not None]
    mine = [(number, cp) for number, cp in signed if cp.store == own_id]
    if not mine:
        if not signed:
            return None
        return (
            f"no checkpoint in it is of this store ({own_id}): the witness of another store, "
            "or the store was replaced by a new one"
        )
    line, cp = max(mine, key=lambda found: found[1].seq)
    head_seq, _ = store.chain_head()
    if cp.seq <= head_seq:
        return None
    gone = str(cp.seq) if cp.seq == head_seq + 1 else f"{head_seq + 1}..{cp.seq}"
    return (
        f"the store ends at seq {head_seq}, but line {line} is a checkpoint of seq "
        f"{cp.seq} (signed {cp.time}): seq {gone} are missing from this store. A copy made "
        "with cp misses the rows still in the -wal file (take copies with holdgate backup); "
        "otherwise the tail was cut or an older copy restored"
    )


@dataclass
class Signer:
    """Signs the head when it moved since the last checkpoint this signer made."""

    private_key: Ed25519PrivateKey = field(repr=False)
    store: str
    last: tuple[int, str] | None = None

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())

    def checkpoint(self, head: tuple[int, str], time: str) -> Checkpoint | None:
        if head == self.last or head[0] == 0:
            return None
        self.last = head
        return sign(self.private_key, self.store, head[0], head[1], time)
