"""Overflow planning: which input tokens to keep, where to split (no model)."""

from __future__ import annotations

import pytest

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.overflow import plan_overflow
from edgeagent.protocol.overflow_policy import OverflowPolicy

# --- overflow ------------------------------------------------------------------------------

PROMPT = list(range(1000, 1100))  # 100 input tokens
MARKER = [7, 8, 9]


@pytest.mark.parametrize("policy", list(OverflowPolicy))
def test_a_task_that_fits_is_left_alone(policy: OverflowPolicy) -> None:
    plan = plan_overflow(PROMPT, 50, 100, 250, policy)
    assert plan.fits
    assert plan.tokens == tuple(PROMPT)
    assert plan.chunks == ((0, 100),)
    assert plan.truncated == 0
    assert (plan.budget, plan.truncated, len(plan.chunks)) == (250, 0, 1)
    assert plan.chunk_tokens() == [PROMPT]


def test_reject() -> None:
    with pytest.raises(EdgeAgentError) as info:
        plan_overflow(PROMPT, 50, 100, 249, "reject")
    err = info.value
    assert err.code is ErrorCode.CONTEXT_BUDGET
    assert "needs 250 context tokens" in err.message
    assert "budget is 249" in err.message
    assert err.details == {
        "budget": 249,
        "needed": 250,
        "prompt_tokens": 150,
        "max_tokens": 100,
        "policy": "reject",
    }


def test_truncate_keeps_head_and_tail_around_the_marker() -> None:
    plan = plan_overflow(PROMPT, 50, 100, 200, OverflowPolicy.TRUNCATE, marker_tokens=MARKER)
    # room for 50 input tokens: 47 + marker
    assert not plan.fits
    assert len(plan.tokens) == 50
    assert plan.tokens[:24] == tuple(PROMPT[:24])
    assert plan.tokens[24:27] == tuple(MARKER)
    assert plan.tokens[27:] == tuple(PROMPT[-23:])
    assert plan.truncated == 53
    assert plan.chunks == ((0, 50),)
    assert (plan.budget, plan.truncated, len(plan.chunks)) == (200, 53, 1)
    assert 50 + len(plan.tokens) + 100 <= 200


def test_truncate_head_fraction() -> None:
    head_only = plan_overflow(PROMPT, 0, 0, 10, "truncate", head_fraction=1.0)
    assert head_only.tokens == tuple(PROMPT[:10])
    tail_only = plan_overflow(PROMPT, 0, 0, 10, "truncate", head_fraction=0.0)
    assert tail_only.tokens == tuple(PROMPT[-10:])
    with pytest.raises(ValueError):
        plan_overflow(PROMPT, 0, 0, 10, "truncate", head_fraction=1.5)


def test_truncate_without_room_next_to_the_marker() -> None:
    with pytest.raises(EdgeAgentError) as info:
        plan_overflow(PROMPT, 50, 100, 153, "truncate", marker_tokens=MARKER)
    assert info.value.code is ErrorCode.CONTEXT_BUDGET
    assert "marker" in info.value.message


@pytest.mark.parametrize("policy", [OverflowPolicy.TRUNCATE, OverflowPolicy.CHUNK])
def test_no_room_for_any_input(policy: OverflowPolicy) -> None:
    with pytest.raises(EdgeAgentError) as info:
        plan_overflow(PROMPT, 150, 100, 250, policy)
    assert info.value.code is ErrorCode.CONTEXT_BUDGET
    assert "lower max_tokens" in info.value.message


def test_chunk_boundaries_cover_the_input_and_fit() -> None:
    plan = plan_overflow(PROMPT, 50, 100, 190, OverflowPolicy.CHUNK, overlap=5)
    # room 40, overlap 5: starts 0, 35, 70
    assert plan.chunks == ((0, 40), (35, 75), (70, 100))
    assert plan.tokens == tuple(PROMPT)
    assert plan.truncated == 0
    assert (plan.budget, plan.truncated, len(plan.chunks)) == (190, 0, 3)
    pieces = plan.chunk_tokens()
    assert pieces[0] == PROMPT[:40]
    assert pieces[-1] == PROMPT[70:]
    for start, end in plan.chunks:
        assert 50 + (end - start) + 100 <= 190
    covered: set[int] = set()
    for start, end in plan.chunks:
        covered.update(range(start, end))
    assert covered == set(range(100))


def test_chunk_overlap_is_capped_at_a_quarter() -> None:
    plan = plan_overflow(PROMPT, 0, 0, 40, "chunk", overlap=1000)
    # overlap 10: starts 0, 30, 60
    assert plan.chunks == ((0, 40), (30, 70), (60, 100))


def test_chunk_without_overlap() -> None:
    plan = plan_overflow(PROMPT, 0, 0, 25, "chunk", overlap=0)
    assert plan.chunks == ((0, 25), (25, 50), (50, 75), (75, 100))


def test_chunk_limit() -> None:
    with pytest.raises(EdgeAgentError) as info:
        plan_overflow(PROMPT, 0, 0, 10, "chunk", overlap=0, max_chunks=5)
    assert info.value.code is ErrorCode.CONTEXT_BUDGET
    assert "10 chunks" in info.value.message


def test_overflow_argument_checks() -> None:
    with pytest.raises(ValueError):
        plan_overflow(PROMPT, -1, 0, 10, "chunk")
    with pytest.raises(ValueError):
        plan_overflow(PROMPT, 0, 0, 10, "summarise")
