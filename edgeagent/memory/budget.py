# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""The memory budget: how many context tokens fit in the memory there is.

Pure arithmetic on byte counts; `memory.governor` decides what to do with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeagent.memory.readings import format_bytes

# Context sizes are multiples of this: llama.cpp pads the KV cache to 256 cells anyway, and
# coarse steps keep small fluctuations from turning into resizes.
CTX_ALIGN = 256


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
    # What is left after the context, given out in this order (and taken back the other
    # way round when memory shrinks, before the context shrinks):
    cache_bytes: int = 0  # for saved prompt prefixes (inference/prefix_cache.py)
    parallel: int = 1  # sequences (KV streams of `tokens` each) a batch context may hold

    def describe(self) -> str:
        extras = ""
        if self.parallel > 1 or self.cache_bytes:
            extras = f"; {self.parallel} sequences, {format_bytes(self.cache_bytes)} prefix cache"
        return (
            f"{self.tokens} tokens ({format_bytes(self.available_bytes)} available"
            f" + {format_bytes(self.held_bytes)} held by the context"
            f" - {format_bytes(self.reserve_bytes)} reserve"
            f" - {format_bytes(self.fixed_bytes)} fixed"
            f", {format_bytes(self.bytes_per_token)}/token{extras})"
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
    held_streams: int = 1,
    held_cache_bytes: int = 0,
    max_parallel: int = 1,
    cache_max_bytes: int = 0,
) -> Budget:
    """Tokens that fit in (available + held - reserve - compute fixed) at
    (kv + compute) bytes per token, clamped to [0, min(configured, trained)] and rounded
    down to a multiple of CTX_ALIGN.

    held_ctx is the size of the context that exists now: its KV cache and compute buffer
    are already counted as used in `available_bytes` and are freed when it is re-created,
    so they count as available. Without this a context would shrink after being created.
    held_streams: KV streams of that context (a batch context holds held_ctx tokens per
    stream); held_cache_bytes: what the prefix cache holds now (freed by trimming it).

    Memory beyond the context goes first to the prefix cache (up to cache_max_bytes),
    then to more sequences for concurrent tasks (each a stream of `tokens` KV tokens, up
    to max_parallel in all). When memory shrinks they are given back in the opposite
    order: parallelism first, then cached prefixes, then context tokens.
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
    held += max(0, held_streams - 1) * held_ctx * kv_bytes_per_token + held_cache_bytes
    spare = available_bytes + held - reserve_bytes - compute_fixed_bytes
    by_memory = max(0, spare // per_token)
    tokens = min(by_memory, ceiling)
    limited_by: Literal["memory", "config", "model"] = (
        "memory" if by_memory < ceiling else ceiling_by
    )
    tokens = tokens // CTX_ALIGN * CTX_ALIGN
    cache, parallel = _extras(
        spare,
        tokens,
        per_token,
        kv_bytes_per_token,
        max_parallel=max_parallel,
        cache_max=cache_max_bytes,
    )
    return Budget(
        tokens=tokens,
        ceiling=ceiling,
        limited_by=limited_by,
        available_bytes=available_bytes,
        held_bytes=held,
        reserve_bytes=reserve_bytes,
        fixed_bytes=compute_fixed_bytes,
        bytes_per_token=per_token,
        cache_bytes=cache,
        parallel=parallel,
    )


def extras_for(
    budget: Budget, n_ctx: int, kv_bytes_per_token: int, max_parallel: int, cache_max_bytes: int
) -> tuple[int, int]:
    """(prefix cache bytes, sequences) that fit next to a context of n_ctx tokens, which
    may be smaller than budget.tokens (the governor grows only with hysteresis)."""
    spare = budget.available_bytes + budget.held_bytes - budget.reserve_bytes - budget.fixed_bytes
    return _extras(
        spare,
        n_ctx,
        budget.bytes_per_token,
        kv_bytes_per_token,
        max_parallel=max_parallel,
        cache_max=cache_max_bytes,
    )


def _extras(
    spare: int, n_ctx: int, per_token: int, kv: int, *, max_parallel: int, cache_max: int
) -> tuple[int, int]:
    left = max(0, spare - n_ctx * per_token)
    cache = min(cache_max, left)
    stream = n_ctx * kv
    extra = (left - cache) // stream if stream > 0 else 0
    return cache, max(1, min(max_parallel, 1 + extra))
