# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""Memory governor policy: when to resize the context, when to pause and recover.
Pure logic on numbers (the budget arithmetic is memory.budget); no model, no I/O.

The control loop (memory.control) samples `read_memory()` every `memory.sample_s`,
feeds it to `Governor.observe()`, and applies the `Decision`: re-create the llama
context at `decision.n_ctx` tokens when `decision.resize` (0 means "free the context,
keep the weights"); the daemon answers BUSY while `decision.state` is PAUSED.
See docs/memory.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from edgeagent.memory.budget import Budget, compute_budget, extras_for
from edgeagent.memory.readings import MemorySource, format_bytes

if TYPE_CHECKING:
    from edgeagent.config import MemoryConfig
    from edgeagent.memory.readings import MemoryReading


class PressureState(StrEnum):
    """Whether the daemon takes tasks."""

    NORMAL = "normal"  # budget >= min_ctx: tasks run in a context of Governor.n_ctx tokens
    PAUSED = "paused"  # budget < min_ctx: answer BUSY, context freed until memory recovers


class ContextChange(StrEnum):
    """What the integrator must do with the llama context after a sample."""

    KEEP = "keep"  # nothing
    SHRINK = "shrink"  # re-create smaller now (n_ctx 0: free it; entering PAUSED does this)
    GROW = "grow"  # re-create larger (first context, recovery, or sustained spare memory)


@dataclass(frozen=True, slots=True)
class Decision:
    change: ContextChange
    n_ctx: int  # context size to have after this sample (== previous_n_ctx when KEEP)
    previous_n_ctx: int
    state: PressureState
    previous_state: PressureState
    budget: Budget
    reason: str  # human explanation: why paused / resized / waiting; for logs and BUSY errors
    source: MemorySource = MemorySource.HOST  # which limit the reading was bound by
    # Next to the context: sequences for concurrent tasks (each a KV stream of n_ctx
    # tokens) and bytes for saved prompt prefixes; given back first when memory shrinks.
    parallel: int = 1
    cache_bytes: int = 0

    @property
    def resize(self) -> bool:
        return self.change is not ContextChange.KEEP

    @property
    def state_changed(self) -> bool:
        return self.state is not self.previous_state

    @property
    def paused(self) -> bool:
        return self.state is PressureState.PAUSED


@dataclass(slots=True)
class Governor:
    """Context size state machine with hysteresis.

    * shrink at once when the budget falls below the current context;
    * grow only after `grow_samples` consecutive samples with a budget of at least
      current x (1 + grow_margin) (or the whole ceiling), to the lowest budget of that run;
    * PAUSED when the budget falls below min_ctx (the context is freed: n_ctx 0); back to
      NORMAL, with a context of the budget, once it reaches min_ctx x (1 + recover_margin).

    `observe()` assumes the integrator applies each decision; when a resize fails or gives
    another size, report the real size with `resized()`.
    """

    kv_bytes_per_token: int
    n_ctx_configured: int
    reserve_bytes: int
    min_ctx: int
    n_ctx_trained: int | None = None
    compute_bytes_per_token: int = 0
    compute_fixed_bytes: int = 0
    grow_margin: float = 0.25
    grow_samples: int = 3
    recover_margin: float | None = None  # None: the same as grow_margin
    max_parallel: int = 1  # sequences the engine can batch (Engine.capacity.max_parallel)
    cache_max_bytes: int = 0  # prefix cache wanted (ResidentModel's default limit)
    n_ctx: int = 0  # the context that exists now (0: none yet)
    state: PressureState = PressureState.NORMAL
    _streak: int = field(default=0, init=False, repr=False)
    _streak_low: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kv_bytes_per_token <= 0:
            raise ValueError("kv_bytes_per_token must be positive")
        if self.min_ctx <= 0 or self.n_ctx_configured <= 0:
            raise ValueError("min_ctx and n_ctx_configured must be positive")
        if self.grow_samples < 1 or self.grow_margin < 0:
            raise ValueError("grow_samples must be >= 1 and grow_margin >= 0")
        if self.recover_margin is not None and self.recover_margin < 0:
            raise ValueError("recover_margin must be >= 0")

    @classmethod
    def from_config(
        cls,
        memory: MemoryConfig,
        *,
        n_ctx_configured: int,
        kv_bytes_per_token: int,
        n_ctx_trained: int | None = None,
        compute_bytes_per_token: int = 0,
        compute_fixed_bytes: int = 0,
        n_ctx: int = 0,
    ) -> Governor:
        return cls(
            kv_bytes_per_token=kv_bytes_per_token,
            n_ctx_configured=n_ctx_configured,
            reserve_bytes=memory.reserve_mb * 1024 * 1024,
            min_ctx=memory.min_ctx,
            n_ctx_trained=n_ctx_trained,
            compute_bytes_per_token=compute_bytes_per_token,
            compute_fixed_bytes=compute_fixed_bytes,
            grow_margin=memory.grow_margin,
            grow_samples=memory.grow_samples,
            n_ctx=n_ctx,
        )

    @property
    def recover_threshold(self) -> int:
        """Budget (tokens) at which PAUSED ends; never above the ceiling, never below min_ctx."""
        margin = self.grow_margin if self.recover_margin is None else self.recover_margin
        wanted = math.ceil(self.min_ctx * (1 + margin))
        ceiling = min(self.n_ctx_configured, self.n_ctx_trained or self.n_ctx_configured)
        return max(self.min_ctx, min(wanted, ceiling))

    def set_compute_cost(self, bytes_per_token: int, fixed_bytes: int) -> None:
        """The compute buffer cost measured by the integrator (it may measure it late)."""
        if bytes_per_token < 0 or fixed_bytes < 0:
            raise ValueError("compute costs must not be negative")
        self.compute_bytes_per_token = bytes_per_token
        self.compute_fixed_bytes = fixed_bytes

    def resized(self, n_ctx: int) -> None:
        """The context the integrator really has now (after a failed or partial resize)."""
        if n_ctx < 0:
            raise ValueError("n_ctx must not be negative")
        if n_ctx != self.n_ctx:
            self._reset_streak()
        self.n_ctx = n_ctx

    def budget(self, available_bytes: int, *, cache_bytes: int = 0, streams: int = 1) -> Budget:
        """cache_bytes, streams: what the prefix cache and the context hold now."""
        return compute_budget(
            available_bytes=available_bytes,
            reserve_bytes=self.reserve_bytes,
            kv_bytes_per_token=self.kv_bytes_per_token,
            n_ctx_configured=self.n_ctx_configured,
            n_ctx_trained=self.n_ctx_trained,
            compute_bytes_per_token=self.compute_bytes_per_token,
            compute_fixed_bytes=self.compute_fixed_bytes,
            held_ctx=self.n_ctx,
            held_streams=streams,
            held_cache_bytes=cache_bytes,
            max_parallel=self.max_parallel,
            cache_max_bytes=self.cache_max_bytes,
        )

    def observe(
        self, reading: MemoryReading, *, cache_bytes: int = 0, streams: int = 1
    ) -> Decision:
        """Feed one reading; returns what to do. Updates n_ctx and state as if applied.

        cache_bytes, streams: what the prefix cache and the context hold now (both are
        given back before the context shrinks: Decision.parallel, Decision.cache_bytes).
        """
        budget = self.budget(reading.available_bytes, cache_bytes=cache_bytes, streams=streams)
        previous_n_ctx, previous_state = self.n_ctx, self.state
        if self.state is PressureState.NORMAL:
            target, reason = self._normal(budget, reading)
        else:
            target, reason = self._paused(budget, reading)
        if target < previous_n_ctx:
            change = ContextChange.SHRINK
        elif target > previous_n_ctx:
            change = ContextChange.GROW
        else:
            change = ContextChange.KEEP
        self.n_ctx = target
        cache, parallel = (
            extras_for(
                budget, target, self.kv_bytes_per_token, self.max_parallel, self.cache_max_bytes
            )
            if target > 0
            else (0, 1)
        )
        return Decision(
            change=change,
            n_ctx=target,
            previous_n_ctx=previous_n_ctx,
            state=self.state,
            previous_state=previous_state,
            budget=budget,
            reason=reason,
            source=reading.source,
            parallel=parallel,
            cache_bytes=cache,
        )

    # -- states --

    def _normal(self, budget: Budget, reading: MemoryReading) -> tuple[int, str]:
        tokens = budget.tokens
        if tokens < self.min_ctx:
            self.state = PressureState.PAUSED
            self._reset_streak()
            return 0, (
                f"paused: memory budget {budget.describe()} is below min_ctx {self.min_ctx}"
                f"{_bound_by(reading)}"
            )
        if tokens < self.n_ctx:
            self._reset_streak()
            return tokens, f"shrink {self.n_ctx} -> {tokens}: budget {budget.describe()}"
        if self.n_ctx == 0:
            self._reset_streak()
            return tokens, f"create context of {tokens}: budget {budget.describe()}"
        grow_to = math.ceil(self.n_ctx * (1 + self.grow_margin))
        if tokens > self.n_ctx and (tokens >= grow_to or tokens == budget.ceiling):
            self._streak += 1
            self._streak_low = tokens if self._streak == 1 else min(self._streak_low, tokens)
            if self._streak >= self.grow_samples:
                target = self._streak_low
                self._reset_streak()
                return target, f"grow {self.n_ctx} -> {target}: budget {budget.describe()}"
            return self.n_ctx, (
                f"budget {tokens} allows growth from {self.n_ctx}"
                f" ({self._streak}/{self.grow_samples} samples)"
            )
        self._reset_streak()
        return self.n_ctx, f"keep {self.n_ctx}: budget {tokens}"

    def _paused(self, budget: Budget, reading: MemoryReading) -> tuple[int, str]:
        tokens = budget.tokens
        threshold = self.recover_threshold
        if tokens >= threshold:
            self.state = PressureState.NORMAL
            self._reset_streak()
            return tokens, f"recovered: budget {budget.describe()} reaches {threshold}"
        return 0, (
            f"paused: memory budget {budget.describe()} is below {threshold}"
            f" (min_ctx {self.min_ctx} + margin){_bound_by(reading)}"
        )

    def _reset_streak(self) -> None:
        self._streak = 0
        self._streak_low = 0


def _bound_by(reading: MemoryReading) -> str:
    if reading.source is MemorySource.CGROUP:
        return (
            f"; bound by cgroup {reading.cgroup_path}"
            f" (limit {format_bytes(reading.cgroup_limit_bytes)},"
            f" in use {format_bytes(reading.cgroup_usage_bytes)})"
        )
    return f"; bound by host memory ({format_bytes(reading.host_available_bytes)} available)"
