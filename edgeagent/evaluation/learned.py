"""`edgeagent eval --learned-examples FILE`: show learned examples with each action case.

FILE is JSONL in the case format (what `edgeagent examples export` writes): each case
with an `input` and one expected `action` becomes a learned example, in file order
(newest first, as exported). Each action case of the run is then answered with the
`k` examples most like its input that its set's catalog accepts, chosen and shown as
the daemon does with `[catalog] learn = true` (inference/shots.py).
"""

from __future__ import annotations

from pathlib import Path

from edgeagent.evaluation.cases import Case, load_cases
from edgeagent.evaluation.suite import EvalSet
from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.overflow import input_text
from edgeagent.inference.shots import Catalog, Shot, choose, fits


def _literal(value: object) -> bool:
    """No eval matcher inside (an object with `$` keys): an answer can be built from it."""
    if isinstance(value, dict):
        return not any(str(k).startswith("$") for k in value) and all(
            _literal(v) for v in value.values()
        )
    if isinstance(value, list):
        return all(_literal(v) for v in value)
    return True


def load_learned(path: Path) -> list[Shot]:
    """The learned examples of a case file; cases that cannot be one are skipped
    (messages, several right answers, matchers, longer than an example may be)."""
    shots = []
    for case in load_cases(path):
        expect = case.expect
        if case.input is None or expect.action is None or not _literal(expect.args or {}):
            continue
        shot = Shot(case.input, expect.action, dict(expect.args or {}))
        if fits(shot.text, shot.action, shot.args) is None:
            shots.append(shot)
    return shots


class LearnedPicker:
    """The examples for one case: those its set's catalog accepts, the k most similar."""

    def __init__(self, shots: list[Shot], k: int) -> None:
        self.shots = shots
        self.k = k
        self._catalogs: dict[str, Catalog] = {}

    def __call__(self, case: Case, spec: OutputSpec, eval_set: EvalSet) -> tuple[Shot, ...]:
        if spec.kind != "action":
            return ()
        catalog = self._catalogs.get(eval_set.name)
        if catalog is None:
            catalog = self._catalogs[eval_set.name] = Catalog(eval_set.catalog)
        accepted = [s for s in self.shots if catalog.refused(s.action, s.args) is None]
        return choose(input_text(case.content), accepted, self.k, allowed=spec.allowed_actions)


def learned_picker(path: Path | None, k: int) -> LearnedPicker | None:
    """`--learned-examples PATH --learned-per-task K`; None without a path."""
    return None if path is None else LearnedPicker(load_learned(path), k)
