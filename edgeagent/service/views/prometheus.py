"""Prometheus metrics: counters fed per task, gauges refreshed from each heartbeat.

The telemetry calls `task_finished` for every task that ends (answered, failed or refused)
and `observe` with every heartbeat it builds, so the gauges here say exactly what the
retained heartbeat says. How they leave the daemon (an HTTP endpoint, node_exporter's
textfile) is prometheus_export.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest
from prometheus_client import Enum as EnumMetric

from edgeagent import __version__
from edgeagent.protocol.heartbeat import Heartbeat

MIB = 2**20
# The daemon's lifecycle states (service.daemon.State), as an enum metric.
STATES = ("starting", "loading", "serving", "paused", "draining", "stopped")


class Metrics:
    """The metrics of one daemon, in their own registry (not the process-global one)."""

    def __init__(self, device_id: str, model: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("edgeagent_build", "edgeagent version, device and model", registry=r).info(
            {"version": __version__, "device": device_id, "model": model}
        )
        self.state = EnumMetric(
            "edgeagent_state", "Lifecycle state of the daemon", states=list(STATES), registry=r
        )
        self.tasks = Counter(
            "edgeagent_tasks",
            "Tasks that ended, by status (ok, error) and error code (empty when ok)",
            ["status", "error_code"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "edgeagent_prompt_tokens", "Prompt tokens of answered tasks", registry=r
        )
        self.generated_tokens = Counter(
            "edgeagent_generated_tokens", "Tokens generated (answer tokens)", registry=r
        )
        self.prompt_seconds = Counter(
            "edgeagent_prompt_seconds", "Time spent processing prompts", registry=r
        )
        self.decode_seconds = Counter(
            "edgeagent_decode_seconds", "Time spent generating answers", registry=r
        )
        self.queue_depth = Gauge("edgeagent_queue_depth", "Tasks waiting", registry=r)
        self.queue_capacity = Gauge("edgeagent_queue_capacity", "Queue size", registry=r)
        self.context_budget = Gauge(
            "edgeagent_context_budget_tokens", "Context the memory allows", registry=r
        )
        self.n_ctx = Gauge("edgeagent_context_tokens", "Context the model has (n_ctx)", registry=r)
        self.memory_available = Gauge(
            "edgeagent_memory_available_bytes",
            "Available memory, the tighter of host and cgroup",
            registry=r,
        )
        self.rss = Gauge("edgeagent_resident_memory_bytes", "Daemon resident memory", registry=r)
        self.tokens_per_second = Gauge(
            "edgeagent_tokens_per_second", "Decode speed over the last tasks", registry=r
        )
        self.journal_rows = Gauge("edgeagent_journal_rows", "Tasks in the task journal", registry=r)
        self.reconnects = Counter(
            "edgeagent_mqtt_reconnects", "Connections to the broker after the first", registry=r
        )
        self.puback_refusals = Counter(
            "edgeagent_mqtt_puback_refusals",
            "Publishes the broker refused (MQTT v5 PUBACK reason code >= 0x80)",
            registry=r,
        )
        self.held_actions = Counter(
            "edgeagent_held_actions",
            "Action answers held instead of dispatched, by action and reason "
            "(confidence, confidence_unknown, cut_short)",
            ["action", "reason"],
            registry=r,
        )
        self.soc_temperature = Gauge(
            "edgeagent_soc_temperature_celsius", "SoC temperature", registry=r
        )
        self._reconnects_seen = 0
        self._refusals_seen = 0

    # -- per task --------------------------------------------------------------------

    def task_finished(
        self,
        *,
        status: str,
        error_code: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        prompt_s: float = 0.0,
        decode_s: float = 0.0,
    ) -> None:
        """One task ended: answered (status ok), failed or refused (status error)."""
        self.tasks.labels(status=status, error_code=error_code or "").inc()
        self.prompt_tokens.inc(max(prompt_tokens, 0))
        self.generated_tokens.inc(max(completion_tokens, 0))
        self.prompt_seconds.inc(max(prompt_s, 0.0))
        self.decode_seconds.inc(max(decode_s, 0.0))

    def reply(self, body: Mapping[str, Any]) -> None:
        """`task_finished` from a reply's JSON (docs/protocol.md): ok or error replies alike."""
        usage = body.get("usage") or {}
        timing = body.get("timing") or {}
        error, output = body.get("error"), body.get("output")
        self.task_finished(
            status=str(body.get("status")),
            error_code=error.get("code") if isinstance(error, Mapping) else None,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            prompt_s=float(timing.get("prompt_ms", 0.0)) / 1000,
            decode_s=float(timing.get("decode_ms", 0.0)) / 1000,
        )
        held = body.get("held")
        if isinstance(held, Mapping):
            action = output.get("action") if isinstance(output, Mapping) else None
            self.held_actions.labels(action=str(action), reason=str(held.get("reason"))).inc()

    # -- per heartbeat ---------------------------------------------------------------

    def observe(
        self,
        heartbeat: Heartbeat,
        *,
        journal_rows: int | None = None,
        connects: int | None = None,
        puback_refusals: int | None = None,
    ) -> None:
        """Gauges from this daemon's heartbeat, plus what the heartbeat leaves out.

        `connects` and `puback_refusals` are the link's running totals; the counters
        advance by what is new since the last call.
        """
        if heartbeat.state in STATES:
            self.state.state(heartbeat.state)
        context, memory = heartbeat.context, heartbeat.memory
        # The governor's reading is the tighter of host and cgroup; host until its first.
        available_mb = (
            memory.host_available_mb if context.available_mb is None else context.available_mb
        )
        gauges: dict[Gauge, float | None] = {
            self.queue_depth: heartbeat.queue.depth,
            self.queue_capacity: heartbeat.queue.capacity,
            self.n_ctx: context.n_ctx,
            self.context_budget: context.budget,
            self.tokens_per_second: heartbeat.tokens_per_s,
            # service/system/board.py; no board, no temperature
            self.soc_temperature: heartbeat.board.temp_c if heartbeat.board else None,
            self.journal_rows: journal_rows,
            self.memory_available: available_mb * MIB,
            self.rss: memory.rss_mb * MIB,
        }
        for gauge, value in gauges.items():
            if value is not None:  # unknown: the gauge keeps what it last knew
                gauge.set(value)
        if connects is not None and (reconnects := max(connects - 1, 0)) > self._reconnects_seen:
            self.reconnects.inc(reconnects - self._reconnects_seen)
            self._reconnects_seen = reconnects
        if puback_refusals is not None and puback_refusals > self._refusals_seen:
            self.puback_refusals.inc(puback_refusals - self._refusals_seen)
            self._refusals_seen = puback_refusals

    def exposition(self) -> bytes:
        """The Prometheus text format (what the endpoint serves and the textfile holds)."""
        return generate_latest(self.registry)
