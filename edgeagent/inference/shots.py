"""Learned examples shown with a task: the few most like its input, as example turns.

A learned example is an input an operator ruled on and the answer that was right for
it (service/learning/). The `k` most similar to the task's input go into the prompt as
chat turns between the system message and the task: a user turn with the example's
input, marked as data like any input (`prompt.mark_data`), and an assistant turn with
the right answer. They come after the catalog, so the cached prefix (the system
message: inference/prefix_cache.py `FixedParts`) is the same whatever was learned and
whoever asks; the example turns are evaluated afresh with every task, like its input.

Similarity is lexical: the overlap of the two texts' word sets (Jaccard), CJK
characters counted one by one. It costs microseconds per example, and the input is cut
to `SIMILARITY_CHARS` first, so choosing among at most a few hundred examples is
bounded work.

Bounded cost per task: an example's input is at most `TEXT_MAX_CHARS` characters (what
the operator was shown of it) and `TEXT_MAX_BYTES` UTF-8 bytes, its answer at most
`ANSWER_MAX_BYTES`, and all example turns of one task together at most
`TASK_MAX_BYTES`. The models' tokenizers are byte-level BPE (every content token is at
least one byte), so the example turns cost at most TASK_MAX_BYTES tokens of content plus
the turn and data markers (about 20 tokens per example, `MAX_SHOTS` at most): about
1,400 tokens in the worst case, about 48 per example on ordinary sensor reports
(docs/evaluation.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from edgeagent.config import ActionConfig
from edgeagent.config.catalog import MAX_LEARNED_PER_TASK
from edgeagent.inference.prompt import Message

TEXT_MAX_CHARS = 200  # the held message shows the operator the input's first 200 characters
TEXT_MAX_BYTES = 400
ANSWER_MAX_BYTES = 256
TASK_MAX_BYTES = 1200
MAX_SHOTS = MAX_LEARNED_PER_TASK  # `[catalog] learned_examples_per_task` at most
SIMILARITY_CHARS = 1000  # of the task's input, for choosing
# CJK characters one by one (a run of them has no spaces), other words whole.
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+")


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Shot:
    """One example turn pair: an input and the answer that was right for it."""

    text: str
    action: str
    args: dict[str, Any]

    def answer(self) -> str:
        return compact({"action": self.action, "args": self.args})

    def cost(self) -> int:
        """UTF-8 bytes of its input and answer: an upper bound of its content tokens."""
        return len(self.text.encode()) + len(self.answer().encode())


def fits(text: str, action: str, args: dict[str, Any]) -> str | None:
    """Why an example cannot be shown (None: it can): too long, or empty."""
    if not text.strip():
        return "the input is empty"
    if len(text) > TEXT_MAX_CHARS or len(text.encode()) > TEXT_MAX_BYTES:
        return f"the input is longer than the {TEXT_MAX_CHARS} characters the operator saw"
    if len(Shot(text, action, args).answer().encode()) > ANSWER_MAX_BYTES:
        return f"the answer is longer than {ANSWER_MAX_BYTES} bytes"
    return None


def words(text: str) -> frozenset[str]:
    """The text's word set, for similarity (at most SIMILARITY_CHARS of it)."""
    return frozenset(w.casefold() for w in _WORD.findall(text[:SIMILARITY_CHARS]))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard overlap of two word sets, 0 (nothing shared) to 1 (the same words)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def choose(
    text: str,
    candidates: Iterable[Shot],
    k: int,
    *,
    allowed: Sequence[str] | None = None,
) -> tuple[Shot, ...]:
    """The `k` candidates most like `text`, most similar first, within TASK_MAX_BYTES.

    Candidates come newest first; among equally similar ones the newer wins, and an
    input seen again counts once (its newest answer). A candidate that shares no word
    with the text is never chosen, nor one whose action is not `allowed`, nor one that
    does not `fit`.
    """
    if k <= 0:
        return ()
    mine = words(text)
    scored: list[tuple[float, int, Shot]] = []
    seen: set[str] = set()
    for order, shot in enumerate(candidates):
        if shot.text in seen or (allowed is not None and shot.action not in allowed):
            continue
        seen.add(shot.text)
        if fits(shot.text, shot.action, shot.args) is not None:
            continue
        score = similarity(mine, words(shot.text))
        if score > 0.0:
            scored.append((-score, order, shot))
    scored.sort(key=lambda item: (item[0], item[1]))
    chosen: list[Shot] = []
    spent = 0
    for _, _, shot in scored:
        if len(chosen) >= min(k, MAX_SHOTS):
            break
        if spent + shot.cost() > TASK_MAX_BYTES:
            continue
        chosen.append(shot)
        spent += shot.cost()
    return tuple(chosen)


def shot_messages(shots: Sequence[Shot]) -> list[Message]:
    """The example turns, least similar first so the most similar is nearest the task.

    The user turns are raw text here: `prompt.build_messages` marks them as data like
    the task's own input.
    """
    turns: list[Message] = []
    for shot in reversed(shots):
        turns.append({"role": "user", "content": shot.text})
        turns.append({"role": "assistant", "content": shot.answer()})
    return turns


class Catalog:
    """The catalog's actions with a compiled argument validator each (built once per
    config: checking a row is then microseconds, a few hundred rows per task)."""

    def __init__(self, actions: Sequence[ActionConfig]) -> None:
        self.actions = tuple(actions)
        self._validators: dict[str, Any] = {}
        for action in self.actions:
            try:
                cls = jsonschema.validators.validator_for(action.schema_)
                cls.check_schema(action.schema_)
                self._validators[action.name] = cls(action.schema_)
            except jsonschema.SchemaError:
                continue  # refused at compile with its own message; nothing fits it here

    def refused(self, action: str, args: dict[str, Any]) -> str | None:
        """Why the catalog would not accept `action` with `args` now (None: it would)."""
        validator = self._validators.get(action)
        if validator is None:
            return f"{action} is not in the catalog"
        error = jsonschema.exceptions.best_match(validator.iter_errors(args))
        if error is not None:
            return f"the arguments do not fit {action}'s schema: {error.message}"
        return None
