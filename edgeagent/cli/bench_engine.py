"""The daemon's Engine as `edgeagent bench` drives it (bench_throughput.py).

Answers or their errors (a small model writing in circles is still compared), an engine
loaded for one group of figures, and the baselines that need the engine's inside,
reached through `Engine.call_blocking` on its inference thread: the token loop run
directly on the model, a task from an empty KV cache without the prefix cache, and
what the batcher served (`BatchStats`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError
from edgeagent.inference.batch import BatchStats
from edgeagent.inference.engine import Engine
from edgeagent.inference.prefix_cache import PrefixCache
from edgeagent.inference.runner import Runner
from edgeagent.inference.task import Answer, Task


def outcome(result: Answer | BaseException) -> Any:
    if isinstance(result, EdgeAgentError):
        return str(result.code)
    if isinstance(result, BaseException):
        raise result
    return result.output


def answer(engine: Engine, task: Task) -> Answer | EdgeAgentError:
    try:
        return engine.answer_blocking(task)
    except EdgeAgentError as exc:  # e.g. a small model writing in circles: still compared
        return exc


@contextlib.contextmanager
def loaded(cfg: ModelConfig, *, exact: bool = True, speculate: bool = True) -> Iterator[Engine]:
    engine = Engine(cfg, exact=exact, speculate=speculate)
    engine.load()
    try:
        yield engine
    finally:
        engine.close()


def answer_direct(engine: Engine, task: Task) -> Answer | EdgeAgentError:
    """The task on the inference thread itself: the token loop on the model, with no
    scheduler, batcher or sequence handle (how every task ran before)."""

    def run(runner: Runner) -> Answer | EdgeAgentError:
        try:
            return runner.answer(task)
        except EdgeAgentError as exc:
            return exc

    return engine.call_blocking(run)


def answer_uncached(engine: Engine, task: Task) -> Answer | EdgeAgentError:
    """The task computed from an empty KV cache, without the prefix cache (an empty
    one of no bytes stands in for it meanwhile)."""

    def forget(runner: Runner) -> PrefixCache:
        runner.model.kv.clear()
        cache, runner.model.prefix_cache = runner.model.prefix_cache, PrefixCache(0)
        return cache

    cache = engine.call_blocking(forget)

    def restore(runner: Runner) -> None:
        runner.model.prefix_cache = cache

    try:
        return answer(engine, task)
    finally:
        engine.call_blocking(restore)


def tps(answers: Sequence[Answer | EdgeAgentError]) -> float:
    done = [a for a in answers if isinstance(a, Answer)]
    return sum(a.completion_tokens for a in done) / max(sum(a.decode_ms for a in done) / 1000, 1e-9)


def same(a: Sequence[Any], b: Sequence[Any]) -> str:
    return f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"


async def burst(engine: Engine, tasks: Sequence[Task]) -> list[Answer | BaseException]:
    return await asyncio.gather(*(engine.answer(t) for t in tasks), return_exceptions=True)


def batch_stats(engine: Engine) -> BatchStats:
    """What the engine's batcher served (its step timer): live, read between bursts."""
    batcher = engine.call_blocking(lambda runner: runner.batcher)
    assert batcher is not None, "the engine holds one sequence: no batch figures"
    return batcher.stats
