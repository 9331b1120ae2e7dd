"""The engine with a scripted model behind its factory seam: thread, lifecycle, errors."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.catalogs import GREENHOUSE_ACTIONS
from support.scripted_model import KV_BYTES_PER_TOKEN, METADATA, ScriptedFactory

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import action_spec, schema_spec, select_actions
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Task

CFG = ModelConfig(path=Path("/nonexistent/model.gguf"), threads=1, n_ctx=1024, n_batch=64)
SPEC = schema_spec({"type": "object", "properties": {"ok": {"type": "boolean"}}})


@pytest.fixture
def factory():
    return ScriptedFactory(text='{"ok":true}')


@pytest.fixture
def engine(factory):
    eng = Engine(CFG, factory=factory)
    eng.load()
    yield eng
    eng.close(timeout=5)


def test_answer_runs_on_the_inference_thread(engine, factory):
    threads = []
    engine.call_blocking(lambda _runner: threads.append(threading.current_thread().name))
    answer = asyncio.run(engine.answer(Task(content="Is it fine?", spec=SPEC, max_tokens=20)))
    assert answer.output == {"ok": True}
    assert answer.n_ctx == 1024
    assert answer.completion_tokens > 0
    assert threads[0].startswith("edgeagent-inference")
    (model,) = factory.models
    # The prompt is the chat template around our system message and the caller's text.
    assert "Is it fine?" in model.detokenize(model.prefills[0])


SECRET = "The door code is 4711."
USER = [{"role": "user", "content": "Is it open?"}]


def fixed_text(engine, spec, content):
    """The text of the prompt part that may be reused across callers."""
    return engine.call_blocking(
        lambda runner: (
            runner.detokenize((prompt := runner.prompt(spec, content))[: prompt.keep]),
            runner.detokenize(prompt),
        )
    )


@pytest.mark.parametrize(
    "content",
    [
        [{"role": "system", "content": SECRET}, {"role": "user", "content": "Open up."}],
        SECRET,
        [
            {"role": "user", "content": SECRET},
            {"role": "assistant", "content": "{}"},
            {"role": "user", "content": "Again."},
        ],
    ],
    ids=["system message", "input", "earlier turn"],
)
def test_no_caller_text_is_in_the_part_shared_across_callers(engine, content):
    fixed, whole = fixed_text(engine, SPEC, content)
    assert SECRET in whole
    assert SECRET not in fixed
    assert CFG.system_prompt in fixed


def test_a_callers_schema_is_not_shared_a_catalogs_instructions_are(engine):
    secret_schema = schema_spec(
        {"type": "object", "properties": {"code_4711": {"type": "boolean"}}}
    )
    fixed, whole = fixed_text(engine, secret_schema, "Is it open?")
    assert "code_4711" in whole
    assert "code_4711" not in fixed
    catalog = action_spec(select_actions(GREENHOUSE_ACTIONS, None))
    fixed, _ = fixed_text(
        engine, catalog, [{"role": "system", "content": SECRET}, {"role": "user", "content": "x"}]
    )
    assert "Choose exactly one of these actions" in fixed
    assert "start_heater" in fixed  # the catalog's last entry: the listing is shared
    assert SECRET not in fixed


def test_share_schemas_puts_the_schema_into_the_shared_part(factory):
    engine = Engine(CFG.model_copy(update={"share_schemas": True}), factory=factory)
    engine.load()
    try:
        spec = schema_spec({"type": "object", "properties": {"code_4711": {"type": "boolean"}}})
        fixed, _ = fixed_text(engine, spec, [{"role": "system", "content": SECRET}, *USER])
        assert "code_4711" in fixed
        assert SECRET not in fixed
    finally:
        engine.close(timeout=5)


def test_the_engine_exposes_what_the_memory_loop_needs(engine):
    assert engine.n_ctx == 1024
    assert engine.n_ctx_train == 8192
    capacity = engine.capacity
    assert capacity.n_ctx == 1024
    assert capacity.metadata == METADATA
    kv, compute = capacity.buffer_bytes()
    assert kv == 1024 * KV_BYTES_PER_TOKEN
    assert compute > 0
    # One sequence and no prefix cache: the branches of a real model with parallel = 1.
    assert (capacity.max_parallel, capacity.prefix_cache_max) == (1, 0)
    assert capacity.sequences_held() == (1, 0)
    assert capacity.batch_probe is None
    assert engine.at_once(running=1, waiting=7) == 1


def test_start_loads_at_the_asked_context_and_resize_follows(factory):
    engine = Engine(CFG, factory=factory)

    async def scenario():
        await engine.start(n_ctx=256)
        assert engine.n_ctx == 256
        await engine.resize(768)
        assert engine.n_ctx == 768
        answer = await engine.answer(Task(content="x", spec=SPEC, max_tokens=20))
        assert answer.n_ctx == 768

    asyncio.run(scenario())
    assert engine.close(timeout=5)


def test_a_released_context_answers_busy(engine):
    asyncio.run(engine.resize(0))
    assert engine.n_ctx == 0
    with pytest.raises(EdgeAgentError) as info:
        engine.answer_blocking(Task(content="x", spec=SPEC, max_tokens=20))
    assert info.value.code is ErrorCode.BUSY
    asyncio.run(engine.resize(512))
    assert engine.answer_blocking(Task(content="x", spec=SPEC, max_tokens=20)).output


def test_prompt_and_max_tokens_over_the_context_is_context_budget(engine):
    with pytest.raises(EdgeAgentError) as info:
        engine.answer_blocking(Task(content="word " * 2000, spec=SPEC, max_tokens=20))
    assert info.value.code is ErrorCode.CONTEXT_BUDGET
    assert info.value.details["budget"] == 1024


def test_decode_steps_show_progress_to_the_watchdog(engine):
    before = engine.last_progress
    seen = []

    def watch(runner):
        runner.model.on_progress = lambda: seen.append(engine.busy)

    engine.call_blocking(watch)
    engine.answer_blocking(Task(content="x", spec=SPEC, max_tokens=20))
    assert seen
    assert all(seen)
    assert engine.last_progress > before
    assert not engine.busy


def test_close_frees_the_model(factory):
    engine = Engine(CFG, factory=factory)
    engine.load()
    assert engine.close(timeout=5)
    assert factory.models[0].closed
    assert engine.n_ctx == 0
    with pytest.raises(EdgeAgentError) as info:
        _ = engine.capacity.n_ctx_train
    assert info.value.code is ErrorCode.INTERNAL


def test_close_with_a_wedged_call_returns_false_without_waiting(factory):
    engine = Engine(CFG, factory=factory)
    engine.load()
    model = factory.models[0]
    model.wedge_prefill = True
    caller = ThreadPoolExecutor(max_workers=1)
    stuck = caller.submit(engine.answer_blocking, Task(content="x", spec=SPEC, max_tokens=20))
    assert model.wedged.wait(5)
    try:
        assert engine.close(timeout=0.05) is False
        assert not model.closed  # the thread never got to it
    finally:
        model.unwedge.set()  # let the left-behind thread finish
        stuck.result(5)
        caller.shutdown()


def test_a_model_that_holds_several_sequences_gets_the_batcher_whatever_its_class():
    """The engine reads the model's protocol (engine_model.EngineModel), not its class:
    the scripted model, loaded to hold two sequences, gets the scheduler and the batcher
    a real one gets, and answers through them as it does alone."""
    task = Task(content="Is it fine?", spec=SPEC, max_tokens=20)
    alone = Engine(CFG, factory=ScriptedFactory(text='{"ok":true}'))
    alone.load()
    try:
        expected = alone.answer_blocking(task)
        assert alone.call_blocking(lambda runner: runner.batcher) is None
    finally:
        alone.close(timeout=5)
    cfg = CFG.model_copy(update={"parallel": 2})
    engine = Engine(cfg, factory=ScriptedFactory(text='{"ok":true}', max_seq=2), min_batch=2)
    engine.load()
    try:
        assert (engine.capacity.max_parallel, engine.capacity.parallel) == (2, 2)
        assert engine.at_once(running=0, waiting=1) == 1
        assert engine.at_once(running=1, waiting=1) == 2
        answer = asyncio.run(engine.answer(task))
        assert (answer.output, answer.completion_tokens) == (
            expected.output,
            expected.completion_tokens,
        )
        stats = engine.call_blocking(lambda runner: runner.batcher.stats)
        assert stats.steps > 0  # the batcher served its prompt and its tokens
    finally:
        engine.close(timeout=5)
