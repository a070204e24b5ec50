"""The mitmproxy options the bundle adds, and the check that no `--set` of ours is lost.

mitmproxy keeps a `--set` for an option nobody declared aside without a word, and a
`--set` given twice makes the script fail to register, silently leaving a plain proxy.
The entry script runs `option_problems` on mitmproxy's deferred options before it
registers anything, so both stop the gateway instead.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Mapping, Sequence

from mitmproxy.proxy.mode_specs import ProxyMode

PREFIX = "holdgate_"
OPTIONS = (
    "holdgate_config",
    "holdgate_store",
    "holdgate_audit_writer",
    "holdgate_recordings",
    "holdgate_admin",
    "holdgate_max_body",
    "holdgate_replica",
    "holdgate_mitmweb_operator",
    "holdgate_shadow",
    "holdgate_decision_log",
)


def option_problems(deferred: Mapping[str, object]) -> list[str]:
    """What is wrong with the `holdgate_*` options set before the bundle declared them.

    `deferred` is mitmproxy's `options.deferred`: name -> the strings given on the command
    line (an object with a `val` list) or an already typed value (from a config file).
    """
    problems = []
    for name in sorted(deferred):
        if not name.lower().startswith(PREFIX):
            continue
        if name not in OPTIONS:
            close = difflib.get_close_matches(name.lower(), OPTIONS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(OPTIONS)}"
            problems.append(f"unknown option {name} ({hint})")
            continue
        values = getattr(deferred[name], "val", None)
        if isinstance(values, list) and len(values) > 1:
            shown = ", ".join(repr(v) for v in values)
            problems.append(f"option {name} is set {len(values)} times ({shown}): set it once")
    return problems


DEFAULT_STORE = "holdgate.sqlite3"
# the options that name the audit store, or say how it is written
STORE_OPTIONS = frozenset({"holdgate_store", "holdgate_audit_writer"})
AUDIT_WRITERS = ("thread", "process")  # the first is the default (measured: docs/performance.md)


def listen_addresses(modes: Sequence[str], listen_host: str, listen_port: int | None) -> str:
    """Where the gateway listens, as mitmproxy binds it: each mode's own host and port (a
    `reverse:URL@HOST:PORT` spec names them; else `listen_host`/`listen_port`, else the
    mode's default), joined with `,` when there are several. A mode that binds no port
    (`local`) is named by its spec."""
    shown = []
    for spec in modes or ("regular",):
        mode = ProxyMode.parse(spec)
        port = mode.listen_port(listen_port or None)
        if port is None:
            shown.append(mode.full_spec)
            continue
        host = mode.listen_host(listen_host or None)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        shown.append(f"{host}:{port}" if host else str(port))
    return ",".join(shown)


def replica_name(options: object) -> str:
    """This gateway's name among replicas (in its flow files' names and its store rows):
    the `holdgate_replica` option where it exists and is set, else `<hostname>:<listen
    address>` (`listen_addresses`), which no two gateways on one host share. The one place
    that decides it."""
    named = getattr(options, "holdgate_replica", "")
    if isinstance(named, str) and named:
        return named
    modes = getattr(options, "mode", None) or ["regular"]
    host = getattr(options, "listen_host", "") or ""
    port = getattr(options, "listen_port", None)
    return f"{socket.gethostname()}:{listen_addresses(modes, host, port)}"
