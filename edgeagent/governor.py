# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""Memory governor policy: how many context tokens fit, when to resize, what to do with
tasks that do not fit. Pure logic on numbers and token lists; no model, no I/O.

The integrator (engine/daemon) samples `edgeagent.memory.read_memory()` every
`memory.sample_s`, feeds it to `Governor.observe()`, and applies the `Decision`:
re-create the llama context at `decision.n_ctx` tokens when `decision.resize` (0 means
"free the context, keep the weights"), answer BUSY while `decision.state` is PAUSED, and
run `plan_overflow()` for tasks larger than the current context. See docs/memory.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.memory import MemorySource, format_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from edgeagent.config import MemoryConfig
    from edgeagent.memory import MemoryReading

# Context sizes are multiples of this: llama.cpp pads the KV cache to 256 cells anyway, and
# coarse steps keep small fluctuations from turning into resizes.
CTX_ALIGN = 256

# Bytes per stored K/V element by llama.cpp cache type (type_k / type_v): block size over
# elements per block for the quantised ones.
KV_BYTES_PER_ELEMENT: Mapping[str, Fraction] = {
    "f32": Fraction(4),
    "f16": Fraction(2),
    "bf16": Fraction(2),
    "q8_0": Fraction(34, 32),
    "q5_1": Fraction(24, 32),
    "q5_0": Fraction(22, 32),
    "q4_1": Fraction(20, 32),
    "q4_0": Fraction(18, 32),
    "iq4_nl": Fraction(18, 32),
}


# --- model arithmetic ----------------------------------------------------------------------


def _meta(metadata: Mapping[str, str], key: str) -> str | None:
    value = metadata.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _meta_ints(metadata: Mapping[str, str], key: str) -> list[int] | None:
    """A scalar ("8") or, for per-layer values, an array ("[8, 8, 4]") as llama.cpp prints it."""
    text = _meta(metadata, key)
    if text is None:
        return None
    try:
        if text.startswith("[") and text.endswith("]"):
            return [int(part) for part in text[1:-1].split(",") if part.strip()]
        return [int(text)]
    except ValueError as exc:
        raise ValueError(f"GGUF metadata {key}={text!r} is not an integer") from exc


def _meta_int(metadata: Mapping[str, str], key: str, *, required: bool) -> int | None:
    values = _meta_ints(metadata, key)
    if values is None:
        if required:
            raise ValueError(f"GGUF metadata lacks {key}")
        return None
    return max(values)


def kv_bytes_per_token(metadata: Mapping[str, str], kv_type: str = "f16") -> int:
    """KV-cache bytes one context token costs, from GGUF metadata (`Llama.metadata`).

    layers x KV heads x (key length + value length) x bytes per element, rounded up.
    Per-layer head counts (arrays) are summed layer by layer. Raises ValueError when the
    metadata lacks what is needed or kv_type is unknown.
    """
    try:
        element = KV_BYTES_PER_ELEMENT[kv_type.lower()]
    except KeyError:
        known = ", ".join(KV_BYTES_PER_ELEMENT)
        raise ValueError(f"unknown KV cache type {kv_type!r} (known: {known})") from None
    arch = _meta(metadata, "general.architecture")
    if arch is None:
        raise ValueError("GGUF metadata lacks general.architecture")
    layers = _meta_int(metadata, f"{arch}.block_count", required=True) or 0
    heads = _meta_ints(metadata, f"{arch}.attention.head_count")
    kv_heads = _meta_ints(metadata, f"{arch}.attention.head_count_kv") or heads
    if kv_heads is None:
        raise ValueError(f"GGUF metadata lacks {arch}.attention.head_count(_kv)")
    if len(kv_heads) == 1:
        kv_heads = kv_heads * layers
    elif len(kv_heads) != layers:
        raise ValueError(
            f"{arch}.attention.head_count_kv has {len(kv_heads)} entries for {layers} layers"
        )

    def head_size(kind: str) -> int:
        explicit = _meta_int(metadata, f"{arch}.attention.{kind}_length", required=False)
        if explicit is not None:
            return explicit
        embedding = _meta_int(metadata, f"{arch}.embedding_length", required=True) or 0
        head_count = max(heads or [0])
        if head_count <= 0:
            raise ValueError(f"GGUF metadata lacks {arch}.attention.{kind}_length and head_count")
        return embedding // head_count

    elements = sum(kv_heads) * (head_size("key") + head_size("value"))
    if elements <= 0:
        raise ValueError(f"GGUF metadata of {arch!r} gives an empty KV cache")
    return math.ceil(elements * element)


def context_length(metadata: Mapping[str, str]) -> int | None:
    """The trained context (`{arch}.context_length`), or None when the metadata lacks it."""
    arch = _meta(metadata, "general.architecture")
    if arch is None:
        return None
    return _meta_int(metadata, f"{arch}.context_length", required=False)


# --- budget --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """How many context tokens fit now. Sizes in bytes."""

    tokens: int  # context tokens that fit: multiple of CTX_ALIGN in [0, ceiling]
    ceiling: int  # min(n_ctx configured, n_ctx trained): never more, whatever the memory
    limited_by: Literal["memory", "config", "model"]  # what set `tokens`
    available_bytes: int  # the reading's available memory
    held_bytes: int  # what the current context holds (freed by a resize, so counted in)
    reserve_bytes: int  # left to the rest of the system (memory.reserve_mb)
    fixed_bytes: int  # per-context compute buffer cost independent of its size
    bytes_per_token: int  # KV cache + compute buffer per context token

    @property
    def usable_bytes(self) -> int:
        """Bytes a context may use: available + held - reserve (may be negative)."""
        return self.available_bytes + self.held_bytes - self.reserve_bytes

    def describe(self) -> str:
        return (
            f"{self.tokens} tokens ({format_bytes(self.available_bytes)} available"
            f" + {format_bytes(self.held_bytes)} held by the context"
            f" - {format_bytes(self.reserve_bytes)} reserve"
            f" - {format_bytes(self.fixed_bytes)} fixed"
            f", {format_bytes(self.bytes_per_token)}/token)"
        )


def context_bytes(
    n_ctx: int, kv_bytes_per_token: int, compute_bytes_per_token: int, compute_fixed_bytes: int
) -> int:
    """Memory a context of n_ctx tokens takes (0 for no context)."""
    if n_ctx <= 0:
        return 0
    return n_ctx * (kv_bytes_per_token + compute_bytes_per_token) + compute_fixed_bytes


def compute_budget(
    *,
    available_bytes: int,
    reserve_bytes: int,
    kv_bytes_per_token: int,
    n_ctx_configured: int,
    n_ctx_trained: int | None = None,
    compute_bytes_per_token: int = 0,
    compute_fixed_bytes: int = 0,
    held_ctx: int = 0,
) -> Budget:
    """Tokens that fit in (available + held - reserve - compute fixed) at
    (kv + compute) bytes per token, clamped to [0, min(configured, trained)] and rounded
    down to a multiple of CTX_ALIGN.

    held_ctx is the size of the context that exists now: its KV cache and compute buffer
    are already counted as used in `available_bytes` and are freed when it is re-created,
    so they count as available. Without this a context would shrink after being created.
    """
    per_token = kv_bytes_per_token + compute_bytes_per_token
    if per_token <= 0:
        raise ValueError("bytes per token must be positive")
    if reserve_bytes < 0 or compute_fixed_bytes < 0 or compute_bytes_per_token < 0:
        raise ValueError("reserve and compute costs must not be negative")
    ceiling = n_ctx_configured
    ceiling_by: Literal["config", "model"] = "config"
    if n_ctx_trained is not None and 0 < n_ctx_trained < n_ctx_configured:
        ceiling, ceiling_by = n_ctx_trained, "model"
    held = context_bytes(held_ctx, kv_bytes_per_token, compute_bytes_per_token, compute_fixed_bytes)
    spare = available_bytes + held - reserve_bytes - compute_fixed_bytes
    by_memory = max(0, spare // per_token)
    tokens = min(by_memory, ceiling)
    limited_by: Literal["memory", "config", "model"] = (
        "memory" if by_memory < ceiling else ceiling_by
    )
    return Budget(
        tokens=tokens // CTX_ALIGN * CTX_ALIGN,
        ceiling=ceiling,
        limited_by=limited_by,
        available_bytes=available_bytes,
        held_bytes=held,
        reserve_bytes=reserve_bytes,
        fixed_bytes=compute_fixed_bytes,
        bytes_per_token=per_token,
    )


# --- governor ------------------------------------------------------------------------------


class PressureState(StrEnum):
    """Whether the daemon takes tasks."""

    NORMAL = "normal"  # budget >= min_ctx: tasks run in a context of Governor.n_ctx tokens
    PAUSED = "paused"  # budget < min_ctx: answer BUSY, context freed until memory recovers


class Action(StrEnum):
    """What the integrator must do with the llama context after a sample."""

    KEEP = "keep"  # nothing
    SHRINK = "shrink"  # re-create smaller now (n_ctx 0: free it; entering PAUSED does this)
    GROW = "grow"  # re-create larger (first context, recovery, or sustained spare memory)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    n_ctx: int  # context size to have after this sample (== previous_n_ctx when KEEP)
    previous_n_ctx: int
    state: PressureState
    previous_state: PressureState
    budget: Budget
    reason: str  # human explanation: why paused / resized / waiting; for logs and BUSY errors
    source: MemorySource = MemorySource.HOST  # which limit the reading was bound by
    psi_some_avg10: float | None = None  # memory pressure stall %, passed through for logs

    @property
    def resize(self) -> bool:
        return self.action is not Action.KEEP

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

    def budget(self, available_bytes: int) -> Budget:
        return compute_budget(
            available_bytes=available_bytes,
            reserve_bytes=self.reserve_bytes,
            kv_bytes_per_token=self.kv_bytes_per_token,
            n_ctx_configured=self.n_ctx_configured,
            n_ctx_trained=self.n_ctx_trained,
            compute_bytes_per_token=self.compute_bytes_per_token,
            compute_fixed_bytes=self.compute_fixed_bytes,
            held_ctx=self.n_ctx,
        )

    def observe(self, reading: MemoryReading) -> Decision:
        """Feed one reading; returns what to do. Updates n_ctx and state as if applied."""
        budget = self.budget(reading.available_bytes)
        previous_n_ctx, previous_state = self.n_ctx, self.state
        if self.state is PressureState.NORMAL:
            target, reason = self._normal(budget, reading)
        else:
            target, reason = self._paused(budget, reading)
        if target < previous_n_ctx:
            action = Action.SHRINK
        elif target > previous_n_ctx:
            action = Action.GROW
        else:
            action = Action.KEEP
        self.n_ctx = target
        return Decision(
            action=action,
            n_ctx=target,
            previous_n_ctx=previous_n_ctx,
            state=self.state,
            previous_state=previous_state,
            budget=budget,
            reason=reason,
            source=reading.source,
            psi_some_avg10=reading.psi_some_avg10,
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


# --- overflow ------------------------------------------------------------------------------


class OverflowPolicy(StrEnum):
    """What to do with a task whose input does not fit (memory.overflow)."""

    REJECT = "reject"  # answer CONTEXT_BUDGET
    TRUNCATE = "truncate"  # keep head and tail of the input, a marker in between
    CHUNK = "chunk"  # split the input; the integrator maps over chunks and reduces


@dataclass(frozen=True, slots=True)
class OverflowPlan:
    """How to run a task within `budget` context tokens.

    `tokens` is the input to use when the task runs once (the original input, or the
    truncated one). For CHUNK, `chunks` are [start, end) ranges into the original input;
    otherwise there is one chunk covering `tokens`.
    """

    policy: OverflowPolicy  # the policy asked for
    budget: int  # context tokens available (the current n_ctx)
    fits: bool  # the input fitted as it was; nothing was changed
    tokens: tuple[int, ...]
    chunks: tuple[tuple[int, int], ...]
    truncated: int  # input tokens dropped by TRUNCATE (0 otherwise)

    def chunk_tokens(self) -> list[list[int]]:
        """The tokens of each chunk (for TRUNCATE/fit: the single input)."""
        return [list(self.tokens[start:end]) for start, end in self.chunks]

    def context_info(self) -> dict[str, int]:
        """The reply's `context` object: {budget, truncated, chunks}."""
        return {"budget": self.budget, "truncated": self.truncated, "chunks": len(self.chunks)}


def plan_overflow(
    prompt_tokens: Sequence[int],
    fixed_tokens: int,
    max_tokens: int,
    budget: int,
    policy: OverflowPolicy | str,
    *,
    marker_tokens: Sequence[int] = (),
    head_fraction: float = 0.5,
    overlap: int = 32,
    max_chunks: int = 64,
) -> OverflowPlan:
    """Fit a task into `budget` tokens: fixed part + input + max_tokens <= budget.

    prompt_tokens: the variable input (the part that may be cut or split).
    fixed_tokens: everything else in the prompt (system prompt, schema, chat template).
    marker_tokens: tokens of the text put where TRUNCATE cut (e.g. "\\n[...]\\n").
    head_fraction: share of the kept input taken from the head (TRUNCATE).
    overlap: tokens repeated at the start of each next chunk (CHUNK); at most a quarter of
    a chunk.
    max_chunks: CHUNK raises CONTEXT_BUDGET rather than plan more chunks than this.

    Raises EdgeAgentError(CONTEXT_BUDGET) for REJECT, and for any policy when not even
    the fixed part, max_tokens and a little input fit.
    """
    policy = OverflowPolicy(policy)
    if fixed_tokens < 0 or max_tokens < 0 or budget < 0:
        raise ValueError("fixed_tokens, max_tokens and budget must not be negative")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError("head_fraction must be within [0, 1]")
    tokens = tuple(prompt_tokens)
    total = len(tokens)
    needed = fixed_tokens + total + max_tokens
    room = budget - fixed_tokens - max_tokens  # input tokens that fit

    def error(why: str) -> EdgeAgentError:
        return EdgeAgentError(
            ErrorCode.CONTEXT_BUDGET,
            f"task needs {needed} context tokens (prompt {fixed_tokens + total}"
            f" + max_tokens {max_tokens}), the budget is {budget}: {why}",
            budget=budget,
            needed=needed,
            prompt_tokens=fixed_tokens + total,
            max_tokens=max_tokens,
            policy=str(policy),
        )

    if needed <= budget:
        return OverflowPlan(
            policy=policy,
            budget=budget,
            fits=True,
            tokens=tokens,
            chunks=((0, total),),
            truncated=0,
        )
    if policy is OverflowPolicy.REJECT:
        raise error("overflow policy is reject")
    if room <= 0:
        raise error("not even the fixed prompt and max_tokens fit; lower max_tokens")
    if policy is OverflowPolicy.TRUNCATE:
        keep = room - len(marker_tokens)
        if keep <= 0:
            raise error("no input token fits next to the truncation marker")
        kept = _truncate(tokens, tuple(marker_tokens), keep, head_fraction)
        return OverflowPlan(
            policy=policy,
            budget=budget,
            fits=False,
            tokens=kept,
            chunks=((0, len(kept)),),
            truncated=total - keep,
        )
    step_overlap = max(0, min(overlap, room // 4))
    count = 1 + math.ceil(max(0, total - room) / (room - step_overlap))
    if count > max_chunks:
        raise error(f"the input would need {count} chunks of {room} tokens (max {max_chunks})")
    chunks = _chunk(total, room, step_overlap)
    return OverflowPlan(
        policy=policy, budget=budget, fits=False, tokens=tokens, chunks=chunks, truncated=0
    )


def _truncate(
    tokens: tuple[int, ...], marker: tuple[int, ...], keep: int, head_fraction: float
) -> tuple[int, ...]:
    """keep input tokens: the first ceil(keep x head_fraction), the marker, the last rest."""
    head = min(keep, math.ceil(keep * head_fraction))
    tail = keep - head
    return tokens[:head] + marker + (tokens[len(tokens) - tail :] if tail else ())


def _chunk(total: int, size: int, overlap: int) -> tuple[tuple[int, int], ...]:
    """[start, end) ranges of at most `size` tokens covering [0, total), each next one
    starting `overlap` tokens before the previous end."""
    chunks: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + size, total)
        chunks.append((start, end))
        if end >= total:
            return tuple(chunks)
        start = end - overlap


__all__ = [
    "CTX_ALIGN",
    "KV_BYTES_PER_ELEMENT",
    "Action",
    "Budget",
    "Decision",
    "Governor",
    "OverflowPlan",
    "OverflowPolicy",
    "PressureState",
    "compute_budget",
    "context_bytes",
    "context_length",
    "kv_bytes_per_token",
    "plan_overflow",
]
