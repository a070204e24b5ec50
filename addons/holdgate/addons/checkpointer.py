"""Checkpointer: signs the audit chain's head every `checkpoints.every` and at shutdown (when
it moved), and appends each checkpoint to the witness outside the store.

All of it runs on a thread of its own, on a store connection of its own: the proxy never
waits for it, and a witness that is down never fails traffic. A checkpoint that could not
be delivered is logged, counted and kept (up to `MAX_UNSENT`, oldest dropped first) to be
sent, in order, on the next tick.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Protocol

from holdgate.config.checkpoints_config import CheckpointsConfig, Witness
from holdgate.store import Store, StoreError, iso, open_store
from holdgate.store.checkpoints import Checkpoint, Signer

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader

logger = logging.getLogger("holdgate")

MAX_UNSENT = 1000
SYSLOG_PRI = 13 * 8 + 6  # facility 13 (log audit), severity 6 (informational)
WEBHOOK_TIMEOUT = 5.0
WEBHOOK_ATTEMPTS = 3


class WitnessDown(Exception):
    """The witness did not take a checkpoint."""


class Sink(Protocol):
    def send(self, checkpoint: Checkpoint) -> None:
        """Deliver one checkpoint, or raise WitnessDown."""

    def close(self) -> None: ...


class FileSink:
    """An append-only file: opened O_APPEND, each line fsynced before it counts as sent."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def send(self, checkpoint: Checkpoint) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            os.write(self._fd, (checkpoint.line() + "\n").encode())
            os.fsync(self._fd)
        except OSError as exc:
            self.close()
            raise WitnessDown(f"{self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                logger.warning("holdgate: closing the checkpoint witness %s failed", self.path)


class SyslogSink:
    """RFC 5424 messages over UDP, the checkpoint's JSON as the message."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.hostname = socket.gethostname() or "-"

    def send(self, checkpoint: Checkpoint) -> None:
        message = (
            f"<{SYSLOG_PRI}>1 {checkpoint.time} {self.hostname} holdgate {os.getpid()} "
            f"checkpoint - {checkpoint.line()}"
        )
        try:
            family = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0][0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            raise WitnessDown(f"syslog {self.address[0]}:{self.address[1]}: {exc}") from exc

    def close(self) -> None:
        pass


class WebhookSink:
    """POSTs each checkpoint as JSON; retries with backoff, waiting on `stop`."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        self.url = url
        self.stop = stop

    def send(self, checkpoint: Checkpoint) -> None:
        body = json.dumps(checkpoint.to_json()).encode()
        problem = ""
        for attempt in range(WEBHOOK_ATTEMPTS):
            if attempt and self.stop.wait(0.25 * 2**attempt):
                break
            request = urllib.request.Request(
                self.url, body, {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
                    response.read(65536)
                return
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                problem = str(getattr(exc, "reason", exc))
        raise WitnessDown(f"{self.url}: {problem or 'shutting down'}")

    def close(self) -> None:
        pass


def make_sink(witness: Witness, stop: threading.Event) -> Sink:
    if witness.kind == "file":
        return FileSink(witness.target)
    if witness.kind == "syslog":
        return SyslogSink(witness.host, witness.port)
    return WebhookSink(witness.target, stop)


class Checkpointer:
    """Learns where the store is when the AuditStore opens it (`use_store`) and signs the
    final checkpoint once the AuditStore has closed, so the last rows are in it
    (`shut_down`); both subscribed in `default_addons()`."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.store_path = ""
        self.unsent: list[Checkpoint] = []
        self.failures = 0  # deliveries that failed
        self.dropped = 0  # unsent checkpoints dropped past MAX_UNSENT
        self.written = 0
        self._store: Store | None = None
        self._signer: Signer | None = None
        self._sink: tuple[Witness, Sink] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def use_store(self, location: str) -> None:
        """The AuditStore opened the store at `location`; checkpoints use a connection of
        their own to it."""
        self.store_path = location

    def running(self) -> None:
        self._thread = threading.Thread(target=self._run, name="holdgate-checkpoints", daemon=True)
        self._thread.start()

    def shut_down(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WEBHOOK_TIMEOUT * WEBHOOK_ATTEMPTS + 5)
        if self._thread is None or not self._thread.is_alive():
            self.tick()
        if self.unsent:
            logger.error(
                "holdgate: %d checkpoints were never delivered to the witness", len(self.unsent)
            )
        if self._sink is not None:
            self._sink[1].close()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _settings(self) -> CheckpointsConfig | None:
        config = self.loader.current
        settings = config.checkpoints if config is not None else None
        return settings if settings is not None and settings.key is not None else None

    def _run(self) -> None:
        while True:
            settings = self._settings()
            if self._stop.wait(settings.every if settings else 1.0):
                return
            self.tick()

    def tick(self) -> None:
        """Sign the head if it moved, then deliver what is unsent, in order."""
        settings = self._settings()
        if settings is None or settings.key is None or not self.store_path:
            return
        try:
            if self._store is None:
                self._store = open_store(self.store_path)
            store = self._store
            if self._signer is None or self._signer.key_id != settings.key_id:
                # a new key starts a new run: its first checkpoint signs the head as it is
                self._signer = Signer(settings.key, store.store_id)
            head = store.chain_head()
        except StoreError as exc:
            logger.error("holdgate: cannot read the chain head for a checkpoint: %s", exc)
            return
        last = self._signer.last
        if last is not None and head[0] < last[0]:
            logger.error(
                "holdgate: the audit chain's head went back from seq %d to %d: an older copy "
                "of the store was restored? `holdgate verify --witness` will show it",
                last[0],
                head[0],
            )
        checkpoint = self._signer.checkpoint(head, iso())
        if checkpoint is not None:
            self.unsent.append(checkpoint)
            if len(self.unsent) > MAX_UNSENT:
                del self.unsent[0]
                self.dropped += 1
        self._deliver(settings.witness)

    def _deliver(self, witness: Witness) -> None:
        if self._sink is None or self._sink[0] != witness:
            if self._sink is not None:
                self._sink[1].close()
            self._sink = (witness, make_sink(witness, self._stop))
        sink = self._sink[1]
        while self.unsent:
            try:
                sink.send(self.unsent[0])
            except WitnessDown as exc:
                self.failures += 1
                if not self._failing:
                    logger.error(
                        "holdgate: checkpoint witness failed (%s); %d checkpoints kept to retry",
                        exc,
                        len(self.unsent),
                    )
                self._failing = True
                return
            self.unsent.pop(0)
            self.written += 1
            if self._failing:
                logger.warning("holdgate: checkpoint witness %s is back", witness.target)
                self._failing = False
