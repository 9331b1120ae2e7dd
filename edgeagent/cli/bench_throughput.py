"""`edgeagent bench`: the throughput figures, each measured beside its baseline.

All through the daemon's Engine (the scheduler, the batcher, the prefix cache), on the
workloads of bench_workloads.py, every round measuring both sides back to back:

* prefix: time to first token (`prompt_ms`) for four catalogs with ~1,000-token fixed
  parts, alternating, cached vs uncached (KV cleared, prefix cache not used);
* speculative: decode tokens/s with prompt-lookup speculation vs without (a second
  engine, `Engine(speculate=False)`), on extraction answers (they copy the input) and on
  answers that copy nothing;
* alone: a task alone through the scheduler vs the token loop run directly on the
  inference thread (what a task cost before tasks could run concurrently);
* batch: 4 and 8 concurrent tasks vs the same tasks one at a time (aggregate tokens/s
  from the first task's start to the last one's end; speculation off on both sides).

Answers are compared too: `identical` counts the answers equal to the baseline's. The
engine's side of each measurement (the baselines that reach inside it) is in
bench_engine.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeagent.cli.bench_engine import (
    answer,
    answer_direct,
    answer_uncached,
    batch_stats,
    burst,
    loaded,
    outcome,
    same,
    tps,
)
from edgeagent.cli.bench_report import figure
from edgeagent.cli.bench_workloads import (
    CATALOG_INPUTS,
    CATALOGS,
    CLASSIFY,
    CLASSIFY_INPUTS,
    EXTRACT,
    EXTRACT_INPUTS,
    describe,
)
from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Answer, Task

MAX_TOKENS = 160


def prefix_figures(engine: Engine, rounds: int, tick: Callable[[], None]) -> list[dict[str, Any]]:
    specs = list(CATALOGS.values())
    fixed = engine.call_blocking(lambda runner: runner.prompt(specs[0], CATALOG_INPUTS[0])).keep
    for spec in specs:  # warm-up: each catalog's fixed part computed once and cached
        answer(engine, Task(content=CATALOG_INPUTS[0], spec=spec, max_tokens=MAX_TOKENS))
    cached: list[float] = []
    uncached: list[float] = []
    outs: tuple[list[Any], list[Any]] = ([], [])
    for r in range(rounds):
        with_cache, without = [], []
        for i, spec in enumerate(specs):  # four catalogs, alternating
            task = Task(content=CATALOG_INPUTS[(r + i) % 4], spec=spec, max_tokens=MAX_TOKENS)
            a, b = answer(engine, task), answer_uncached(engine, task)
            with_cache.append(a.prompt_ms if isinstance(a, Answer) else 0.0)
            without.append(b.prompt_ms if isinstance(b, Answer) else 0.0)
            outs[0].append(outcome(a))
            outs[1].append(outcome(b))
            tick()
        cached.append(sum(with_cache) / len(with_cache))
        uncached.append(sum(without) / len(without))
    ratio = sorted(c / u for c, u in zip(cached, uncached, strict=True))[len(cached) // 2]
    return [
        figure(
            f"time to first token, 4 catalogs alternating ({fixed}-token fixed part)",
            "ms",
            cached,
            "uncached",
            uncached,
            target="≤ 0.2x",
            met=ratio <= 0.2,
            notes={"identical answers": same(*outs)},
        )
    ]


def speculative_figures(
    engine: Engine, plain_engine: Engine, rounds: int, tick: Callable[[], None]
) -> list[dict[str, Any]]:
    result = []
    for label, spec, inputs, target, bound in (
        ("extraction answers (copy the input)", EXTRACT, EXTRACT_INPUTS[:6], "≥ 1.3x", 1.3),
        ("answers that copy nothing", CLASSIFY, CLASSIFY_INPUTS, "≥ 0.97x", 0.97),
    ):
        fast: list[float] = []
        plain: list[float] = []
        outs: tuple[list[Any], list[Any]] = ([], [])
        for r in range(rounds):
            spec_answers: list[Answer | EdgeAgentError] = []
            plain_answers: list[Answer | EdgeAgentError] = []
            for text in inputs:
                task = Task(content=text, spec=spec, max_tokens=MAX_TOKENS)
                for speculate in (r % 2 == 0, r % 2 != 0):  # alternate who goes first
                    if speculate:
                        spec_answers.append(answer(engine, task))
                    else:
                        plain_answers.append(answer(plain_engine, task))
                tick()
            fast.append(tps(spec_answers))
            plain.append(tps(plain_answers))
            outs[0].extend(outcome(a) for a in spec_answers)
            outs[1].extend(outcome(a) for a in plain_answers)
        ratio = sorted(f / p for f, p in zip(fast, plain, strict=True))[len(fast) // 2]
        result.append(
            figure(
                f"decode tokens/s, speculative, {label}",
                "tok/s",
                fast,
                "no speculation",
                plain,
                target=target,
                met=ratio >= bound,
                notes={"identical answers": same(*outs)},
            )
        )
    return result


def alone_figures(engine: Engine, rounds: int, tick: Callable[[], None]) -> list[dict[str, Any]]:
    """engine: one that does not speculate (both sides run the plain token loop)."""
    scheduled: list[float] = []
    direct: list[float] = []
    for _ in range(rounds):
        via: list[Answer | EdgeAgentError] = []
        inline: list[Answer | EdgeAgentError] = []
        for text in EXTRACT_INPUTS[:4]:
            task = Task(content=text, spec=EXTRACT, max_tokens=MAX_TOKENS)
            via.append(answer(engine, task))
            inline.append(answer_direct(engine, task))
            tick()
        scheduled.append(tps(via))
        direct.append(tps(inline))
    ratio = sorted(s / d for s, d in zip(scheduled, direct, strict=True))[len(direct) // 2]
    return [
        figure(
            "decode tokens/s, one task alone (scheduler and sequence handle)",
            "tok/s",
            scheduled,
            "token loop on the model",
            direct,
            target="≥ 0.97x",
            met=ratio >= 0.97,
        )
    ]


def batch_figures(
    engine: Engine,
    rounds: int,
    tick: Callable[[], None],
    sizes: Sequence[int] = (4, 8),
    label: str = "",
) -> list[dict[str, Any]]:
    """Per burst size two figures: tokens/s of the decode steps alone (the model's
    side: what batching changes) and of the whole burst, first start to last end
    (prompts, token loops and the serial tail included: what a client sees).
    engine: one that does not speculate."""
    result = []
    stats = batch_stats(engine)
    for n in sizes:
        tasks = [
            Task(
                content=EXTRACT_INPUTS[i % len(EXTRACT_INPUTS)],
                spec=EXTRACT,
                max_tokens=MAX_TOKENS,
            )
            for i in range(n)
        ]
        wall: tuple[list[float], list[float]] = ([], [])
        steps: tuple[list[float], list[float]] = ([], [])
        outs: tuple[list[Any], list[Any]] = ([], [])
        for _ in range(rounds):
            started, stepped = time.perf_counter(), stats.decode_s
            serial = [answer(engine, t) for t in tasks]
            serial_s = time.perf_counter() - started
            serial_steps = stats.decode_s - stepped
            started, stepped = time.perf_counter(), stats.decode_s
            batched = asyncio.run(burst(engine, tasks))
            batched_s = time.perf_counter() - started
            batched_steps = stats.decode_s - stepped
            tokens = sum(a.completion_tokens for a in serial if isinstance(a, Answer))
            wall[1].append(tokens / serial_s)
            steps[1].append(tokens / serial_steps)
            tokens = sum(a.completion_tokens for a in batched if isinstance(a, Answer))
            wall[0].append(tokens / batched_s)
            steps[0].append(tokens / batched_steps)
            outs[0].extend(outcome(a) for a in batched)
            outs[1].extend(outcome(a) for a in serial)
            tick()
        for what, (together, one_by_one) in (
            ("decode steps", steps),
            ("whole burst", wall),
        ):
            ratio = sorted(t / o for t, o in zip(together, one_by_one, strict=True))
            met = ratio[rounds // 2] >= 1.8 if n == 8 else None
            result.append(
                figure(
                    f"aggregate tokens/s, {n} concurrent tasks{label}, {what}",
                    "tok/s",
                    together,
                    "one at a time",
                    one_by_one,
                    target="≥ 1.8x" if n == 8 else "",
                    met=met,
                    notes={"identical answers": same(*outs)},
                )
            )
    return result


def bench_throughput(
    path: Path,
    *,
    threads: int,
    rounds: int,
    tick: Callable[[], None],
    keep: Callable[[list[dict[str, Any]]], None],
) -> dict[str, Any]:
    """Measures the figures, handing each group to `keep` as soon as it is measured (a
    long run on a Pi keeps what it has); returns what else there is to report."""
    cfg = ModelConfig(path=path, threads=threads, n_ctx=2048, n_batch=256, max_tokens=MAX_TOKENS)
    with loaded(cfg) as engine:
        keep(prefix_figures(engine, rounds, tick))
        with loaded(cfg, speculate=False) as plain:
            keep(speculative_figures(engine, plain, rounds, tick))
            keep(alone_figures(plain, rounds, tick))
            keep(batch_figures(plain, rounds, tick))
        extra = engine.call_blocking(
            lambda runner: {
                "invariant_rows": runner.model.invariant_rows,
                "prefix_cache": runner.model.prefix_cache.stats(),
            }
        )
    # The same burst with llama.cpp's defaults: repacked weights, any number of tokens
    # per decode (answers may then differ in the last bits from one-at-a-time ones).
    with loaded(cfg, exact=False, speculate=False) as fast:
        keep(batch_figures(fast, rounds, tick, (8,), " (exact=False)"))
    return {"workloads": describe(), **extra}


def steps(rounds: int) -> int:
    """Progress ticks bench_throughput makes."""
    return rounds * (len(CATALOGS) + 6 + len(CLASSIFY_INPUTS) + 4 + 3)
