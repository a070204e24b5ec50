"""AuditStore: the service that owns the audit store for the whole gateway.

Built first in `default_addons()` and first in its order, so the store is open before any
stage configures, and closed after every stage's `done` (the Pipeline runs `done` in
reverse). It owns what came with the store: its connection and writer, the digest key,
masking for the record, and one async facade (`run`) that does a store call off the event
loop. Others learn of it by subscribing in `default_addons()`: `opened` (where the store
is, for those with connections of their own), `before_close` (a replica retires while it
still can), `after_shutdown` (once the last rows are written: the checkpoint that signs
them) and `rows_written` (each committed batch, on the writer's thread).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions, http

from holdgate.addons.flowstate import state
from holdgate.config.gateway_config import GatewayConfig
from holdgate.config.options import AUDIT_WRITERS, DEFAULT_STORE, STORE_OPTIONS
from holdgate.masking.masker import MaskingError, MaskOutcome
from holdgate.masking.record_masking import RecordMasking, ToolHint, mask_for_record, scrub_row
from holdgate.store import PostgresStore, Store, StoreError, Writer, open_store
from holdgate.store.rows import Row
from holdgate.store.writer import Batch

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader

logger = logging.getLogger("holdgate")

# What building a row from a call's arguments can raise: masking gave up, or the values
# cannot be serialized (1e999 is inf, a deeply nested value exhausts the recursion).
UNRECORDABLE = (MaskingError, ValueError, OverflowError, RecursionError)


class AuditStore:
    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.location = ""  # where the store is (a path or URL), once opened
        self._store: Store | None = None  # the gateway's store; the writer has its own
        self.writer: Writer | None = None
        self.digest_key = b""
        self.opened: list[Callable[[str], None]] = []
        self.before_close: list[Callable[[], None]] = []
        self.after_shutdown: list[Callable[[], None]] = []
        self.rows_written: list[Callable[[Batch], None]] = []
        self._record_masking: tuple[GatewayConfig, bytes, RecordMasking] | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "holdgate_store",
            str,
            DEFAULT_STORE,
            "Holdgate's audit store: a SQLite path, or a postgresql:// URL shared by replicas "
            "(then the config needs hash_key).",
        )
        loader.add_option(
            "holdgate_audit_writer",
            str,
            AUDIT_WRITERS[0],
            "Who writes the audit rows: a thread of the gateway (thread), or a process of the "
            "gateway's own (process: its hashing and writing off the interpreter lock, at "
            "the cost of two pipes and a process switch per commit).",
            choices=AUDIT_WRITERS,
        )

    def configure(self, updated: set[str]) -> None:
        if not STORE_OPTIONS & updated:
            return
        if ctx.options.holdgate_audit_writer not in AUDIT_WRITERS:
            raise exceptions.OptionsError(
                f"holdgate_audit_writer: {ctx.options.holdgate_audit_writer!r} is not a writer; "
                "use thread (the default) or process"
            )
        self.close()
        try:
            self.location = ctx.options.holdgate_store
            self._store = open_store(self.location)
            self.writer = self._store.writer(process=ctx.options.holdgate_audit_writer == "process")
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        except StoreError as exc:
            raise exceptions.OptionsError(
                f"holdgate_store: cannot open the audit store ({exc}); check the path "
                "or URL and its permissions"
            ) from None
        self.writer.on_written = self._written
        if self.loader.current is not None and (
            problem := self.config_problem(self.loader.current)
        ):
            raise exceptions.OptionsError(f"holdgate_config: {problem}")
        self.digest_key = b"" if isinstance(self._store, PostgresStore) else self._store.digest_key
        for listener in self.opened:
            listener(self.location)

    def done(self) -> None:
        self.close()
        for callback in self.after_shutdown:
            callback()

    def close(self) -> None:
        """Close the store (shutdown, or another one named), telling the subscribers."""
        if self._store is None:
            return
        for callback in self.before_close:
            callback()
        if self.writer is not None:
            self.writer.close()
            logger.info(
                "holdgate: audit writer closed: max queue depth %d, %d rows lost",
                self.writer.max_queue_depth_seen,
                self.writer.lost,
            )
            self.writer = None
        self._store.close()
        self._store = None

    def _written(self, rows: Batch) -> None:
        for listener in self.rows_written:
            listener(rows)

    @property
    def is_open(self) -> bool:
        return self._store is not None

    def store(self) -> Store:
        """The open store, for a call that must run now (at configure, or on a thread)."""
        if self._store is None:
            raise StoreError("the audit store is not open")
        return self._store

    async def run[T](self, call: Callable[[Store], T]) -> T:
        """`call(store)` off the event loop: every blocking store call a flow waits for."""
        store = self.store()
        return await asyncio.to_thread(call, store)

    def key(self, config: GatewayConfig) -> bytes:
        """The key arguments are digested with: the config's `hash_key`, else the store's."""
        key = config.hash_key or self.digest_key
        if not key:  # a shared store with a config that slipped past `config_problem`
            raise RuntimeError("no digest key: a PostgreSQL store needs hash_key in the config")
        return key

    def config_problem(self, config: GatewayConfig) -> str | None:
        """Why this store cannot record under `config` (the loader refuses such a config)."""
        if isinstance(self._store, PostgresStore) and config.hash_key is None:
            return (
                "a PostgreSQL store (holdgate_store) is shared by replicas, so arguments must "
                "be digested with one key: set `hash_key` (e.g. hash_key: {env: "
                "HOLDGATE_HASH_KEY}) in the config"
            )
        return None

    def record_masking(self, config: GatewayConfig) -> RecordMasking:
        """How the record is masked under this config (built once per config)."""
        key = self.key(config)
        cached = self._record_masking
        if cached is None or cached[0] is not config or cached[1] != key:
            cached = self._record_masking = (config, key, RecordMasking.from_config(config, key))
        return cached[2]

    def cached_record_masking(self) -> RecordMasking | None:
        """The last masking built, for a thread that must not build one (read once)."""
        cached = self._record_masking
        return cached[2] if cached is not None else None

    def masked_for_record(
        self, value: Any, config: GatewayConfig, upstream: str, tool: ToolHint
    ) -> MaskOutcome:
        """`value` masked for a store row; one that cannot be masked is left out."""
        try:
            return mask_for_record(value, self.record_masking(config), upstream, tool)
        except UNRECORDABLE as exc:
            logger.error("holdgate: a value was left out of the audit row: %s", exc)
            return MaskOutcome(f"[holdgate: left out of the record: {exc}]", {"unmaskable": 1})

    def submit(
        self, flow: http.HTTPFlow, config: GatewayConfig, table: str, row: dict[str, Any]
    ) -> None:
        """Queue a flow's row; no value the gateway injected is ever in it, however it got
        there."""
        self.submit_all(flow, config, [(table, row)])

    def check_writable(self, flow: http.HTTPFlow, config: GatewayConfig) -> None:
        """Raise as `submit` would if no row could be queued now: a row held back to be
        written with others (a stream's slice) must end the stream as soon as the store
        fails, as a row per message would."""
        writer = self.writer
        if writer is None or not writer.healthy:
            _raise_if_required(flow, config)

    def submit_all(
        self, flow: http.HTTPFlow, config: GatewayConfig, rows: list[tuple[str, Row]]
    ) -> None:
        """Queue a flow's rows to be written together, all or none (scrubbed as `submit`
        does)."""
        writer = self.writer
        masking = self.record_masking(config)
        scrubbed = [(table, scrub_row(row, masking)) for table, row in rows]
        if writer is None or not writer.submit_all(scrubbed):
            _raise_if_required(flow, config)  # else the row is lost (the writer counts it)
            state(flow).audit_lost = True


def _raise_if_required(flow: http.HTTPFlow, config: GatewayConfig) -> None:
    """A flow's row cannot be recorded: with `audit: required` what it answers is withheld
    (raised); a refusal was never served, so losing its row must not become another error."""
    if config.audit == "required" and state(flow).refused is None:
        raise RuntimeError("the audit store queue is full or failing")
