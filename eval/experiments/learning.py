#!/usr/bin/env python3
"""Does learning from operators' answers help? Half A teaches, half B is measured.

    .venv/bin/python eval/experiments/learning.py --model MODEL.gguf --threads 1 \
        [--set greenhouse] [--k 3] [--out DIR]

1. The set's cases (eval/dev, greenhouse by default) are split in two halves by a hash
   of their id (deterministic, independent of file order): A and B.
2. Every case of A is answered by the model through the eval's runner (the daemon's
   contract, prompt and gate), as if `min_confidence = 1`: every answer naming a
   `dispatch = true` action is held for an operator. The operator's ruling
   (`ruling` below) goes through the learner's `record()`, the daemon's own path, into
   a fresh learned-examples store; the store is exported with the daemon's exporter.
3. B is answered twice: without learned examples, and with them (`edgeagent eval
   --learned-examples`'s picker: the k most similar per case).

Prints the table of docs/evaluation.md ("Learning from operators") and writes
`summary.json` to --out (figures only, no per-case answers).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edgeagent.config import ModelConfig
from edgeagent.evaluation.cases import Case
from edgeagent.evaluation.learned import LearnedPicker, load_learned
from edgeagent.evaluation.metrics import summarize
from edgeagent.evaluation.runner import Outcome, ShotPicker, SpecCache, run_sets
from edgeagent.evaluation.scoring import CaseScore, score
from edgeagent.evaluation.suite import EvalSet, load_suite
from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.engine import Engine
from edgeagent.inference.overflow import input_text
from edgeagent.service.holds.resolution import HoldResolution
from edgeagent.service.learning.export import case_lines
from edgeagent.service.learning.learner import Learner
from edgeagent.service.learning.store import LearnedStore

SUITE = Path(__file__).resolve().parents[1] / "dev" / "suite.toml"
OPERATOR = "eval-operator"


def half(case: Case) -> str:
    """A or B, from the case id alone."""
    return "AB"[hashlib.sha256(case.id.encode()).digest()[0] % 2]


def _concrete(expected: Any, given: Any) -> Any:
    """A value an operator would type for an expected value (an eval matcher or a literal)."""
    if not isinstance(expected, dict):
        return expected
    if "$approx" in expected:
        return expected["$approx"]
    if "$range" in expected:
        low, high = expected["$range"]
        middle = (low + high) / 2
        return int(middle) if isinstance(low, int) and isinstance(high, int) else middle
    if "$one_of" in expected:
        return _concrete(expected["$one_of"][0], given)
    if any(str(k).startswith("$") for k in expected):
        return given  # $contains, $regex, $any: the model's own value, if any
    return {k: _concrete(v, None) for k, v in expected.items()}


def ruling(  # noqa: PLR0911 - one return per kind of answer
    eval_set: EvalSet, case: Case, result: CaseScore, outcome: Outcome
) -> tuple[str | None, dict[str, Any] | None, str]:
    """(decision, operator's args, what happened) for one answer of half A.

    Nothing is held, so nothing ruled on, for: no valid answer, the nothing-to-do
    action (never held), a reply-only action (nothing to confirm). A held answer is
    confirmed when right, edited when only its arguments are wrong, and rejected
    otherwise: where nothing was to be done, and where another action was needed (the
    operator can only reject it, and the learner then learns nothing-to-do for that
    input: a wrong lesson, counted as such).
    """
    output = outcome.output if isinstance(outcome.output, dict) else None
    if outcome.error is not None or output is None:
        return None, None, "no answer"
    name, args = output.get("action"), output.get("args") or {}
    action = next((a for a in eval_set.catalog if a.name == name), None)
    if action is None or name == eval_set.no_action:
        return None, None, "nothing-to-do (never held)"
    if not action.dispatch:
        return None, None, "reply-only action (nothing to confirm)"
    if result.right:
        return "confirmed", args, "right"
    if result.action_right:
        expected = next(a for a in case.expect.alternatives() if a.action == name)
        edited = {**args, **{k: _concrete(v, args.get(k)) for k, v in expected.args.items()}}
        return "edited", edited, "right action, wrong arguments"
    if result.noop_allowed:
        return "rejected", None, "acted where nothing was to be done"
    return "rejected", None, "wrong action (learned as nothing to do: a wrong lesson)"


def answer(
    engine: Engine, eval_set: EvalSet, shots: ShotPicker | None, label: str
) -> list[tuple[Case, CaseScore]]:
    results = []
    for index, (_, case, outcome) in enumerate(
        run_sets(engine, [eval_set], max_tokens=engine.cfg.max_tokens, shots=shots)
    ):
        result = score(case, outcome, eval_set.name, eval_set.no_action)
        results.append((case, result))
        mark = "right" if result.right else (outcome.error or result.predicted)
        sys.stderr.write(f"{label} {index + 1}/{len(eval_set.cases)} {case.id}: {mark}\n")
        sys.stderr.flush()
    return results


def figures(results: list[tuple[Case, CaseScore]], no_action: str | None) -> dict[str, Any]:
    scores = [s for _, s in results]
    summary = summarize(scores, {scores[0].set_name: no_action} if scores else {})
    prompt = [s.outcome.prompt_tokens for s in scores if s.outcome.prompt_tokens]
    return {
        "action_and_args": summary.action_and_args.to_dict(),
        "false_actuation": summary.false_actuation.to_dict(),
        "false_dispatch": summary.false_dispatch.to_dict(),
        "missed_action": summary.missed_action.to_dict(),
        "errors": summary.errors,
        "mean_prompt_tokens": round(sum(prompt) / len(prompt), 1) if prompt else None,
    }


def teach(engine: Engine, half_a: EvalSet, store_dir: Path) -> tuple[Path, dict[str, Any], int]:
    """Answer half A, rule on each answer, learn through record(); the exported file."""
    settings = half_a.settings.model_copy(update={"learn": True})
    store = LearnedStore(store_dir / "learned.sqlite3", max_rows=settings.max_learned_examples)
    learner = Learner(store, actions=half_a.catalog, settings=settings)
    what: Counter[str] = Counter()
    wrong_lessons = 0
    try:
        for case, result in answer(engine, half_a, None, "A"):
            decision, final_args, why = ruling(half_a, case, result, result.outcome)
            what[f"{decision or 'not held'}: {why}"] += 1
            if decision is None:
                continue
            output = result.outcome.output
            future = learner.record(
                HoldResolution(
                    task_id=case.id,
                    text=input_text(case.content),
                    action=output["action"],
                    args=output.get("args") or {},
                    decision=decision,
                    final_args=final_args,
                    by=OPERATOR,
                    at=time.time(),
                )
            )
            if future is not None:
                future.result(10)
                wrong_lessons += "wrong lesson" in why
        exported = store_dir / "learned.jsonl"
        with exported.open("w", encoding="utf-8") as out:
            out.writelines(case_lines(store.recent()))
        learned = store.count()
    finally:
        learner.close()
    return exported, {"rulings": dict(what), "learned": learned}, wrong_lessons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", default="greenhouse")
    parser.add_argument("--k", type=int, default=3, help="learned examples per case")
    parser.add_argument("--out", type=Path, help="write summary.json here")
    args = parser.parse_args()
    eval_set = next(s for s in load_suite(SUITE) if s.name == args.set)
    half_a = dataclasses.replace(eval_set, cases=[c for c in eval_set.cases if half(c) == "A"])
    half_b = dataclasses.replace(eval_set, cases=[c for c in eval_set.cases if half(c) == "B"])
    engine = Engine(ModelConfig(path=args.model, threads=args.threads))
    engine.load()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            exported, taught, wrong = teach(engine, half_a, Path(tmp))
            shots = load_learned(exported)
            picker = LearnedPicker(shots, args.k)
            shown = [len(picker(c, _spec(half_b, c), half_b)) for c in half_b.cases]
            plain = answer(engine, half_b, None, "B-before")
            taught_b = answer(engine, half_b, picker, "B-after")
            before = figures(plain, eval_set.no_action)
            after = figures(taught_b, eval_set.no_action)
    finally:
        engine.close()
    summary = {
        "model": args.model.name,
        "set": args.set,
        "threads": args.threads,
        "k": args.k,
        "cases": {"A": len(half_a.cases), "B": len(half_b.cases)},
        "taught": taught | {"wrong_lessons": wrong},
        "examples_shown_per_case": round(sum(shown) / len(shown), 2) if shown else 0,
        "before": before,
        "after": after,
        # The same cases paired: wrong before and right after, and the other way round.
        "fixed": sum(
            not b.right and a.right for (_, b), (_, a) in zip(plain, taught_b, strict=True)
        ),
        "broken": sum(
            b.right and not a.right for (_, b), (_, a) in zip(plain, taught_b, strict=True)
        ),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    text = json.dumps(summary, ensure_ascii=False, indent=1)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(text + "\n", encoding="utf-8")
    return 0


def _spec(eval_set: EvalSet, case: Case) -> OutputSpec:
    return SpecCache().for_case(case, eval_set)


if __name__ == "__main__":
    sys.exit(main())
