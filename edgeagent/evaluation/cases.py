"""Eval cases: one JSON object per line, validated strictly when loaded.

A case is what a task would carry (``input`` or ``messages``, optionally the allowed
``actions`` or an inline ``schema``) plus what a right answer looks like (``expect``)
and labels for the report (``lang``, ``tags``). Unknown keys are errors, so a typo
(``"expcet"``) fails loudly with its line number instead of silently scoring nothing.

``expect`` is one of:

* ``{"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}`` — the action and
  the arguments that must match (listed arguments only; see `matching` for tolerances
  and alternatives per value);
* ``{"any_of": [{"action": "notify"}, {"action": "no_action"}]}`` — several answers are
  right, for cases that are genuinely ambiguous;
* ``{"output": {...}}`` — for schema cases: the fields (partial) the answer must have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeagent.evaluation.matching import check_expected


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ActionExpect(_Strict):
    """One right answer: an action and the arguments it must have (partially)."""

    action: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _matchers_ok(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_expected(value, "args")
        return value


class Expect(_Strict):
    action: str | None = Field(default=None, min_length=1)
    args: dict[str, Any] | None = None
    any_of: list[ActionExpect] | None = Field(default=None, min_length=2)
    output: Any = None

    @model_validator(mode="after")
    def _one_kind(self) -> Expect:
        kinds = [k for k in ("action", "any_of", "output") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("expect needs exactly one of action, any_of, output")
        if self.args is not None and self.action is None:
            raise ValueError("expect.args goes with expect.action")
        if self.output is not None:
            check_expected(self.output, "output")
        elif self.args is not None:
            check_expected(self.args, "args")
        return self

    @property
    def kind(self) -> Literal["action", "schema"]:
        return "schema" if self.output is not None else "action"

    def alternatives(self) -> list[ActionExpect]:
        """The right answers of an action case, in the order written."""
        if self.any_of is not None:
            return list(self.any_of)
        if self.action is not None:
            return [ActionExpect(action=self.action, args=self.args or {})]
        return []


class Case(_Strict):
    id: str = Field(min_length=1)
    input: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    expect: Expect
    actions: list[str] | None = Field(default=None, min_length=1)  # allowed subset
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    lang: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")
    tags: list[str] = Field(default_factory=list)
    note: str | None = None  # why the expectation is what it is; for readers only

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if (self.input is None) == (self.messages is None):
            raise ValueError("a case needs exactly one of input, messages")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("the last message must be from the user")
        if self.expect.kind == "schema" and self.actions is not None:
            raise ValueError("actions goes with an action expectation, not expect.output")
        if self.expect.kind == "action" and self.schema_ is not None:
            raise ValueError("an inline schema needs expect.output, not an action")
        if self.actions is not None:
            missing = {a.action for a in self.expect.alternatives()} - set(self.actions)
            if missing:
                raise ValueError(f"expected action(s) not in actions: {sorted(missing)}")
        return self

    @property
    def content(self) -> str | list[dict[str, str]]:
        """What the task carries: the input text, or the chat messages."""
        if self.input is not None:
            return self.input
        return [m.model_dump() for m in self.messages or []]


class CaseError(ValueError):
    """A case file that cannot be used; the message names the file and line."""


def parse_cases(lines: list[str], source: str) -> list[Case]:
    """Cases from JSONL text; blank lines and lines starting with // are skipped."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("//"):
            continue
        where = f"{source}:{number}"
        try:
            case = Case.model_validate(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CaseError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from exc
        except ValidationError as exc:
            raise CaseError(f"{where}: {_first_error(exc)}") from exc
        if case.id in seen:
            raise CaseError(f"{where}: id {case.id!r} already used on line {seen[case.id]}")
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise CaseError(f"{source}: no cases")
    return cases


def load_cases(path: Path) -> list[Case]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaseError(f"cannot read {path}: {exc}") from exc
    return parse_cases(text.splitlines(), str(path))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{message}{more}"
