"""Resident memory of the daemon's engine against a bare llama-cpp-python process.

    python -m edgeagent.cli.bench_memory --model M.gguf [--model M2.gguf] [--n-ctx 4096]
        [--threads N] [--idle 30] [--parallel auto --parallel 8] [--json out.json]

Each side runs in a fresh process of its own, with the same model, context size and
tasks (the extraction workload of `edgeagent bench`):

* **bare**: `llama_cpp.Llama` (evaluation/baseline.py), tasks one at a time — a burst
  is one at a time too: a `Llama` holds one sequence;
* **engine**, once per `--parallel` value: the daemon's `Engine`, eight tasks one at a
  time, then the eight at once (`Engine.answer` awaited together, as the worker does),
  then `--idle` seconds with nothing to do.

RSS is sampled every 50 ms; each phase reports its peak and its level at the end, and
the engine what it held (KV streams, prefix cache bytes). The figures go into
docs/memory.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from edgeagent.cli.bench_workloads import EXTRACT, EXTRACT_INPUTS
from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError
from edgeagent.evaluation.baseline import LlamaCppBaseline
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Task

MIB = 2**20
MAX_TOKENS = 160
TASKS = [Task(content=text, spec=EXTRACT, max_tokens=MAX_TOKENS) for text in EXTRACT_INPUTS]


class RssSampler:
    """Peak and current RSS of this process, sampled in a thread."""

    def __init__(self, every_s: float = 0.05) -> None:
        self._every_s = every_s
        self._process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.peak = max(self.peak, self.now())

    def now(self) -> int:
        rss: int = self._process.memory_info().rss
        return rss

    @contextmanager
    def phase(self, into: dict[str, Any], name: str) -> Iterator[None]:
        self.peak = self.now()
        yield
        into[name] = {"peak_mib": _mib(max(self.peak, self.now())), "end_mib": _mib(self.now())}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _mib(value: int) -> float:
    return round(value / MIB, 1)


def _answer_all(answer: Callable[[Task], object]) -> int:
    failed = 0
    for task in TASKS:
        try:
            answer(task)
        except EdgeAgentError:
            failed += 1
    return failed


def _bare(cfg: ModelConfig, idle_s: float, rss: RssSampler) -> dict[str, Any]:
    out: dict[str, Any] = {}
    baseline = LlamaCppBaseline(cfg)
    with rss.phase(out, "loaded"):
        baseline.load()
    with rss.phase(out, "one at a time"):
        out["failed"] = _answer_all(baseline.answer_blocking)
    with rss.phase(out, "burst"):  # a Llama holds one sequence: one at a time again
        out["failed"] += _answer_all(baseline.answer_blocking)
    _idle(out, idle_s, rss)
    baseline.close()
    return out


def _idle(out: dict[str, Any], idle_s: float, rss: RssSampler) -> None:
    with rss.phase(out, "idle"):
        time.sleep(idle_s)


def _engine(cfg: ModelConfig, idle_s: float, rss: RssSampler) -> dict[str, Any]:
    out: dict[str, Any] = {}
    engine = Engine(cfg)
    with rss.phase(out, "loaded"):
        engine.load()
    capacity = engine.capacity
    if capacity.batch_probe is not None:
        probe = capacity.batch_probe
        out["probe_ms"] = {"alone": probe.alone_ms, "batched, per token": probe.batched_ms}
    out["max_parallel"] = capacity.max_parallel
    with rss.phase(out, "one at a time"):
        out["failed"] = _answer_all(engine.answer_blocking)

    async def burst() -> list[object]:
        return await asyncio.gather(*(engine.answer(t) for t in TASKS), return_exceptions=True)

    with rss.phase(out, "burst"):
        results = asyncio.run(burst())
        out["streams after the burst"] = capacity.sequences_held()[0]
    out["failed"] += sum(isinstance(r, BaseException) for r in results)
    _idle(out, idle_s, rss)
    streams, cache = capacity.sequences_held()
    out["streams after idle"], out["prefix cache MiB"] = streams, _mib(cache)
    engine.close()
    return out


def _child(kind: str, model: Path, threads: int, n_ctx: int, idle_s: float) -> dict[str, Any]:
    parallel: int | str = "auto" if kind in {"bare", "auto"} else int(kind)
    cfg = ModelConfig(
        path=model,
        threads=threads,
        n_ctx=n_ctx,
        n_batch=256,
        max_tokens=MAX_TOKENS,
        parallel=parallel,  # type: ignore[arg-type]  # validated by pydantic
    )
    rss = RssSampler()
    try:
        side = _bare if kind == "bare" else _engine
        return side(cfg, idle_s, rss)
    finally:
        rss.close()


def _run_child(args: argparse.Namespace, kind: str, model: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "edgeagent.cli.bench_memory", "--child", kind]
    command += ["--model", str(model), "--threads", str(args.threads)]
    command += ["--n-ctx", str(args.n_ctx), "--idle", str(args.idle)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _table(model: Path, sides: dict[str, dict[str, Any]]) -> str:
    bare = sides["bare"]
    lines = [
        f"\n{model.name}",
        "| process | loaded | one at a time | burst (peak) | burst (end) | after idle |",
        "|---|---|---|---|---|---|",
    ]
    for name, side in sides.items():
        cells = [side["loaded"]["end_mib"], side["one at a time"]["peak_mib"]]
        cells += [side["burst"]["peak_mib"], side["burst"]["end_mib"], side["idle"]["end_mib"]]
        base = [bare["loaded"]["end_mib"], bare["one at a time"]["peak_mib"]]
        base += [bare["burst"]["peak_mib"], bare["burst"]["end_mib"], bare["idle"]["end_mib"]]
        shown = [f"{c:.0f} ({c - b:+.0f})" for c, b in zip(cells, base, strict=True)]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--parallel", action="append", help="engine sides: auto, 1..8")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = _child(args.child, args.model[0], args.threads, args.n_ctx, args.idle)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    results: dict[str, Any] = {}
    for model in args.model:
        sides = {"bare": _run_child(args, "bare", model)}
        for parallel in args.parallel or ["auto", "8"]:
            sides[f"engine, parallel {parallel}"] = _run_child(args, parallel, model)
        results[model.name] = {"load_avg": psutil.getloadavg(), "sides": sides}
        sys.stdout.write(_table(model, sides) + "\n")
        sys.stdout.flush()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
