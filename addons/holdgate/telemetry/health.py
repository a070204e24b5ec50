"""Whether a gateway may be sent traffic (`GET /readyz`), from facts the addons hold.

A load balancer or Kubernetes reads only the status and the reason, and the probe is
unauthenticated: the reasons are fixed sentences that name a part, never a path, a DSN,
a version or an error text (those are in the log and `holdgate status`).
"""

from __future__ import annotations

from dataclasses import dataclass

# A lease the store has not taken for this long is as good as lost: the other replicas
# judge a replica dead after `replica_records.LEASE` (10 s) without a heartbeat.
STALE_LEASE_SECONDS = 10.0

STARTING = "starting: mitmproxy's start-up is not over"
NO_CONFIG = "no config loaded"
STORE_CLOSED = "the audit store is not open"
STORE_FAILING = "the audit store cannot be written"
NOT_REGISTERED = "the replica is not registered in the audit store"
LEASE_LOST = "the audit store has not taken the replica's heartbeat"


@dataclass(frozen=True)
class Readiness:
    """What readiness is judged on, read from the addons at the probe."""

    started: bool  # mitmproxy's start-up over (every addon's `running` done, no error)
    config_loaded: bool
    store_open: bool
    writer_healthy: bool  # the audit writer's last write (or probe) succeeded
    replica: str | None  # the name registered in the store, None when not registered
    lease_age: float | None  # seconds since the store last took the lease, None: failed


def not_ready(facts: Readiness) -> str | None:
    """Why the gateway must not be sent traffic yet, or None when it is ready.

    The store is judged writable by two writes that happen anyway, off the event loop:
    the audit writer's (it probes every second while failing) and the replica's heartbeat
    every two seconds, which finds a store that went away even when no call is written.
    """
    if not facts.started:
        return STARTING
    if not facts.config_loaded:
        return NO_CONFIG
    if not facts.store_open:
        return STORE_CLOSED
    if not facts.writer_healthy:
        return STORE_FAILING
    if facts.replica is None:
        return NOT_REGISTERED
    if facts.lease_age is None or facts.lease_age > STALE_LEASE_SECONDS:
        return LEASE_LOST
    return None
