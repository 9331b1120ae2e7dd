"""`edgeagent bench`: every speed figure next to its baseline, in one run.

Two parts per model: the throughput figures (cached prefixes, speculative decoding,
concurrent tasks: cli/bench_throughput.py) and, here, constrained vs unconstrained
decode speed. For each task, three decoders (cli/bench_decoders.py) run on the same
loaded model and the same prompt, in rotating order, several rounds:

* free: plain greedy decoding of exactly as many tokens as the constrained answer
  had (the baseline: what the model costs without any constraint);
* edgeagent: our llguidance loop (argmax check, mask on refusal, forced tokens batched);
* gbnf: llama.cpp's own grammar sampler with the GBNF that llama-cpp-python derives
  from the same JSON Schema (what `Llama(..., grammar=LlamaGrammar.from_json_schema())`
  does).

Reported speeds are answer tokens per second of decode time (prompt processing
excluded and identical for all three, since the prompt is cached).

On a terminal a progress line runs on stderr (cli/progress.py); piped, stderr only gets
one JSON line per task, and stdout the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from llama_cpp.llama_grammar import LlamaGrammar

from edgeagent import __version__
from edgeagent.cli.bench_decoders import Sample, run_edgeagent, run_free, run_gbnf, tps
from edgeagent.cli.bench_e2e import rss_figure, task_time_figures
from edgeagent.cli.bench_e2e import steps as e2e_steps
from edgeagent.cli.bench_mqtt import mosquitto, mqtt_figure
from edgeagent.cli.bench_report import figures_markdown
from edgeagent.cli.bench_throughput import bench_throughput
from edgeagent.cli.bench_throughput import steps as throughput_steps
from edgeagent.cli.progress import Progress
from edgeagent.inference.contract import OutputSpec, schema_spec
from edgeagent.inference.model import ResidentModel
from edgeagent.inference.prompt import build_messages

MQTT_TASKS = 30  # small tasks sent over MQTT with --mqtt

SYSTEM = (
    "You are a precise assistant running on an edge device. "
    "Read the input and answer only with JSON."
)

TASKS: list[tuple[str, dict[str, Any], str]] = [
    (
        "sensor-report",
        {
            "type": "object",
            "properties": {
                "zone": {"type": "integer", "minimum": 1, "maximum": 8},
                "celsius": {"type": "number"},
                "humidity_pct": {"type": ["number", "null"]},
                "status": {"enum": ["ok", "too_hot", "too_cold", "too_dry", "too_wet"]},
                "summary": {"type": "string", "maxLength": 160},
            },
            "required": ["zone", "celsius", "humidity_pct", "status", "summary"],
        },
        (
            "Zone 4 report at 14:05: air temperature 38.2 C, relative humidity 21 %, soil dry, "
            "fans running at full speed since noon, tomatoes wilting on the south side."
        ),
    ),
    (
        "log-event",
        {
            "type": "object",
            "properties": {
                "severity": {"enum": ["debug", "info", "warning", "error", "critical"]},
                "service": {"type": "string", "maxLength": 40},
                "message": {"type": "string", "maxLength": 200},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "key": {"type": "string", "maxLength": 30},
                            "value": {"type": "string", "maxLength": 60},
                        },
                        "required": ["key", "value"],
                    },
                    "maxItems": 6,
                },
            },
            "required": ["severity", "service", "message", "fields"],
        },
        (
            "Nov 29 07:41:12 pi-07 kernel: [12345.678] usb 1-1.3: device descriptor read/64, "
            "error -71; retrying in 500 ms (port 3, hub 1-1, speed high)"
        ),
    ),
    (
        "summary",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 80},
                "points": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 120},
                    "minItems": 2,
                    "maxItems": 4,
                },
            },
            "required": ["title", "points"],
        },
        (
            "Maintenance note: the irrigation pump in row B was replaced on Monday. The new pump "
            "draws less current but needs priming after every power cut. Filters should be "
            "cleaned weekly; the pressure sensor on line 3 reads 0.2 bar too high and must be "
            "recalibrated before the next growing season."
        ),
    ),
]


def _prompt(model: ResidentModel, spec: OutputSpec, text: str) -> list[int]:
    return model.render_chat(build_messages(SYSTEM, spec.instructions, text))


def bench_model(
    path: Path, *, threads: int, rounds: int, max_tokens: int, gbnf: bool
) -> dict[str, Any]:
    progress = Progress(f"bench {path.name}")
    progress.stage(f"bench {path.name}: loading the model")
    try:
        model = ResidentModel(path, threads=threads, n_ctx=2048, n_batch=256)
    except BaseException:
        progress.close()
        raise
    rows: list[dict[str, Any]] = []
    # Per task: one warm-up run, then `rounds` runs of each decoder.
    runs_per_task = 1 + rounds * (3 if gbnf else 2)
    progress.stage(f"bench {path.name}", total=len(TASKS) * runs_per_task)
    try:
        for name, schema, text in TASKS:
            spec = schema_spec(schema)
            prompt = _prompt(model, spec, text)
            # The GBNF llama-cpp-python itself would use for this schema.
            grammar = LlamaGrammar.from_json_schema(json.dumps(spec.json_schema), verbose=False)
            gbnf_text = grammar._grammar  # noqa: SLF001 - no public accessor for the grammar text
            # Warm-up: fills the prompt cache and fixes the answer length for `free`.
            first, forced, masked = run_edgeagent(model, spec, prompt, max_tokens)
            progress.advance()
            n = first.tokens
            free: list[Sample] = []
            ours: list[Sample] = []
            theirs: list[Sample] = []
            for r in range(rounds):
                order = ["free", "ours", "gbnf"] if gbnf else ["free", "ours"]
                for kind in order[r % len(order) :] + order[: r % len(order)]:
                    if kind == "free":
                        free.append(run_free(model, prompt, n))
                    elif kind == "ours":
                        ours.append(run_edgeagent(model, spec, prompt, max_tokens)[0])
                    else:
                        theirs.append(run_gbnf(model, gbnf_text, prompt, max_tokens))
                    progress.advance()
            row: dict[str, Any] = {
                "task": name,
                "prompt_tokens": len(prompt),
                "answer_tokens": n,
                "forced_tokens": forced,
                "masked_steps": masked,
                "free_tps": round(tps(free), 2),
                "edgeagent_tps": round(tps(ours), 2),
                "edgeagent_ratio": round(tps(ours) / tps(free), 3),
                "edgeagent_ms_per_token_median": round(
                    statistics.median(s.decode_ms / max(s.tokens, 1) for s in ours), 2
                ),
                "free_ms_per_token_median": round(
                    statistics.median(s.decode_ms / max(s.tokens, 1) for s in free), 2
                ),
            }
            if gbnf:
                row |= {
                    "gbnf_tps": round(tps(theirs), 2),
                    "gbnf_ratio": round(tps(theirs) / tps(free), 3),
                }
            rows.append(row)
            progress.write(json.dumps(row) + "\n")
    finally:
        progress.close()
        model.close()
    total_free = sum(r["answer_tokens"] / r["free_tps"] for r in rows)
    total_ours = sum(r["answer_tokens"] / r["edgeagent_tps"] for r in rows)
    summary: dict[str, Any] = {
        "edgeagent_version": __version__,
        "model": path.name,
        "n_vocab": model.n_vocab,
        "threads": threads,
        "rounds": rounds,
        "tasks": rows,
        "edgeagent_ratio": round(total_free / total_ours, 3),
    }
    if gbnf:
        total_gbnf = sum(r["answer_tokens"] / r["gbnf_tps"] for r in rows)
        summary["gbnf_ratio"] = round(total_free / total_gbnf, 3)
    return summary


def to_markdown(results: list[dict[str, Any]]) -> str:
    columns = [
        "model", "vocab", "task", "answer tokens", "forced", "free tok/s",
        "edgeagent tok/s", "ratio", "GBNF tok/s", "GBNF ratio",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for res in results:
        lines.extend(
            "| " + " | ".join(str(cell) for cell in (
                res["model"], res["n_vocab"], row["task"], row["answer_tokens"],
                row["forced_tokens"], row["free_tps"], row["edgeagent_tps"],
                row["edgeagent_ratio"], row.get("gbnf_tps", "-"), row.get("gbnf_ratio", "-"),
            )) + " |"
            for row in res["tasks"]
        )  # fmt: skip
        total = [res["model"], "", "**all**", "", "", "", "", f"**{res['edgeagent_ratio']}**",
                 "", f"**{res.get('gbnf_ratio', '-')}**"]  # fmt: skip
        lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)


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
