"""Flow files written in segments, so that none is ever left unreadable.

A session's flows go to segments, `<session>+<opened>+<replica>.mitm` (`recording_files`
lists them in order, every replica's; `cat` joins them into one file `mitmweb -r` reads).
The replica in the name lets several gateways share one folder, or each keep its own
and have them gathered later, without two files of a session ever colliding. A segment is built as
`<session>+<opened>+<replica>.<pid>.mitm.part`: each flow appended as one whole tnetstring
record (a write that fails, e.g. on a full disk, is cut back off, so the part always holds
whole records), fsynced whenever the writer has nothing more queued, and renamed to its
`.mitm` name once closed: after a second without a new flow for the session, ten seconds
after it opened, past 8 MiB, on a flush and at shutdown. A `.mitm` file therefore only ever
appears whole, and each closed one is reported (`Closed`: flows, bytes, sha256) so that the
gateway records it in the store. A part left by a writer killed mid-write is repaired by
the next writer of the folder for the same replica: its torn tail (if any) cut off and the
part closed (another replica's parts are its own to repair: its pid means nothing here).

`+` separates a session, its segment and its replica because `recording_name` never emits
it: the files of one session cannot be mistaken for another's.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mitmproxy.io import tnetstring

SEGMENT_IDLE = 1.0  # seconds without a new flow of its session before a segment is closed
SEGMENT_AGE = 10.0  # seconds after it opened
SEGMENT_BYTES = 8 << 20

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_FILE = re.compile(r"^[A-Za-z0-9._+-]+\.mitm$")
_PART = re.compile(
    r"^(?P<segment>(?P<stem>[A-Za-z0-9._-]+)\+[0-9]{8}T[0-9]{6}\.[0-9]{6}Z"
    r"(?:\+(?P<replica>[A-Za-z0-9._-]+))?)\.(?P<pid>[0-9]+)\.mitm\.part$"
)


def recording_name(session_key: str) -> str:
    """A file name stem that cannot escape the recordings folder, whatever the session id
    holds (and never holds `+`, the segment separator)."""
    return _UNSAFE.sub("_", session_key)[:120] or "unnamed"


def replica_stem(replica: str) -> str:
    """A replica's name as its flow files carry it: sanitized like a session's, and short
    enough that a segment's name stays within a file name's 255 bytes."""
    return recording_name(replica)[:60]


def recording_files(folder: str | Path, session_key: str) -> list[Path]:
    """Every flow file of a session, every replica's, oldest first (a file from before
    segments first; segments by the time they opened)."""
    stem = recording_name(session_key)
    folder = Path(folder)
    legacy = folder / f"{stem}.mitm"
    return [legacy] * legacy.is_file() + sorted(folder.glob(f"{stem}+*.mitm"))


class Closed(NamedTuple):
    """A segment closed whole: what the store's `recordings` row says of it."""

    session: str  # the session id as the gateway knows it (a repaired part: its file stem)
    path: Path
    flows: int
    bytes: int
    sha256: str


def file_status(folder: str | Path, name: str, sha256: str) -> str:
    """Whether a recorded flow file is still as it was closed: `ok`, `missing`, `changed`
    (its sha256 differs: edited or replaced since), or `not a flow file name` for a name
    that is not a plain `.mitm` file name (a store row cannot make us read elsewhere)."""
    if not _FILE.match(name) or name in (".", ".."):
        return "not a flow file name"
    path = Path(folder) / name
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return "ok" if digest.hexdigest() == sha256 else "changed"


class SegmentError(OSError):
    """A segment could not be closed: its flows are in a part the next writer repairs."""


@dataclass
class _Open:
    session: str
    part: Path
    segment: str  # `<stem>+<opened>+<replica>`
    fd: int
    size: int  # bytes of whole records
    flows: int
    opened: float
    last: float
    digest: hashlib._Hash
    synced: bool = True


class Segments:
    """The open segments of one writer process (not thread-safe: one process, one loop).

    `closed` collects the segments closed whole since it was last emptied."""

    def __init__(
        self, folder: Path, replica: str = "", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.folder = folder
        self.replica = replica_stem(replica) if replica else ""
        self.clock = clock
        self.closed: list[Closed] = []
        self._open: dict[str, _Open] = {}

    def append(self, session: str, record: bytes) -> None:
        """Append one whole record to the session's open segment (opening one if needed).

        Raises OSError when it cannot be written; the segment then holds what it held."""
        stem = recording_name(session)
        seg = self._open.get(stem) or self._start(stem, session)
        written = 0
        try:
            while written < len(record):
                written += os.write(seg.fd, record[written:])
        except OSError:
            if written:
                try:
                    os.ftruncate(seg.fd, seg.size)
                except OSError:  # the part keeps a torn tail: leave it to the repair
                    self._abandon(stem)
            raise
        seg.size += len(record)
        seg.digest.update(record)
        seg.flows += 1
        seg.last = self.clock()
        seg.synced = False
        if seg.size >= SEGMENT_BYTES:
            self.close(stem)

    def sync(self) -> None:
        """Make what was appended durable (called whenever nothing more is queued)."""
        for seg in self._open.values():
            if not seg.synced:
                with suppress(OSError):  # a failing fsync shows again when it is closed
                    os.fsync(seg.fd)
                seg.synced = True

    def next_due(self) -> float | None:
        """Seconds until the next segment is due to close, None when none is open."""
        if not self._open:
            return None
        now = self.clock()
        due = min(min(s.last + SEGMENT_IDLE, s.opened + SEGMENT_AGE) for s in self._open.values())
        return max(0.0, due - now)

    def close_due(self) -> list[tuple[str, int, OSError]]:
        """Close the segments due; the failures (session, flows lost from view, error)."""
        now = self.clock()
        due = [
            stem
            for stem, s in self._open.items()
            if now >= s.last + SEGMENT_IDLE or now >= s.opened + SEGMENT_AGE
        ]
        return self._close_each(due)

    def close_all(self) -> list[tuple[str, int, OSError]]:
        return self._close_each(list(self._open))

    def close(self, stem: str) -> None:
        """Close a segment whole: fsync, rename it to its `.mitm` name, fsync the folder."""
        seg = self._open.pop(stem)
        try:
            os.fsync(seg.fd)
        finally:
            os.close(seg.fd)
        path = _publish(seg.part, self.folder, seg.segment)
        self.closed.append(Closed(seg.session, path, seg.flows, seg.size, seg.digest.hexdigest()))

    def repair(self) -> list[tuple[Path, int]]:
        """Close the parts of this replica (or of none) that writers no longer running left
        behind, each cut back to its whole records; the files made and the bytes cut off
        (each also in `closed`)."""
        repaired: list[tuple[Path, int]] = []
        try:
            names = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):  # nothing written there yet
            return repaired
        for name in sorted(names):
            match = _PART.match(name)
            if match is None or match["replica"] not in (None, self.replica):
                continue
            if _running(int(match["pid"])):
                continue
            part = self.folder / name
            data = part.read_bytes()
            whole = whole_records(data)
            if whole < len(data):
                with part.open("r+b") as fh:
                    fh.truncate(whole)
                    os.fsync(fh.fileno())
            if whole == 0:
                part.unlink()
                continue
            path = _publish(part, self.folder, match["segment"])
            flows = _count_records(data[:whole])
            sha256 = hashlib.sha256(data[:whole]).hexdigest()
            self.closed.append(Closed(match["stem"], path, flows, whole, sha256))
            repaired.append((path, len(data) - whole))
        return repaired

    def _start(self, stem: str, session: str) -> _Open:
        now = self.clock()
        wall = time.time()
        segment = f"{stem}+{time.strftime('%Y%m%dT%H%M%S', time.gmtime(wall))}"
        segment += f".{int(wall % 1 * 1_000_000):06d}Z"
        if self.replica:
            segment += f"+{self.replica}"
        part = self.folder / f"{segment}.{os.getpid()}.mitm.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(part, flags, 0o600)
        except FileNotFoundError:  # the folder is made on first use (and again if removed)
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, flags, 0o600)
        seg = self._open[stem] = _Open(session, part, segment, fd, 0, 0, now, now, hashlib.sha256())
        return seg

    def _abandon(self, stem: str) -> None:
        seg = self._open.pop(stem)
        with suppress(OSError):
            os.close(seg.fd)

    def _close_each(self, stems: list[str]) -> list[tuple[str, int, OSError]]:
        failures: list[tuple[str, int, OSError]] = []
        for stem in stems:
            flows = self._open[stem].flows
            try:
                self.close(stem)
            except OSError as exc:
                failures.append((stem, flows, exc))
        return failures


def whole_records(data: bytes) -> int:
    """How many leading bytes of `data` are whole tnetstring records."""
    return _scan(data)[0]


def _count_records(data: bytes) -> int:
    return _scan(data)[1]


def _scan(data: bytes) -> tuple[int, int]:
    """(bytes, records) of the whole tnetstring records at the start of `data`."""
    pos = records = 0
    while pos < len(data):
        colon = data.find(b":", pos, pos + 13)
        if colon <= pos or not data[pos:colon].isdigit():
            break
        end = colon + 1 + int(data[pos:colon])
        if end >= len(data):
            break
        try:
            tnetstring.loads(data[pos : end + 1])
        except ValueError:
            break
        pos = end + 1
        records += 1
    return pos, records


def _publish(part: Path, folder: Path, segment: str) -> Path:
    """Rename a closed part to a `.mitm` name no other file holds, and make it durable."""
    target = folder / f"{segment}.mitm"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{segment}-{n}.mitm"
    try:
        os.rename(part, target)
    except OSError as exc:
        raise SegmentError(exc.errno, f"cannot close {part.name}: {exc.strerror}") from exc
    with suppress(OSError):  # the rename survives a crash once the folder is synced
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a part of ours from before a restart cannot be open any more
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
