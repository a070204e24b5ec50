"""Whether tracing is on, read from the standard OTEL_* variables without importing any
OpenTelemetry code (a gateway with tracing off never loads it)."""

from __future__ import annotations

from collections.abc import Mapping


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Tracing is on when the OTEL_* variables ask for an OTLP exporter: an endpoint is
    set, or OTEL_TRACES_EXPORTER names otlp; OTEL_SDK_DISABLED=true or
    OTEL_TRACES_EXPORTER=none turn it off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "none" in exporters:
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return bool(endpoint) or "otlp" in exporters
