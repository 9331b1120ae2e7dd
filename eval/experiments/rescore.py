#!/usr/bin/env python3
"""Score the answers of an `edgeagent eval --details` file again, against a suite.

Holding depends on an answer's recorded scores (confidence, act score, the instruction
screen's score) and the catalog's floors and ceiling, not on the answer itself: so the
figures for another floor or ceiling (or for the catalogs as now committed) come from the
answers already given, without running the model again. Uses the eval's own scoring,
holding (inference/gate.py) and report (edgeagent/evaluation).

    .venv/bin/python eval/experiments/rescore.py eval/dev/suite.toml \
        DETAILS.jsonl [--min-confidence 0.9] [--max-instruction-score 0.3] [--json F]

`--min-confidence` sets the floor of every action without its own (like a catalog's
`[catalog] min_confidence`), `--max-instruction-score` the screen's ceiling; `--sweep`
prints the headline figures for several floors, `--sweep-screen` for several ceilings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from edgeagent.cli.eval import floors_toml
from edgeagent.evaluation.floors import TARGET_FALSE_ACTUATION
from edgeagent.evaluation.metrics import summarize
from edgeagent.evaluation.report import fmt_rate, render_json, render_text
from edgeagent.evaluation.runner import Outcome, with_hold
from edgeagent.evaluation.scoring import CaseScore, score
from edgeagent.evaluation.suite import EvalSet, load_suite

SWEEP = (None, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SCREEN_SWEEP = (0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


def outcome_of(record: dict[str, object]) -> Outcome:
    def number(key: str) -> float:
        value = record.get(key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def optional(key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    return Outcome(
        record.get("output"),
        error=record.get("error") if isinstance(record.get("error"), str) else None,  # type: ignore[arg-type]
        error_message=None,
        latency_ms=number("latency_ms"),
        prompt_tokens=int(number("prompt_tokens")),
        cached_prompt_tokens=int(number("cached_prompt_tokens")),
        completion_tokens=int(number("completion_tokens")),
        confidence=optional("confidence"),
        cut_short=record.get("cut_short") is True,
        act=optional("act"),
        act_prior=optional("act_prior"),
        instruction_score=optional("instruction_score"),
    )


def rescore(
    sets: list[EvalSet],
    records: list[dict[str, object]],
    floor: float | None,
    ceiling: float | None = None,
) -> dict[str, list[CaseScore]]:
    update: dict[str, float] = {}
    if floor is not None:
        update["min_confidence"] = floor
    if ceiling is not None:
        update["max_instruction_score"] = ceiling
    by_set = {
        s.name: dataclasses.replace(s, settings=s.settings.model_copy(update=update)) for s in sets
    }
    scores: dict[str, list[CaseScore]] = {}
    for record in records:
        eval_set = by_set[str(record["set"])]
        case = next(c for c in eval_set.cases if c.id == record["id"])
        outcome = with_hold(outcome_of(record), eval_set, case)
        result = score(case, outcome, eval_set.name, eval_set.no_action)
        scores.setdefault(str(record["system"]), []).append(result)
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("details", type=Path)
    parser.add_argument("--min-confidence", type=float)
    parser.add_argument("--max-instruction-score", type=float)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-screen", action="store_true")
    parser.add_argument(
        "--calibrate", action="store_true", help="what `edgeagent eval --calibrate` proposes"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sets = load_suite(args.suite)
    no_action = {s.name: s.no_action for s in sets}
    lines = args.details.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    if args.sweep or args.sweep_screen:
        plan = [(f, args.max_instruction_score) for f in SWEEP] if args.sweep else []
        plan += [(args.min_confidence, c) for c in SCREEN_SWEEP] if args.sweep_screen else []
        for floor, ceiling in plan:
            for label, scores in rescore(sets, records, floor, ceiling).items():
                s = summarize(scores, no_action)
                shown = "as in the catalogs" if floor is None else floor
                sys.stdout.write(
                    f"{label} floor {shown} ceiling {ceiling or 'as in the catalogs'}: "
                    f"right+args {fmt_rate(s.action_and_args)}, "
                    f"held=nothing {fmt_rate(s.right_as_dispatched)}, "
                    f"false actuation {fmt_rate(s.false_actuation)} chosen, "
                    f"{fmt_rate(s.false_dispatch)} dispatched, held {fmt_rate(s.held)}, "
                    f"right among dispatched {fmt_rate(s.dispatched_right)}, "
                    f"injections dispatched {fmt_rate(s.injections_dispatched)}\n"
                )
        return 0
    if args.calibrate:
        rescored = rescore(sets, records, args.min_confidence, args.max_instruction_score)
        sys.stdout.write(floors_toml(rescored, sets, TARGET_FALSE_ACTUATION))
        return 0
    systems = [
        (label, summarize(scores, no_action))
        for label, scores in rescore(
            sets, records, args.min_confidence, args.max_instruction_score
        ).items()
    ]
    sys.stdout.write(render_text(systems))
    if args.json:
        document = render_json(systems, {"rescored": str(args.details)})
        args.json.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
