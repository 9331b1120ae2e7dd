"""Tasks whose input does not fit the context budget: truncate, chunk (map-reduce), reject.

The plan (which tokens to keep, where to split) comes from `governor.plan_overflow`;
this module runs it. Only the task's input text is cut or split (`input`, or the
last user message of `messages`); the system prompt, schema and `max_tokens` are kept
whole in every run.

chunk is map-reduce: the task runs once per chunk with the same output contract,
then once more over the partial answers ("combine"), which is itself chunked again
if the partial answers are too long together.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.governor import OverflowPolicy, plan_overflow
from edgeagent.prompt import Message
from edgeagent.schema import OutputSpec

if TYPE_CHECKING:
    from edgeagent.engine import Answer, Task

MARKER = "\n[...]\n"  # stands where truncate cut the input out
# Chat templates add a few tokens around the input that tokenizing it alone misses.
_SAFETY_TOKENS = 16
_MAX_COMBINE_DEPTH = 3
_COMBINE_INTRO = (
    "The input was too long to read at once, so it was split into {n} consecutive parts "
    "and each part was answered on its own. Combine these partial answers, in order, "
    "into one answer for the whole input:\n"
)


class Runner(Protocol):
    """What overflow handling needs from the engine (inference thread only)."""

    @property
    def n_ctx(self) -> int: ...
    def prompt_tokens(self, spec: OutputSpec, content: str | Sequence[Message]) -> list[int]: ...
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def run_once(self, task: Task, content: str | Sequence[Message]) -> Answer: ...


def input_text(content: str | Sequence[Message]) -> str:
    if isinstance(content, str):
        return content
    return content[-1]["content"]  # build_messages requires the last one to be the user's


def with_input(content: str | Sequence[Message], text: str) -> str | list[Message]:
    if isinstance(content, str):
        return text
    return [*content[:-1], {"role": content[-1]["role"], "content": text}]


def answer_within_budget(runner: Runner, task: Task, depth: int = 0) -> Answer:
    budget = runner.n_ctx
    prompt_len = len(runner.prompt_tokens(task.spec, task.content))
    if prompt_len + task.max_tokens <= budget:
        return runner.run_once(task, task.content)
    tokens = runner.tokenize(input_text(task.content))
    fixed = max(prompt_len - len(tokens), 0) + _SAFETY_TOKENS
    plan = plan_overflow(
        tokens,
        fixed,
        task.max_tokens,
        budget,
        OverflowPolicy(task.overflow),
        marker_tokens=runner.tokenize(MARKER),
    )
    if plan.policy is OverflowPolicy.TRUNCATE:
        cut = with_input(task.content, runner.detokenize(plan.tokens))
        answer = runner.run_once(task, cut)
        return dataclasses.replace(answer, truncated=plan.truncated)
    # CHUNK: map over the parts, then reduce.
    partials = [
        runner.run_once(task, with_input(task.content, runner.detokenize(part)))
        for part in plan.chunk_tokens()
    ]
    if depth >= _MAX_COMBINE_DEPTH:
        raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "partial answers do not fit to be combined")
    combine_text = _COMBINE_INTRO.format(n=len(partials)) + "\n".join(
        json.dumps(p.output, ensure_ascii=False) for p in partials
    )
    combine = dataclasses.replace(task, content=with_input(task.content, combine_text))
    final = answer_within_budget(runner, combine, depth + 1)
    runs = [*partials, final]
    return dataclasses.replace(
        final,
        prompt_tokens=sum(a.prompt_tokens for a in runs),
        cached_prompt_tokens=sum(a.cached_prompt_tokens for a in runs),
        completion_tokens=sum(a.completion_tokens for a in runs),
        prompt_ms=sum(a.prompt_ms for a in runs),
        decode_ms=sum(a.decode_ms for a in runs),
        truncated=sum(a.truncated for a in runs),
        chunks=len(partials),
    )
