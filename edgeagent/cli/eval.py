"""`edgeagent eval`: run graded cases through the model and report how often it is right.

    edgeagent eval eval/dev/suite.toml --model qwen.gguf --model smollm2.gguf --baseline llama-cpp
    edgeagent eval --config /etc/edgeagent/config.toml my-cases.jsonl --failures

A path is a suite manifest (.toml: sets of cases, each with its catalog or schema) or
a cases file (.jsonl) answered against `--catalog`, or the config's own catalog. The
models are `--model` files, or the config's `[model] path`; each runs in turn (never
two at once: they would share the same cores). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from edgeagent.config import DEFAULT_CONFIG_PATH, Config, ModelConfig, load_config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.evaluation.cases import CaseError, load_cases
from edgeagent.evaluation.floors import TARGET_FALSE_ACTUATION, propose
from edgeagent.evaluation.learned import learned_picker
from edgeagent.evaluation.metrics import Summary, summarize
from edgeagent.evaluation.report import case_record, render_json, render_text
from edgeagent.evaluation.runner import Answerer, ShotPicker, run_sets
from edgeagent.evaluation.scoring import CaseScore, score
from edgeagent.evaluation.suite import EvalSet, load_catalog_settings, load_suite, make_set, select

EXIT_OK, EXIT_BELOW, EXIT_USAGE = 0, 1, 2


class System(Answerer, Protocol):
    """An answerer with a lifecycle: the Engine, or the llama-cpp baseline."""

    def load(self) -> None: ...
    def close(self) -> object: ...


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `eval` subcommand to the top-level parser."""
    p = sub.add_parser("eval", help="score answers against graded cases (accuracy, latency)")
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="suite .toml or cases .jsonl"
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        help=f"config (model, system prompt, catalog); default {DEFAULT_CONFIG_PATH} when needed",
    )
    p.add_argument(
        "--catalog", type=Path, help="catalog for .jsonl files: a config or an [[actions]] fragment"
    )
    p.add_argument("--schema", type=Path, help="JSON Schema for the schema cases of .jsonl files")
    p.add_argument(
        "--no-action", help='the "nothing to do" action of .jsonl files (default: no_action)'
    )
    p.add_argument("--model", type=Path, action="append", help="GGUF to evaluate (repeatable)")
    p.add_argument(
        "--baseline",
        choices=["llama-cpp"],
        help="also run llama-cpp-python's JSON-schema mode on the first model",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: the config's)")
    p.add_argument(
        "--max-instruction-score",
        type=probability,
        metavar="P",
        help="hold at this instruction-screen score in every set (default: each catalog's)",
    )
    p.add_argument("--n-ctx", type=int, help="context size (default: the config's)")
    p.add_argument("--max-tokens", type=int, help="answer limit of cases that set none")
    p.add_argument(
        "--set", action="append", dest="sets", metavar="NAME", help="only this set (repeatable)"
    )
    p.add_argument("--limit", type=int, help="at most this many cases per set")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--json-file", type=Path, help="also write the JSON report to this file")
    p.add_argument("--details", type=Path, help="write every case's answer and score here (JSONL)")
    p.add_argument("--failures", action="store_true", help="list the wrong answers in the report")
    p.add_argument(
        "--fail-under",
        type=float,
        metavar="RATE",
        help="exit 1 if a system's share of right answers is below RATE (0-1)",
    )
    p.add_argument(
        "--learned-examples",
        type=Path,
        metavar="FILE",
        help="show each action case the most similar learned examples of FILE (cases JSONL, "
        "as `edgeagent examples export` writes), as the daemon does with [catalog] learn",
    )
    p.add_argument(
        "--learned-per-task", type=int, default=3, metavar="K", help="per case (default 3, max 8)"
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="propose floors (min_confidence, min_act_confidence) and the screen ceiling "
        "(max_instruction_score) for each catalog (TOML)",
    )
    p.add_argument(
        "--target-false-actuation",
        type=float,
        default=TARGET_FALSE_ACTUATION,
        metavar="RATE",
        help="--calibrate: the share of no-op cases that may dispatch an action (default 0.03)",
    )
    p.set_defaults(func=run)


def probability(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def _config(args: argparse.Namespace, cache: dict[str, Config]) -> Config:
    if "cfg" not in cache:
        cache["cfg"] = load_config(args.config or DEFAULT_CONFIG_PATH)
    return cache["cfg"]


def load_sets(args: argparse.Namespace, cache: dict[str, Config]) -> list[EvalSet]:
    sets: list[EvalSet] = []
    for path in args.paths:
        if path.suffix == ".toml":
            sets.extend(load_suite(path))
            continue
        catalog, settings = load_catalog_settings(args.catalog) if args.catalog else (None, None)
        if catalog is None and args.schema is None:
            cfg = _config(args, cache)
            catalog, settings = list(cfg.actions), cfg.catalog
        schema = json.loads(args.schema.read_text(encoding="utf-8")) if args.schema else None
        cases = load_cases(path)
        where = str(path)
        no_action = args.no_action
        sets.append(
            make_set(
                path.stem,
                cases,
                catalog or [],
                no_action=no_action,
                schema=schema,
                where=where,
                settings=settings,
            )
        )
    if len({s.name for s in sets}) != len(sets):
        raise CaseError("two sets have the same name; rename a file or a suite set")
    if args.max_instruction_score is not None:  # the model's, not the catalog's, figure
        update = {"max_instruction_score": args.max_instruction_score}
        sets = [dataclasses.replace(s, settings=s.settings.model_copy(update=update)) for s in sets]
    return select(sets, args.sets, args.limit)


def model_configs(args: argparse.Namespace, cache: dict[str, Config]) -> list[ModelConfig]:
    base: ModelConfig | None = None
    if args.config is not None or not args.model:
        base = _config(args, cache).model
    paths = args.model or [base.path if base else None]
    overrides = {
        k: v for k, v in (("threads", args.threads), ("n_ctx", args.n_ctx)) if v is not None
    }
    configs = []
    for path in paths:
        data = base.model_dump() if base else {}
        configs.append(ModelConfig.model_validate({**data, "path": path, **overrides}))
    return configs


def _systems(
    args: argparse.Namespace, models: list[ModelConfig]
) -> list[tuple[str, Callable[[], System]]]:
    # Imported here so that loading and checking cases never needs llama.cpp.
    from edgeagent.evaluation.baseline import LlamaCppBaseline  # noqa: PLC0415
    from edgeagent.inference.engine import Engine  # noqa: PLC0415

    systems: list[tuple[str, Callable[[], System]]] = []
    for index, cfg in enumerate(models):
        name = short_name(cfg.path)
        systems.append((f"{name} edgeagent", lambda cfg=cfg: Engine(cfg)))  # type: ignore[misc]
        # The baseline is a yardstick for the model one means to deploy: the first one.
        if args.baseline == "llama-cpp" and index == 0:
            systems.append((f"{name} llama-cpp", lambda cfg=cfg: LlamaCppBaseline(cfg)))  # type: ignore[misc]
    return systems


def short_name(path: Path) -> str:
    """A column label for a model file: "qwen2.5-coder-0.5b" for
    qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (the tables show several side by side)."""
    stem = path.name.removesuffix(".gguf")
    cut = stem.lower().find("-instruct")
    return stem[:cut] if cut > 0 else stem


class _Progress:
    """One status line on a terminal (stderr); silent when stderr is piped or a file."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.enabled = stream.isatty()
        self.done = self.right = 0

    def update(self, score: CaseScore) -> None:
        self.done += 1
        self.right += score.right
        if self.enabled:
            where = f"{score.set_name}/{score.case_id}"
            line = f"{self.label}: {self.done}/{self.total} ({self.right} right) {where}"
            # \r rewrites the line in place; ESC[K clears what a longer line left behind.
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def evaluate(
    label: str,
    system: System,
    sets: list[EvalSet],
    max_tokens: int,
    details: TextIO | None,
    *,
    shots: ShotPicker | None = None,
) -> list[CaseScore]:
    progress = _Progress(label, sum(len(s.cases) for s in sets))
    scores = []
    system.load()
    try:
        for eval_set, case, outcome in run_sets(system, sets, max_tokens=max_tokens, shots=shots):
            result = score(case, outcome, eval_set.name, eval_set.no_action)
            scores.append(result)
            progress.update(result)
            if details is not None:
                details.write(json.dumps(case_record(label, result), ensure_ascii=False) + "\n")
                details.flush()
    finally:
        progress.finish()
        system.close()
    return scores


def _meta(
    args: argparse.Namespace, sets: list[EvalSet], models: list[ModelConfig]
) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
        "models": [str(m.path) for m in models],
        "threads": models[0].threads if models else None,
        "sets": {s.name: len(s.cases) for s in sets},
        "baseline": args.baseline,
        "learned_examples": args.learned_examples and str(args.learned_examples),
    }


def floors_toml(
    all_scores: Mapping[str, Sequence[CaseScore]], sets: list[EvalSet], target: float
) -> str:
    """--calibrate: the proposed floors of every catalog, per system, as TOML."""
    parts = []
    for label, scores in all_scores.items():
        parts.append(f"\n# Proposed gate floors for {label} (false actuation <= {target:.0%})\n")
        for eval_set in sets:
            mine = [s for s in scores if s.set_name == eval_set.name and s.kind == "action"]
            if mine:
                parts.append(propose(eval_set.name, mine, target).toml() + "\n")
    return "".join(parts)


def run(args: argparse.Namespace) -> int:
    cache: dict[str, Config] = {}
    try:
        sets = load_sets(args, cache)
        models = model_configs(args, cache)
        shots = learned_picker(args.learned_examples, args.learned_per_task)
    except (CaseError, EdgeAgentError, OSError, json.JSONDecodeError) as exc:
        message = exc.message if isinstance(exc, EdgeAgentError) else str(exc)
        error = {"code": str(ErrorCode.INVALID_REQUEST), "message": message}
        sys.stdout.write(json.dumps({"error": error}, ensure_ascii=False) + "\n")
        return EXIT_USAGE
    max_tokens = args.max_tokens or models[0].max_tokens
    results: list[tuple[str, Summary]] = []
    all_scores: dict[str, Sequence[CaseScore]] = {}
    details = args.details.open("w", encoding="utf-8") if args.details else None
    try:
        for label, make in _systems(args, models):
            scores = evaluate(label, make(), sets, max_tokens, details, shots=shots)
            all_scores[label] = scores
            results.append((label, summarize(scores, {s.name: s.no_action for s in sets})))
    finally:
        if details is not None:
            details.close()
    document = render_json(results, _meta(args, sets, models))
    if args.json_file:
        args.json_file.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    else:
        sys.stdout.write(render_text(results, all_scores if args.failures else None))
    if args.calibrate:
        sys.stdout.write(floors_toml(all_scores, sets, args.target_false_actuation))
    floor = args.fail_under
    below = [s for _, s in results if floor is not None and (s.right.value or 0) < floor]
    return EXIT_BELOW if below else EXIT_OK
