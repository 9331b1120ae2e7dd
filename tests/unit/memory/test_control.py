"""The memory control loop with a fake engine and scripted readings: no model, no sleeps.

Numbers: 1 KiB of KV cache per context token, a compute buffer of fixed size (so it
cancels out of the budget), 8 MiB reserve. With the current context of `held` tokens
counted as available (it is freed by a resize), the budget is
available/1 KiB + held - 8192 tokens, capped at n_ctx 4096, in steps of 256.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.scripted_model import METADATA

from edgeagent.config import Config, MemoryConfig, ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.memory.control import MemoryControlLoop
from edgeagent.memory.governor import ContextChange, Decision, PressureState
from edgeagent.memory.readings import MemoryReading, MemorySource

KIB, MIB = 1024, 2**20
CFG = Config(
    model=ModelConfig(path=Path("/nonexistent.gguf"), n_ctx=4096, n_batch=256, max_tokens=256),
    memory=MemoryConfig(reserve_mb=8, min_ctx=512, grow_samples=3, grow_margin=0.25),
)


class FakeEngine:
    """Implements memory.control.ResizableContext."""

    def __init__(self, n_ctx: int, *, compute_fixed: int = MIB, compute_per_token: int = 0):
        self.n_ctx = n_ctx
        self.n_ctx_train = 8192
        self.metadata = METADATA
        self.compute_fixed = compute_fixed
        self.compute_per_token = compute_per_token
        self.resizes: list[int] = []
        self.fail_resize = False

    def buffer_bytes(self) -> tuple[int, int]:
        if self.n_ctx == 0:
            return 0, 0
        return self.n_ctx * KIB, self.compute_fixed + self.compute_per_token * self.n_ctx

    async def resize(self, n_ctx: int) -> None:
        self.resizes.append(n_ctx)
        if self.fail_resize:
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, f"cannot allocate {n_ctx}")
        self.n_ctx = n_ctx


class Readings:
    """A reading function whose available memory the test sets."""

    def __init__(self, available: int) -> None:
        self.available = available

    def __call__(self) -> MemoryReading:
        return MemoryReading(
            host_available_bytes=self.available,
            host_total_bytes=8 * 2**30,
            swap_free_bytes=0,
            process_rss_bytes=100 * MIB,
            cgroup_version=None,
            cgroup_path=None,
            cgroup_limit_bytes=None,
            cgroup_usage_bytes=None,
            psi_some_avg10=None,
            source=MemorySource.HOST,
            available_bytes=self.available,
        )


def available_for(budget: int, held: int) -> int:
    """Available bytes that make the budget `budget` with a context of `held` tokens."""
    return (budget - held + 8192) * KIB


@pytest.fixture
def started():
    """A loop after its first sizing (4096 tokens), with the decisions it reported."""
    engine = FakeEngine(512)
    readings = Readings(64 * MIB)
    changes: list[Decision] = []
    loop = MemoryControlLoop(engine, CFG, read=readings)
    asyncio.run(loop.start(on_change=changes.append))
    return loop, engine, readings, changes


def test_first_sizing_measures_the_compute_buffer_cost():
    engine = FakeEngine(512, compute_fixed=3 * MIB, compute_per_token=200)
    loop = MemoryControlLoop(engine, CFG, read=Readings(64 * MIB))
    with capture_logs() as logs:
        decision = asyncio.run(loop.start())
    assert engine.resizes == [4096]
    assert decision.change is ContextChange.GROW
    assert loop.governor is not None
    # Two points (512 and 4096 tokens) give the line of the compute buffer.
    assert loop.governor.compute_bytes_per_token == 200
    assert loop.governor.compute_fixed_bytes == 3 * MIB
    assert loop.governor.kv_bytes_per_token == KIB  # from the GGUF metadata
    (budget_log,) = [e for e in logs if e["event"] == "memory budget"]
    assert budget_log["compute_bytes_per_token"] == 200
    assert budget_log["n_ctx"] == 4096


def test_shrinks_at_once_and_grows_back_after_sustained_room(started):
    loop, engine, readings, changes = started
    readings.available = available_for(3072, held=4096)
    decision = asyncio.run(loop.sample())
    assert decision.change is ContextChange.SHRINK
    assert engine.n_ctx == 3072
    assert changes[-1] is decision
    # Room for 4096 again: the loop waits for grow_samples (3) samples in a row.
    readings.available = available_for(4096, held=3072)
    first, second = asyncio.run(loop.sample()), asyncio.run(loop.sample())
    assert (first.change, second.change) == (ContextChange.KEEP, ContextChange.KEEP)
    assert engine.n_ctx == 3072
    third = asyncio.run(loop.sample())
    assert third.change is ContextChange.GROW
    assert engine.resizes == [4096, 3072, 4096]
    assert loop.snapshot()["budget"] == 4096


def test_pauses_below_min_ctx_and_recovers(started):
    loop, engine, readings, changes = started
    readings.available = MIB
    with capture_logs() as logs:
        paused = asyncio.run(loop.sample())
    assert paused.paused
    assert engine.n_ctx == 0  # the context is freed, the weights stay
    assert changes[-1].state is PressureState.PAUSED
    snapshot = loop.snapshot()
    assert snapshot["state"] == "paused"
    assert snapshot["reason"].startswith("paused: memory budget")
    assert [e["log_level"] for e in logs if e["event"] == "context resized"] == ["warning"]
    # Still short: stays paused, nothing resized.
    assert asyncio.run(loop.sample()).paused
    assert engine.resizes == [4096, 0]
    # Memory back: normal again with a context of the budget.
    readings.available = 64 * MIB
    recovered = asyncio.run(loop.sample())
    assert not recovered.paused
    assert recovered.previous_state is PressureState.PAUSED
    assert engine.n_ctx == 4096
    assert changes[-1] is recovered


def test_a_failed_resize_is_logged_and_the_real_size_kept(started):
    loop, engine, readings, changes = started
    engine.fail_resize = True
    readings.available = available_for(2048, held=4096)
    with capture_logs() as logs:
        decision = asyncio.run(loop.sample())
    assert decision.n_ctx == 2048
    assert engine.n_ctx == 4096  # unchanged: the resize failed
    (failure,) = [e for e in logs if e["event"] == "context resize failed"]
    assert failure["wanted"] == 2048
    assert "cannot allocate 2048" in failure["error"]
    assert loop.governor is not None
    assert loop.governor.n_ctx == 4096  # the governor was told what there really is
    assert changes[-1] is decision
    # The next sample tries again.
    engine.fail_resize = False
    asyncio.run(loop.sample())
    assert engine.n_ctx == 2048


def test_run_samples_until_cancelled():
    engine = FakeEngine(512)
    readings = Readings(64 * MIB)
    cfg = CFG.model_copy(update={"memory": CFG.memory.model_copy(update={"sample_s": 0.001})})
    shrunk = asyncio.Event()

    def on_change(decision: Decision) -> None:
        if decision.change is ContextChange.SHRINK:
            shrunk.set()

    loop = MemoryControlLoop(engine, cfg, read=readings)

    async def scenario() -> None:
        await loop.start(on_change=on_change)
        readings.available = available_for(1024, held=4096)
        task = asyncio.create_task(loop.run())
        await asyncio.wait_for(shrunk.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert engine.n_ctx == 1024


def test_snapshot_is_empty_before_the_first_reading():
    loop = MemoryControlLoop(FakeEngine(512), CFG, read=Readings(64 * MIB))
    assert loop.snapshot() == {}
    assert loop.decision is None
