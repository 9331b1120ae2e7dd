"""`edgeagent bench`: every speed figure next to its baseline, in one run.

Per model: constrained vs unconstrained decode speed (cli/bench_decoders.py: our token
loop, plain greedy decoding and llama.cpp's GBNF sampler on one loaded model), then the
throughput figures (cached prefixes, speculative decoding, concurrent tasks:
cli/bench_throughput.py), the end-to-end and memory figures (bench_e2e.py) and, with
--mqtt, the MQTT round trip (bench_mqtt.py).

On a terminal a progress line runs on stderr (cli/progress.py); piped, stderr only gets
one JSON line per task, and stdout the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from edgeagent.cli.bench_decoders import bench_model, to_markdown
from edgeagent.cli.bench_e2e import rss_figure, task_time_figures
from edgeagent.cli.bench_e2e import steps as e2e_steps
from edgeagent.cli.bench_mqtt import mosquitto, mqtt_figure
from edgeagent.cli.bench_report import figures_markdown
from edgeagent.cli.bench_throughput import bench_throughput
from edgeagent.cli.bench_throughput import steps as throughput_steps
from edgeagent.cli.progress import Progress

MQTT_TASKS = 30  # small tasks sent over MQTT with --mqtt


def _throughput(
    path: Path, args: argparse.Namespace, save: Callable[[], None], result: dict[str, Any]
) -> None:
    """The throughput, end-to-end and memory figures into result["figures"], each stamped
    with the load average when it was measured; `save` after each group."""
    threads, rounds = args.threads, args.rounds
    figures: list[dict[str, Any]] = result.setdefault("figures", [])

    def keep(group: Sequence[dict[str, Any]]) -> None:
        load = [round(x, 2) for x in os.getloadavg()]
        figures.extend(fig | {"load_average": load} for fig in group)
        save()

    broker = mosquitto() if args.mqtt else None
    with Progress(f"bench {path.name}") as progress:
        total = throughput_steps(rounds) + e2e_steps(rounds) + (MQTT_TASKS if broker else 0)
        progress.stage(f"bench {path.name}: throughput", total=total)
        tick = progress.advance
        result |= bench_throughput(path, threads=threads, rounds=rounds, tick=tick, keep=keep)
        keep(task_time_figures(path, threads=threads, rounds=rounds, tick=tick))
        keep([rss_figure(path, threads=threads, rounds=rounds, tick=tick)])
        if broker is not None:
            keep([mqtt_figure(path, tasks=MQTT_TASKS, threads=threads, tick=tick)])
        elif args.mqtt:
            progress.write("bench: no mosquitto binary; the MQTT figure is skipped\n")


def _save(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Write what has been measured so far (a long run keeps it if it is cut short)."""
    last = results[-1]
    elapsed = datetime.now(UTC) - datetime.fromisoformat(last["started_utc"])
    last["minutes"] = round(elapsed.total_seconds() / 60, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    results: list[dict[str, Any]] = []
    for path in args.model:
        result: dict[str, Any] = {
            "model": path.name,
            "threads": args.threads,
            "rounds": args.rounds,
            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
        }
        results.append(result)
        if not args.throughput_only:
            result |= bench_model(
                path,
                threads=args.threads,
                rounds=args.rounds,
                max_tokens=args.max_tokens,
                gbnf=not args.no_gbnf,
            )
            _save(args, results)
        _throughput(path, args, lambda: _save(args, results), result)
        result["load_average_at_end"] = machine()["load_average"]
        _save(args, results)
    sys.stdout.write(figures_markdown(results))
    if not args.throughput_only:
        sys.stdout.write("\n\n" + to_markdown(results))
    sys.stdout.write("\n")
    return 0


def machine() -> dict[str, Any]:
    """Where the figures were measured, and how busy the machine was."""
    load = os.getloadavg()
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "llama_cpp_python": version("llama_cpp_python"),
        "llguidance": version("llguidance"),
    }
