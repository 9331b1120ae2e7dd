"""Learned examples as eval cases: the JSONL `edgeagent eval` reads (evaluation/cases.py).

One case per example, newest first: `{"id": "learned-<row id>", "input": TEXT,
"expect": {"action", "args"}, "tags": ["learned", DECISION], "note": "... by NAME at
TIME"}`. The same file feeds `edgeagent eval --learned-examples FILE` (shown as example
turns) or is itself a set of cases (`edgeagent eval FILE --catalog ...`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from typing import Any

from edgeagent.service.learning.store import LearnedExample


def _has_matcher_key(value: Any) -> bool:
    """An object key starting with `$` would read as an eval matcher (evaluation/matching)."""
    if isinstance(value, dict):
        return any(str(k).startswith("$") or _has_matcher_key(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_matcher_key(v) for v in value)
    return False


def as_case(example: LearnedExample) -> dict[str, Any] | None:
    """The eval case of one example; None when its arguments cannot be written as one."""
    if _has_matcher_key(example.args):
        return None
    when = dt.datetime.fromtimestamp(example.at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    who = example.by if example.by is not None else "nobody"
    return {
        "id": f"learned-{example.id}",
        "input": example.text,
        "expect": {"action": example.action, "args": example.args},
        "tags": ["learned", example.decision],
        "note": f"{example.decision} by {who} at {when} (task {example.task_id})",
    }


def case_lines(examples: Iterable[LearnedExample]) -> Iterator[str]:
    """JSONL lines (with their newline) of every example that can be a case."""
    for example in examples:
        case = as_case(example)
        if case is not None:
            yield json.dumps(case, ensure_ascii=False) + "\n"
