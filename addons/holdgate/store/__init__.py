"""The audit store: sessions, events, approvals, config versions and tool pins, hash-chained.

One `Store` object owns the connections; all SQL lives in this package:

    interface.py         Store, the protocol the gateway and the CLI use
    sql_store.py         SqlStore: every Store method, once, over a SqlConnection
    sqlite_store.py      SqliteStore (the embedded backend) and open_store(url_or_path)
    postgres_store.py    PostgresStore (shared by replicas; needs the config's hash_key)
    sqlconn.py           the connection shape the SQL is written against; psycopg behind it
    schema.py            SQLite tables, views, migrations; opening a connection
    pg_schema.py         the same tables on PostgreSQL, and their migrations
    chain.py             row checks, canonical hashing, append, verify
    approval_records.py  the approval state machine and who may decide
    campaign_records.py  access-review certification campaigns and who may certify
    queries.py           sessions, events, the export feed, tool pins
    purge.py             retention (keeping current pins, configs in use), a chained checkpoint
    checkpoints.py       signed checkpoints: keys, the witness line format, verify --witness
    replica_records.py   the replicas sharing the store: registration, heartbeats, leases
    task_records.py      who owns each upstream task, and the call that created it
    pg_listen.py         PostgreSQL notifications of approval decisions (LISTEN/NOTIFY)
    writer.py            AuditWriter, the gateway's non-blocking writer thread
    writer_process.py    ProcessAuditWriter: that writer in a process of its own
    digest_key.py        the argument-digest key kept beside the store
    rows.py              the result shapes (TypedDicts) and the store's time format
    errors.py            the exception tree
    sqlite_export.py     the export feed as a standalone SQLite file

`PostgresStore` is imported on first use of the name (psycopg behind it is heavy and only a
PostgreSQL store needs it): `from holdgate.store import PostgresStore` works as ever.
"""

from typing import TYPE_CHECKING, Any

from holdgate.store.approval_records import CHANNELS, Channel, Decision
from holdgate.store.campaign_records import Campaign, Item, ItemSpec, Verdict
from holdgate.store.chain import VerifyReport, chain_hash, normalize_row
from holdgate.store.errors import (
    AlreadyCertified,
    ApprovalExpired,
    ApprovalNotPending,
    ApprovalRefused,
    BadRow,
    CampaignClosed,
    CertificationRefused,
    NotAnApprover,
    NotAReviewer,
    ReplicaNameTaken,
    SchemaTooNew,
    SelfApproval,
    SelfCertification,
    StoreError,
    StoreNotFound,
    StoreNotSupported,
    StoreUnavailable,
    UnknownApproval,
    UnknownCampaign,
)
from holdgate.store.interface import Store
from holdgate.store.purge import PurgeRecord, PurgeReport
from holdgate.store.queries import EXPORT_FIELDS
from holdgate.store.rows import (
    ApprovalRecord,
    ApprovalRow,
    EventRow,
    RecordingRow,
    ReplicaRecord,
    Row,
    SessionSummary,
    ToolPinRow,
    iso,
    parse_iso,
)
from holdgate.store.schema import CHAINED, GENESIS, SCHEMA_VERSION, open_db, schema_version
from holdgate.store.sqlite_export import write_sqlite_export
from holdgate.store.sqlite_store import SqliteStore, open_store
from holdgate.store.task_records import TaskRecord
from holdgate.store.writer import AuditWriter, Writer
from holdgate.store.writer_process import ProcessAuditWriter

if TYPE_CHECKING:
    from holdgate.store.postgres_store import PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from holdgate.store.postgres_store import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlreadyCertified",
    "Campaign",
    "CampaignClosed",
    "CertificationRefused",
    "Item",
    "ItemSpec",
    "NotAReviewer",
    "SelfCertification",
    "UnknownCampaign",
    "Verdict",
    "CHAINED",
    "EXPORT_FIELDS",
    "GENESIS",
    "SCHEMA_VERSION",
    "ApprovalExpired",
    "ApprovalNotPending",
    "ApprovalRecord",
    "ApprovalRefused",
    "ApprovalRow",
    "AuditWriter",
    "BadRow",
    "CHANNELS",
    "Channel",
    "Decision",
    "EventRow",
    "NotAnApprover",
    "PostgresStore",
    "ProcessAuditWriter",
    "PurgeRecord",
    "PurgeReport",
    "ReplicaNameTaken",
    "ReplicaRecord",
    "Row",
    "SchemaTooNew",
    "SelfApproval",
    "SessionSummary",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreNotFound",
    "StoreNotSupported",
    "StoreUnavailable",
    "RecordingRow",
    "TaskRecord",
    "ToolPinRow",
    "UnknownApproval",
    "VerifyReport",
    "Writer",
    "chain_hash",
    "iso",
    "normalize_row",
    "open_db",
    "open_store",
    "parse_iso",
    "schema_version",
    "write_sqlite_export",
]
