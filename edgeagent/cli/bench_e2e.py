"""`edgeagent bench`: the daemon's engine against plain llama-cpp-python, and its memory.

* task time: the same catalog and extraction tasks answered by the Engine (prompt, cached
  prefixes, constrained decoding, speculation) and by what a developer would write
  without edgeagent — `Llama.create_chat_completion` with a JSON-schema
  `response_format` (evaluation/baseline.py) — in one process, alternating. MQTT adds
  a few milliseconds more per task (scripts/mqtt_overhead.py measures them).
* resident memory: a fresh process holding the Engine after one task, against a fresh
  process holding a bare `llama_cpp.Llama` of the same model and context after one
  completion; the prefix cache and the KV streams of a batch are reported apart (they
  are what the memory governor hands out beyond the context).

Run as `python -m edgeagent.cli.bench_e2e rss bare|engine MODEL THREADS` for the
memory probe of one process (what `rss_figure` starts twice).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from edgeagent.cli.bench_report import figure
from edgeagent.cli.bench_workloads import CATALOG_INPUTS, CATALOGS, EXTRACT, EXTRACT_INPUTS
from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError
from edgeagent.evaluation.baseline import LlamaCppBaseline
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Task

N_CTX = 2048
MAX_TOKENS = 160
MIB = 2**20


def _config(path: Path, threads: int) -> ModelConfig:
    return ModelConfig(path=path, threads=threads, n_ctx=N_CTX, n_batch=256, max_tokens=MAX_TOKENS)


def _timed(answer: Callable[[Task], object], task: Task) -> float:
    started = time.perf_counter()
    with contextlib.suppress(EdgeAgentError):  # a failed answer took that long too
        answer(task)
    return (time.perf_counter() - started) * 1000


def task_time_figures(
    path: Path, *, threads: int, rounds: int, tick: Callable[[], None]
) -> list[dict[str, Any]]:
    cfg = _config(path, threads)
    engine, baseline = Engine(cfg), LlamaCppBaseline(cfg)
    engine.load()
    baseline.load()
    result = []
    try:
        for label, tasks in (
            ("catalog tasks", [Task(content=x, spec=s, max_tokens=MAX_TOKENS)
                               for s, x in zip(CATALOGS.values(), CATALOG_INPUTS, strict=True)]),
            ("extraction tasks", [Task(content=x, spec=EXTRACT, max_tokens=MAX_TOKENS)
                                  for x in EXTRACT_INPUTS[:4]]),
        ):  # fmt: skip
            ours: list[float] = []
            theirs: list[float] = []
            # Warm-up, not timed: each side's first task pays the grammar compile and the
            # engine its catalogs' fixed parts once (a running daemon has them cached).
            for task in tasks:
                _timed(engine.answer_blocking, task)
            _timed(baseline.answer_blocking, tasks[0])
            tick()
            for _ in range(rounds):
                mine, plain = [], []
                for task in tasks:
                    mine.append(_timed(engine.answer_blocking, task))
                    plain.append(_timed(baseline.answer_blocking, task))
                    tick()
                ours.append(statistics.median(mine))
                theirs.append(statistics.median(plain))
            ratio = sorted(o / t for o, t in zip(ours, theirs, strict=True))[rounds // 2]
            result.append(
                figure(
                    f"median task time, {label} (engine, MQTT not included)",
                    "ms",
                    ours,
                    "llama-cpp-python create_chat_completion + JSON schema",
                    theirs,
                    target="≤ 0.5x",
                    met=ratio <= 0.5,
                )
            )
    finally:
        engine.close()
        baseline.close()
    return result


def _probe(kind: str, path: Path, threads: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "edgeagent.cli.bench_e2e", "rss", kind, str(path), str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    values: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return values


def rss_figure(
    path: Path, *, threads: int, rounds: int, tick: Callable[[], None]
) -> dict[str, Any]:
    ours: list[float] = []
    bare: list[float] = []
    extras: list[float] = []
    for _ in range(rounds):
        engine = _probe("engine", path, threads)
        plain = _probe("bare", path, threads)
        ours.append(engine["rss"] / MIB)
        bare.append(plain["rss"] / MIB)
        extras.append((engine["rss"] - engine["prefix_cache"] - plain["rss"]) / MIB)
        tick()
    over = statistics.median(extras)
    return figure(
        "resident memory after one task (prefix cache subtracted)",
        "MiB",
        ours,
        "bare llama_cpp.Llama, same model and context",
        bare,
        target="≤ baseline + 60 MiB",
        met=over <= 60,
        notes={"beyond the baseline, cache subtracted (MiB)": round(over, 1)},
    )


def _rss_probe(kind: str, path: Path, threads: int) -> dict[str, int]:
    cfg = _config(path, threads)
    task = Task(content=EXTRACT_INPUTS[0], spec=EXTRACT, max_tokens=MAX_TOKENS)
    cache = 0
    if kind == "bare":
        baseline = LlamaCppBaseline(cfg)
        baseline.load()
        baseline.answer_blocking(task)
    else:
        engine = Engine(cfg)
        engine.load()
        engine.answer_blocking(task)
        _, cache = engine.capacity.sequences_held()
    return {"rss": psutil.Process().memory_info().rss, "prefix_cache": cache}


def steps(rounds: int) -> int:
    """Progress ticks of task_time_figures and rss_figure."""
    return 2 + rounds * (len(CATALOGS) + 4 + 1)


if __name__ == "__main__":
    _, what, kind, model_path, thread_count = sys.argv
    if what != "rss" or kind not in {"bare", "engine"}:
        raise SystemExit(__doc__)
    sys.stdout.write(json.dumps(_rss_probe(kind, Path(model_path), int(thread_count))) + "\n")
