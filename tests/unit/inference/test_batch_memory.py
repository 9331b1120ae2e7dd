"""Memory for concurrent tasks and cached prefixes: what the governor counts and gives back.

Numbers: 1 KiB of KV per context token and no compute cost per token, so one sequence of
4096 tokens (a KV stream of the batch context) costs 4 MiB; 8 MiB reserve.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.scripted_model import METADATA

from edgeagent.config import Config, MemoryConfig, ModelConfig
from edgeagent.memory.budget import compute_budget
from edgeagent.memory.control import MemoryControlLoop
from edgeagent.memory.governor import Governor
from edgeagent.memory.readings import MemoryReading, MemorySource

KIB, MIB = 1024, 2**20
CFG = Config(
    model=ModelConfig(path=Path("/nonexistent.gguf"), n_ctx=4096, n_batch=256, max_tokens=256),
    memory=MemoryConfig(reserve_mb=8, min_ctx=512, grow_samples=1, grow_margin=0.25),
)


def reading(available: int) -> MemoryReading:
    return MemoryReading(
        host_available_bytes=available,
        host_total_bytes=8 * 2**30,
        swap_free_bytes=0,
        process_rss_bytes=100 * MIB,
        cgroup_version=None,
        cgroup_path=None,
        cgroup_limit_bytes=None,
        cgroup_usage_bytes=None,
        psi_some_avg10=None,
        source=MemorySource.HOST,
        available_bytes=available,
    )


def budget(available, **kwargs):
    return compute_budget(
        available_bytes=available,
        reserve_bytes=8 * MIB,
        kv_bytes_per_token=KIB,
        n_ctx_configured=4096,
        max_parallel=8,
        cache_max_bytes=6 * MIB,
        **kwargs,
    )


def test_memory_goes_to_the_context_then_the_prefix_cache_then_more_sequences():
    # 8 MiB reserve + 4 MiB context + 6 MiB cache + 3 x 4 MiB streams + 1 MiB spare.
    plenty = budget((8 + 4 + 6 + 12 + 1) * MIB)
    assert (plenty.tokens, plenty.cache_bytes, plenty.parallel) == (4096, 6 * MIB, 4)
    # Less memory: sequences go first ...
    fewer = budget((8 + 4 + 6 + 4) * MIB)
    assert (fewer.tokens, fewer.cache_bytes, fewer.parallel) == (4096, 6 * MIB, 2)
    # ... then the cache ...
    no_batch = budget((8 + 4 + 2) * MIB)
    assert (no_batch.tokens, no_batch.cache_bytes, no_batch.parallel) == (4096, 2 * MIB, 1)
    # ... and only then context tokens.
    small = budget((8 + 3) * MIB)
    assert (small.tokens, small.cache_bytes, small.parallel) == (3072, 0, 1)


def test_what_the_streams_and_the_cache_hold_counts_as_available():
    # A batch context of 4 streams and a full cache are in use: the same budget as
    # before they were allocated.
    held = budget(1 * MIB, held_ctx=4096, held_streams=4, held_cache_bytes=6 * MIB)
    free = budget((1 + 16 + 6) * MIB)
    assert (held.tokens, held.cache_bytes, held.parallel) == (
        free.tokens,
        free.cache_bytes,
        free.parallel,
    )


def test_without_batching_or_cache_the_budget_is_as_before():
    plain = compute_budget(
        available_bytes=64 * MIB,
        reserve_bytes=8 * MIB,
        kv_bytes_per_token=KIB,
        n_ctx_configured=4096,
    )
    assert (plain.tokens, plain.cache_bytes, plain.parallel) == (4096, 0, 1)


def test_the_governor_lowers_parallelism_before_the_context():
    governor = Governor(
        kv_bytes_per_token=KIB,
        n_ctx_configured=4096,
        reserve_bytes=8 * MIB,
        min_ctx=512,
        grow_samples=1,
        max_parallel=8,
        cache_max_bytes=6 * MIB,
    )
    steps = []
    # After the first sample the 4 MiB context exists and counts as available.
    for available in (64, 26, 22, 14, 11, 9, 7):
        decision = governor.observe(reading(available * MIB))
        steps.append((decision.n_ctx, decision.parallel, decision.cache_bytes // MIB))
    assert steps == [
        (4096, 8, 6),
        (4096, 4, 6),  # 22 MiB spare: context 4, cache 6, three more streams of 4
        (4096, 3, 6),
        (4096, 1, 6),  # no memory for a second sequence: no batching
        (4096, 1, 3),  # then the cache shrinks
        (4096, 1, 1),
        (3072, 1, 0),  # and only then the context
    ]
    paused = governor.observe(reading(1 * MIB))
    assert (paused.n_ctx, paused.parallel, paused.cache_bytes) == (0, 1, 0)


class SequenceEngine:
    """memory.control.ResizableContext and SequenceContext, recorded."""

    def __init__(self):
        self.n_ctx = 512
        self.n_ctx_train = 8192
        self.metadata = METADATA
        self.max_parallel = 8
        self.prefix_cache_max = 6 * MIB
        self.streams = 1
        self.cache = 0
        self.parallel = []
        self.limits = []

    def buffer_bytes(self):
        return self.n_ctx * KIB, MIB

    async def resize(self, n_ctx):
        self.n_ctx = n_ctx

    def sequences_held(self):
        return self.streams, self.cache

    def set_parallel(self, parallel):
        self.parallel.append(parallel)

    def set_prefix_cache_limit(self, limit):
        self.limits.append(limit)
        self.cache = min(self.cache, limit)


def test_the_control_loop_applies_parallelism_and_the_cache_bound():
    engine = SequenceEngine()
    available = {"bytes": 64 * MIB}
    loop = MemoryControlLoop(engine, CFG, read=lambda: reading(available["bytes"]))
    asyncio.run(loop.start())
    assert engine.n_ctx == 4096
    assert engine.parallel[-1] == 8
    assert engine.limits[-1] == 6 * MIB
    # A batch context of 8 streams and a full cache are now allocated: what they hold
    # counts as available, so nothing changes.
    engine.streams, engine.cache = 8, 6 * MIB
    available["bytes"] = (64 - 28 - 6) * MIB
    asyncio.run(loop.sample())
    assert engine.parallel[-1] == 8
    # Memory shrinks (a neighbour takes all that was free): fewer sequences, the
    # context stays.
    available["bytes"] = 0
    asyncio.run(loop.sample())
    assert engine.parallel[-1] == 6
    assert engine.n_ctx == 4096
    assert engine.limits[-1] == 6 * MIB
