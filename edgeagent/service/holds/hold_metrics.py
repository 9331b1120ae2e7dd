"""The holds in Prometheus, in the daemon's registry (service/views/prometheus.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from edgeagent.service.holds.records import Decision


class HoldMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._pending = Gauge(
            "edgeagent_holds_pending",
            "Held actions waiting for an operator to confirm or reject them",
            registry=registry,
        )
        self._resolved = Counter(
            "edgeagent_holds_resolved",
            "Held actions resolved, by decision (confirmed, edited, rejected, expired)",
            ["decision"],
            registry=registry,
        )
        for decision in Decision:  # every series from the start, at 0
            self._resolved.labels(decision=str(decision))

    def pending(self, count: int) -> None:
        self._pending.set(count)

    def resolved(self, decision: Decision) -> None:
        self._resolved.labels(decision=str(decision)).inc()
