# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from edgeagent.config import MemoryConfig
from edgeagent.memory.budget import CTX_ALIGN, compute_budget, context_bytes
from edgeagent.memory.governor import ContextChange, Decision, Governor, PressureState
from edgeagent.memory.readings import MemoryReading, MemorySource, read_memory

if TYPE_CHECKING:
    from pathlib import Path

MiB = 1024 * 1024
KV = 4096  # bytes per token in the governor tests: 256 tokens = 1 MiB

# --- budget --------------------------------------------------------------------------------


def test_budget_tokens_that_fit() -> None:
    budget = compute_budget(
        available_bytes=300 * MiB,
        reserve_bytes=128 * MiB,
        kv_bytes_per_token=12_288,
        n_ctx_configured=32768,
        n_ctx_trained=32768,
        compute_bytes_per_token=4096,
        compute_fixed_bytes=10 * MiB,
    )
    # (300 - 128 - 10) MiB / 16 KiB = 10368 tokens -> 10240 after alignment
    assert budget.tokens == 10240
    assert budget.tokens % CTX_ALIGN == 0
    assert budget.limited_by == "memory"
    assert budget.bytes_per_token == 16384
    assert budget.available_bytes + budget.held_bytes - budget.reserve_bytes == 172 * MiB
    assert "10240 tokens" in budget.describe()


def test_budget_clamped_to_configured_and_trained() -> None:
    kwargs = {"available_bytes": 8 * 1024 * MiB, "reserve_bytes": 0, "kv_bytes_per_token": KV}
    by_config = compute_budget(**kwargs, n_ctx_configured=4096, n_ctx_trained=8192)
    assert (by_config.tokens, by_config.ceiling, by_config.limited_by) == (4096, 4096, "config")
    by_model = compute_budget(**kwargs, n_ctx_configured=4096, n_ctx_trained=2048)
    assert (by_model.tokens, by_model.ceiling, by_model.limited_by) == (2048, 2048, "model")
    unknown = compute_budget(**kwargs, n_ctx_configured=4096, n_ctx_trained=None)
    assert unknown.tokens == 4096


def test_budget_ceiling_not_a_multiple_of_256_is_rounded_down() -> None:
    budget = compute_budget(
        available_bytes=1024 * MiB, reserve_bytes=0, kv_bytes_per_token=KV, n_ctx_configured=1000
    )
    assert budget.tokens == 768
    assert budget.limited_by == "config"


def test_budget_never_negative() -> None:
    budget = compute_budget(
        available_bytes=100 * MiB,
        reserve_bytes=128 * MiB,
        kv_bytes_per_token=KV,
        n_ctx_configured=4096,
    )
    assert budget.tokens == 0
    assert budget.available_bytes < budget.reserve_bytes
    assert budget.limited_by == "memory"


def test_budget_rounds_down_to_alignment() -> None:
    # 511 tokens worth of memory -> 256
    budget = compute_budget(
        available_bytes=511 * KV, reserve_bytes=0, kv_bytes_per_token=KV, n_ctx_configured=4096
    )
    assert budget.tokens == 256


def test_budget_counts_the_held_context_as_available() -> None:
    held = context_bytes(2048, KV, 1024, MiB)
    assert held == 2048 * 5120 + MiB
    budget = compute_budget(
        available_bytes=4 * MiB,
        reserve_bytes=0,
        kv_bytes_per_token=KV,
        compute_bytes_per_token=1024,
        compute_fixed_bytes=MiB,
        n_ctx_configured=8192,
        held_ctx=2048,
    )
    assert budget.held_bytes == held
    assert budget.tokens == (4 * MiB + 2048 * 5120) // 5120 // CTX_ALIGN * CTX_ALIGN
    assert context_bytes(0, KV, 1024, MiB) == 0


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        compute_budget(
            available_bytes=MiB, reserve_bytes=0, kv_bytes_per_token=0, n_ctx_configured=512
        )
    with pytest.raises(ValueError, match="negative"):
        compute_budget(
            available_bytes=MiB, reserve_bytes=-1, kv_bytes_per_token=1, n_ctx_configured=512
        )


# --- governor ------------------------------------------------------------------------------


def _reading(available: int, source: MemorySource = MemorySource.HOST) -> MemoryReading:
    return MemoryReading(
        host_available_bytes=available if source is MemorySource.HOST else 8 * 1024 * MiB,
        host_total_bytes=8 * 1024 * MiB,
        swap_free_bytes=0,
        process_rss_bytes=100 * MiB,
        cgroup_version=2 if source is MemorySource.CGROUP else None,
        cgroup_path="/system.slice/edgeagent.service" if source is MemorySource.CGROUP else None,
        cgroup_limit_bytes=512 * MiB if source is MemorySource.CGROUP else None,
        cgroup_usage_bytes=512 * MiB - available if source is MemorySource.CGROUP else None,
        psi_some_avg10=1.5,
        source=source,
        available_bytes=available,
    )


class Machine:
    """A pool of memory shared by the governed context and everything else.

    `free` is what would be available with no context; a reading subtracts what the
    governor's current context holds, as the kernel would.
    """

    def __init__(self, governor: Governor, free: int) -> None:
        self.governor = governor
        self.free = free

    def sample(self, free: int | None = None, source: MemorySource = MemorySource.HOST) -> Decision:
        if free is not None:
            self.free = free
        gov = self.governor
        held = context_bytes(
            gov.n_ctx, gov.kv_bytes_per_token, gov.compute_bytes_per_token, gov.compute_fixed_bytes
        )
        return gov.observe(_reading(max(0, self.free - held), source))


def _governor(**overrides: Any) -> Governor:
    params: dict[str, Any] = {
        "kv_bytes_per_token": KV,
        "n_ctx_configured": 4096,
        "n_ctx_trained": 32768,
        "reserve_bytes": 0,
        "min_ctx": 512,
        "grow_margin": 0.25,
        "grow_samples": 3,
    }
    params.update(overrides)
    return Governor(**params)


def test_first_sample_creates_the_context() -> None:
    gov = _governor()
    decision = Machine(gov, 8 * MiB).sample()
    assert decision.change is ContextChange.GROW
    assert decision.resize
    assert (decision.previous_n_ctx, decision.n_ctx) == (0, 2048)
    assert decision.state is PressureState.NORMAL
    assert not decision.state_changed
    assert decision.budget.tokens == 2048
    assert gov.n_ctx == 2048


def test_own_context_does_not_cause_oscillation() -> None:
    gov = _governor()
    machine = Machine(gov, 8 * MiB)
    machine.sample()
    for _ in range(10):
        decision = machine.sample()
        assert decision.change is ContextChange.KEEP
        assert decision.n_ctx == 2048
        assert decision.budget.tokens == 2048


def test_shrinks_immediately() -> None:
    gov = _governor(n_ctx=4096, reserve_bytes=4 * MiB)
    machine = Machine(gov, 24 * MiB)
    assert machine.sample().change is ContextChange.KEEP
    decision = machine.sample(free=18 * MiB)  # 2 MiB left, the reserve is 4 MiB
    assert decision.change is ContextChange.SHRINK
    assert decision.resize
    assert (decision.previous_n_ctx, decision.n_ctx) == (4096, 3584)
    assert "shrink 4096 -> 3584" in decision.reason
    assert gov.n_ctx == 3584
    assert machine.sample().change is ContextChange.KEEP


def test_grows_only_after_consecutive_samples_above_the_margin() -> None:
    gov = _governor(n_ctx=1024)
    machine = Machine(gov, 4 * MiB)
    assert machine.sample().change is ContextChange.KEEP
    # 1024 x 1.25 = 1280: a budget of 1280 qualifies, but only on the third sample in a row.
    first = machine.sample(free=5 * MiB)
    assert first.change is ContextChange.KEEP
    assert "1/3 samples" in first.reason
    assert machine.sample().change is ContextChange.KEEP
    third = machine.sample()
    assert third.change is ContextChange.GROW
    assert (third.previous_n_ctx, third.n_ctx) == (1024, 1280)
    assert gov.n_ctx == 1280


def test_growth_below_the_margin_never_happens() -> None:
    gov = _governor(n_ctx=2048)
    machine = Machine(gov, int(8 * MiB * 1.2))  # budget 2304 < 2048 x 1.25
    for _ in range(20):
        decision = machine.sample()
        assert decision.change is ContextChange.KEEP
        assert decision.budget.tokens == 2304


def test_a_low_sample_restarts_the_growth_count() -> None:
    gov = _governor(n_ctx=1024)
    machine = Machine(gov, 4 * MiB)
    machine.sample(free=8 * MiB)
    machine.sample()
    assert (
        machine.sample(free=int(4.5 * MiB)).change is ContextChange.KEEP
    )  # 1152: under the margin
    machine.sample(free=8 * MiB)
    assert machine.sample().change is ContextChange.KEEP
    assert machine.sample().change is ContextChange.GROW


def test_growth_goes_to_the_lowest_budget_of_the_run() -> None:
    gov = _governor(n_ctx=1024)
    machine = Machine(gov, 4 * MiB)
    machine.sample(free=12 * MiB)
    machine.sample(free=6 * MiB)
    decision = machine.sample(free=10 * MiB)
    assert decision.change is ContextChange.GROW
    assert decision.n_ctx == 1536


def test_growth_to_the_ceiling_needs_no_margin() -> None:
    gov = _governor(n_ctx=3840)
    machine = Machine(gov, 64 * MiB)
    assert machine.sample().change is ContextChange.KEEP
    assert machine.sample().change is ContextChange.KEEP
    decision = machine.sample()
    assert decision.change is ContextChange.GROW
    assert decision.n_ctx == 4096
    assert decision.budget.limited_by == "config"


def test_single_sample_growth() -> None:
    gov = _governor(n_ctx=1024, grow_samples=1)
    assert Machine(gov, 8 * MiB).sample().n_ctx == 2048


def test_pause_and_recover_with_margin() -> None:
    gov = _governor(reserve_bytes=2 * MiB)
    machine = Machine(gov, 10 * MiB)
    assert machine.sample().n_ctx == 2048  # 8 MiB context, 2 MiB reserve left
    assert machine.sample().change is ContextChange.KEEP
    # Another service takes 3 MiB: the context gives back what the reserve needs.
    assert machine.sample(free=7 * MiB).n_ctx == 1536
    assert machine.sample().n_ctx == 1280
    assert machine.sample().change is ContextChange.KEEP
    # It takes 4 MiB more: shrink, then pause (budget 256 < min_ctx 512).
    assert machine.sample(free=3 * MiB).n_ctx == 768
    paused = machine.sample(source=MemorySource.CGROUP)
    assert paused.state is PressureState.PAUSED
    assert paused.paused
    assert paused.state_changed
    assert paused.previous_state is PressureState.NORMAL
    assert paused.change is ContextChange.SHRINK
    assert paused.n_ctx == 0  # the context is freed while paused
    assert paused.reason.startswith("paused: memory budget 256 tokens")
    assert "below min_ctx 512" in paused.reason
    assert "cgroup /system.slice/edgeagent.service" in paused.reason
    still = machine.sample()
    assert still.state is PressureState.PAUSED
    assert still.change is ContextChange.KEEP
    assert not still.state_changed
    # Budget back at min_ctx: not enough, the margin is 25 % (640, so 768 tokens).
    still = machine.sample(free=4 * MiB)
    assert still.budget.tokens == 512
    assert still.state is PressureState.PAUSED
    assert "below 640" in still.reason
    assert "host memory" in still.reason
    recovered = machine.sample(free=5 * MiB)
    assert recovered.state is PressureState.NORMAL
    assert recovered.state_changed
    assert recovered.change is ContextChange.GROW
    assert recovered.n_ctx == 768
    assert recovered.reason.startswith("recovered")
    # Back to normal operation: stable.
    for _ in range(5):
        assert machine.sample().change is ContextChange.KEEP


def test_recovery_threshold_is_capped_by_the_ceiling() -> None:
    gov = _governor(n_ctx_configured=512, min_ctx=512)
    assert gov.recover_threshold == 512
    machine = Machine(gov, 1 * MiB)
    assert machine.sample().state is PressureState.PAUSED
    decision = machine.sample(free=64 * MiB)
    assert decision.state is PressureState.NORMAL
    assert decision.n_ctx == 512


def test_explicit_recover_margin() -> None:
    assert _governor(recover_margin=1.0).recover_threshold == 1024
    assert _governor(recover_margin=0.0).recover_threshold == 512
    assert _governor().recover_threshold == 640


def test_starting_paused_when_memory_is_short() -> None:
    gov = _governor()
    decision = Machine(gov, 1 * MiB).sample()
    assert decision.state is PressureState.PAUSED
    assert decision.change is ContextChange.KEEP  # there was no context to free
    assert decision.n_ctx == 0


def test_resized_reports_the_real_size() -> None:
    gov = _governor()
    machine = Machine(gov, 8 * MiB)
    assert machine.sample().n_ctx == 2048
    gov.resized(1024)  # say the allocation gave less
    assert gov.n_ctx == 1024
    decisions = [machine.sample() for _ in range(3)]
    assert [d.change for d in decisions] == [
        ContextChange.KEEP,
        ContextChange.KEEP,
        ContextChange.GROW,
    ]
    with pytest.raises(ValueError):
        gov.resized(-1)


def test_compute_cost_measured_later() -> None:
    gov = _governor()
    assert gov.budget(8 * MiB).tokens == 2048
    gov.set_compute_cost(KV, 1 * MiB)  # the compute buffer doubles the cost per token
    assert gov.budget(8 * MiB).tokens == 768
    decision = Machine(gov, 8 * MiB).sample()
    assert decision.n_ctx == 768
    assert decision.budget.fixed_bytes == 1 * MiB
    with pytest.raises(ValueError):
        gov.set_compute_cost(-1, 0)


def test_from_config() -> None:
    memory = MemoryConfig(reserve_mb=64, min_ctx=1024, grow_margin=0.5, grow_samples=2)
    gov = Governor.from_config(
        memory, n_ctx_configured=4096, kv_bytes_per_token=12_288, n_ctx_trained=32768
    )
    assert gov.reserve_bytes == 64 * MiB
    assert gov.min_ctx == 1024
    assert gov.grow_margin == 0.5
    assert gov.grow_samples == 2
    assert gov.recover_threshold == 1536
    assert gov.n_ctx == 0
    assert gov.state is PressureState.NORMAL


def test_config_defaults() -> None:
    memory = MemoryConfig()
    assert memory.grow_margin == 0.25
    assert memory.grow_samples == 3


def test_governor_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        _governor(kv_bytes_per_token=0)
    with pytest.raises(ValueError):
        _governor(grow_samples=0)
    with pytest.raises(ValueError):
        _governor(recover_margin=-0.1)


def test_governor_with_fake_cgroup_tree(tmp_path: Path) -> None:
    """End to end on a fake v2 tree: the cgroup limit, not host memory, sets the budget."""
    unit = tmp_path / "cgroup" / "system.slice" / "edgeagent.service"
    unit.mkdir(parents=True)
    (tmp_path / "cgroup" / "cgroup.controllers").write_text("memory\n")
    (unit / "memory.max").write_text(f"{400 * MiB}\n")
    (unit / "memory.current").write_text(f"{150 * MiB}\n")
    (unit / "memory.stat").write_text(f"inactive_file {50 * MiB}\n")
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/system.slice/edgeagent.service\n")
    reading = read_memory(
        proc_root=tmp_path / "proc",
        cgroup_root=tmp_path / "cgroup",
        vm=lambda: SimpleNamespace(available=4096 * MiB, total=8192 * MiB),
        swap=lambda: SimpleNamespace(free=0),
        rss=lambda: 1,
    )
    assert reading.available_bytes == 300 * MiB
    gov = Governor.from_config(
        MemoryConfig(reserve_mb=128), n_ctx_configured=32768, kv_bytes_per_token=12_288
    )
    decision = gov.observe(reading)
    # (300 - 128) MiB / 12 KiB = 14677 -> 14592
    assert decision.n_ctx == 14592
    assert decision.source is MemorySource.CGROUP
