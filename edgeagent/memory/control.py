"""Keeps the model's context sized to the memory that is really there.

Samples memory (edgeagent.memory.readings: psutil + the tightest cgroup), asks the governor
(edgeagent.memory.governor: budget, hysteresis, pause) and resizes the engine's context
between tasks; the weights stay loaded. The compute-buffer cost per context token is
measured, not guessed: the daemon loads the model at a small context, the first
resize gives a second point, and the line through both is the cost the budget uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError
from edgeagent.inference.gguf import kv_bytes_per_token
from edgeagent.memory.governor import Decision, Governor
from edgeagent.memory.readings import MemoryReading, read_memory

log = structlog.get_logger("edgeagent.memory.control")

MIB = 2**20


class ResizableContext(Protocol):
    """What the control loop needs from the engine (`Engine.capacity`, inference/capacity.py)."""

    @property
    def n_ctx(self) -> int:
        """Context tokens allocated now (0: released)."""

    @property
    def n_ctx_train(self) -> int:
        """The context the model was trained for: never more is allocated."""

    @property
    def metadata(self) -> Mapping[str, str]:
        """GGUF metadata, for the KV-cache bytes per token."""

    def buffer_bytes(self) -> tuple[int, int]:
        """(KV cache, compute buffer) bytes of the current context."""

    async def resize(self, n_ctx: int) -> None:
        """Recreate the context with n_ctx tokens (0: free it); may raise EdgeAgentError."""


@runtime_checkable
class SequenceContext(Protocol):
    """An engine that holds more than one context's worth: sequences for concurrent
    tasks and saved prompt prefixes (`Engine.capacity`, inference/capacity.py)."""

    @property
    def max_parallel(self) -> int:
        """Sequences it could batch at most."""

    @property
    def prefix_cache_max(self) -> int:
        """Bytes its prefix cache would like."""

    def sequences_held(self) -> tuple[int, int]:
        """(KV streams of the context now, bytes the prefix cache holds now)."""

    def set_parallel(self, parallel: int) -> None:
        """Sequences (KV streams of n_ctx tokens each) a batch may use from now on."""

    def set_prefix_cache_limit(self, limit_bytes: int) -> None:
        """The prefix cache's bound from now on (evicts down to it)."""


class MemoryControlLoop:
    def __init__(
        self,
        engine: ResizableContext,
        cfg: Config,
        *,
        read: Callable[[], MemoryReading] = read_memory,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self._read = read
        self._on_change: Callable[[Decision], None] | None = None  # start()'s
        self.governor: Governor | None = None
        self.decision: Decision | None = None
        self.reading: MemoryReading | None = None
        self._extras: tuple[int, int] | None = None  # (parallel, cache bytes) applied

    @property
    def _sequences(self) -> SequenceContext | None:
        return self.engine if isinstance(self.engine, SequenceContext) else None

    def _observe(self) -> Decision:
        assert self.governor is not None
        self.reading = self._read()
        streams, cache = self._sequences.sequences_held() if self._sequences else (1, 0)
        self.decision = self.governor.observe(self.reading, cache_bytes=cache, streams=streams)
        return self.decision

    async def start(self, on_change: Callable[[Decision], None] | None = None) -> Decision:
        """First sizing, right after the model was loaded at a small context. Each
        decision applied from then on (this one too) goes to `on_change`: the daemon
        pauses admission and says so."""
        self._on_change = on_change
        self.governor = Governor.from_config(
            self.cfg.memory,
            n_ctx_configured=self.cfg.model.n_ctx,
            kv_bytes_per_token=kv_bytes_per_token(self.engine.metadata),
            n_ctx_trained=self.engine.n_ctx_train,
        )
        if self._sequences is not None:
            self.governor.max_parallel = self._sequences.max_parallel
            self.governor.cache_max_bytes = self._sequences.prefix_cache_max
        small_ctx = self.engine.n_ctx
        _, small_compute = self.engine.buffer_bytes()
        decision = self._observe()
        await self._apply(decision)
        big_ctx = self.engine.n_ctx
        _, big_compute = self.engine.buffer_bytes()
        if big_ctx > small_ctx:
            per_token = max(0, (big_compute - small_compute) // (big_ctx - small_ctx))
            fixed = max(0, small_compute - per_token * small_ctx)
        else:
            # One point only (the context did not grow): all of it counts as fixed.
            per_token, fixed = 0, small_compute
        self.governor.set_compute_cost(per_token, fixed)
        log.info(
            "memory budget",
            n_ctx=self.engine.n_ctx,
            budget=decision.budget.tokens,
            limited_by=decision.budget.limited_by,
            reason=decision.reason,
            kv_bytes_per_token=self.governor.kv_bytes_per_token,
            compute_bytes_per_token=per_token,
            compute_fixed_mb=round(fixed / MIB, 1),
            **self._reading_fields(),
        )
        return decision

    async def run(self) -> None:
        """Sample every `memory.sample_s` and follow the memory, until cancelled."""
        while True:
            await asyncio.sleep(self.cfg.memory.sample_s)
            await self.sample()

    async def sample(self) -> Decision:
        """One reading, and the resize or state change it calls for (after start())."""
        decision = self._observe()
        if decision.resize or decision.state_changed:
            await self._apply(decision)
        else:
            self._apply_extras(decision)
        return decision

    def _apply_extras(self, decision: Decision) -> None:
        """Parallelism and the prefix cache's bound follow every sample (no resize)."""
        sequences = self._sequences
        extras = (decision.parallel, decision.cache_bytes)
        if sequences is None or extras == self._extras:
            return
        sequences.set_parallel(decision.parallel)
        sequences.set_prefix_cache_limit(decision.cache_bytes)
        if self._extras is not None:
            log.info(
                "memory for concurrent tasks",
                parallel=decision.parallel,
                prefix_cache_mb=round(decision.cache_bytes / MIB, 1),
                reason=decision.budget.describe(),
            )
        self._extras = extras

    async def _apply(self, decision: Decision) -> None:
        assert self.governor is not None
        before = self.engine.n_ctx
        if decision.resize:
            try:
                await self.engine.resize(decision.n_ctx)
            except EdgeAgentError as exc:
                log.error("context resize failed", wanted=decision.n_ctx, error=exc.message)  # noqa: TRY400 - the message is the information
            # The governor assumed the resize worked; tell it what there really is.
            self.governor.resized(self.engine.n_ctx)
        if before != self.engine.n_ctx or decision.state_changed:
            psi = self.reading.psi_some_avg10 if self.reading is not None else None
            (log.warning if decision.paused else log.info)(
                "context resized" if before != self.engine.n_ctx else "memory state",
                n_ctx_before=before,
                n_ctx=self.engine.n_ctx,
                state=str(decision.state),
                budget=decision.budget.tokens,
                reason=decision.reason,
                available_mb=round(decision.budget.available_bytes / MIB, 1),
                psi_some_avg10=psi,
            )
        self._apply_extras(decision)
        if self._on_change is not None:
            self._on_change(decision)

    def _reading_fields(self) -> dict[str, Any]:
        """The first reading, for the start-up log: what the machine and cgroup look like."""
        reading = self.reading
        if reading is None:
            return {}
        return {
            "host_total_mb": round(reading.host_total_bytes / MIB, 1),
            "swap_free_mb": round(reading.swap_free_bytes / MIB, 1),
            "rss_mb": round(reading.process_rss_bytes / MIB, 1),
            "cgroup_version": reading.cgroup_version,
            "cgroup_path": reading.cgroup_path,
            "source": str(reading.source),
        }

    def snapshot(self) -> dict[str, Any]:
        """For the heartbeat: what the budget is and why."""
        decision, reading = self.decision, self.reading
        if decision is None or reading is None:
            return {}
        return {
            "state": str(decision.state),
            "budget": decision.budget.tokens,
            "limited_by": decision.budget.limited_by,
            "reason": decision.reason,
            "available_mb": round(reading.available_bytes / MIB, 1),
            "cgroup_limit_mb": (
                round(reading.cgroup_limit_bytes / MIB, 1) if reading.cgroup_limit_bytes else None
            ),
            "source": str(reading.source),
        }
