"""Tasks whose input does not fit the context budget: truncate, chunk (map-reduce), reject.

`plan_overflow` decides which tokens to keep and where to split (pure arithmetic on
token lists); `answer_within_budget` runs the plan with the task's runner (runner.py). Only the
task's input text is cut or split (`input`, or the last user message of `messages`);
the system prompt, schema and `max_tokens` are kept whole in every run.

chunk is map-reduce: the task runs once per chunk with the same output contract,
then once more over the partial answers ("combine"), which is itself chunked again
if the partial answers are too long together.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.prompt import Message
from edgeagent.inference.shots import Shot
from edgeagent.inference.task import Answer, Task
from edgeagent.protocol.overflow_policy import OverflowPolicy

MARKER = "\n[...]\n"  # stands where truncate cut the input out
# Chat templates add a few tokens around the input that tokenizing it alone misses.
_SAFETY_TOKENS = 16
_MAX_COMBINE_DEPTH = 3
_COMBINE_INTRO = (
    "The input was too long to read at once, so it was split into {n} consecutive parts "
    "and each part was answered on its own. Combine these partial answers, in order, "
    "into one answer for the whole input:\n"
)


class Budget(Protocol):
    """What overflow handling measures with (runner.Runner)."""

    @property
    def n_ctx(self) -> int: ...
    def prompt(
        self, spec: OutputSpec, content: str | Sequence[Message], shots: Sequence[Shot] = ()
    ) -> list[int]: ...
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...


# One model run of the task over this content (no overflow policy): Runner.run.
RunOnce = Callable[[Task, str | Sequence[Message]], Answer]


def input_text(content: str | Sequence[Message]) -> str:
    if isinstance(content, str):
        return content
    return content[-1]["content"]  # build_messages requires the last one to be the user's


def with_input(content: str | Sequence[Message], text: str) -> str | list[Message]:
    if isinstance(content, str):
        return text
    return [*content[:-1], {"role": content[-1]["role"], "content": text}]


def answer_within_budget(runner: Budget, task: Task, run: RunOnce, depth: int = 0) -> Answer:
    budget = runner.n_ctx
    if task.shots:
        with_shots = len(runner.prompt(task.spec, task.content, task.shots))
        if with_shots + task.max_tokens <= budget:
            return run(task, task.content)
        # Learned examples are a help, never a reason to cut or split the input.
        task = dataclasses.replace(task, shots=())
    prompt_len = len(runner.prompt(task.spec, task.content))
    if prompt_len + task.max_tokens <= budget:
        return run(task, task.content)
    tokens = runner.tokenize(input_text(task.content))
    fixed = max(prompt_len - len(tokens), 0) + _SAFETY_TOKENS
    plan = plan_overflow(
        tokens,
        fixed,
        task.max_tokens,
        budget,
        task.overflow,
        marker_tokens=runner.tokenize(MARKER),
    )
    if plan.policy is OverflowPolicy.TRUNCATE:
        cut = with_input(task.content, runner.detokenize(plan.tokens))
        answer = run(task, cut)
        return dataclasses.replace(answer, truncated=plan.truncated)
    # CHUNK: map over the parts, then reduce.
    partials = [
        run(task, with_input(task.content, runner.detokenize(part))) for part in plan.chunk_tokens()
    ]
    if depth >= _MAX_COMBINE_DEPTH:
        raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "partial answers do not fit to be combined")
    combine_text = _COMBINE_INTRO.format(n=len(partials)) + "\n".join(
        json.dumps(p.output, ensure_ascii=False) for p in partials
    )
    combine = dataclasses.replace(task, content=with_input(task.content, combine_text))
    final = answer_within_budget(runner, combine, run, depth + 1)
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
        # confidence: the final run's (it chose the action); cut short if any run was.
        cut_short=any(a.cut_short for a in runs),
        # The screen's highest score of any run: an injection in one chunk cannot hide
        # behind a combine run that reads only the partial answers.
        instruction_score=max(
            (a.instruction_score for a in runs if a.instruction_score is not None), default=None
        ),
        screen_ms=sum(a.screen_ms for a in runs),
    )


# -- planning ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OverflowPlan:
    """How to run a task within `budget` context tokens.

    `tokens` is the input to use when the task runs once (the original input, or the
    truncated one). For CHUNK, `chunks` are [start, end) ranges into the original input;
    otherwise there is one chunk covering `tokens`.
    """

    policy: OverflowPolicy  # the policy asked for
    budget: int  # context tokens available (the current n_ctx)
    fits: bool  # the input fitted as it was; nothing was changed
    tokens: tuple[int, ...]
    chunks: tuple[tuple[int, int], ...]
    truncated: int  # input tokens dropped by TRUNCATE (0 otherwise)

    def chunk_tokens(self) -> list[list[int]]:
        """The tokens of each chunk (for TRUNCATE/fit: the single input)."""
        return [list(self.tokens[start:end]) for start, end in self.chunks]


def plan_overflow(
    prompt_tokens: Sequence[int],
    fixed_tokens: int,
    max_tokens: int,
    budget: int,
    policy: OverflowPolicy | str,
    *,
    marker_tokens: Sequence[int] = (),
    head_fraction: float = 0.5,
    overlap: int = 32,
    max_chunks: int = 64,
) -> OverflowPlan:
    """Fit a task into `budget` tokens: fixed part + input + max_tokens <= budget.

    prompt_tokens: the variable input (the part that may be cut or split).
    fixed_tokens: everything else in the prompt (system prompt, schema, chat template).
    marker_tokens: tokens of the text put where TRUNCATE cut (e.g. "\\n[...]\\n").
    head_fraction: share of the kept input taken from the head (TRUNCATE).
    overlap: tokens repeated at the start of each next chunk (CHUNK); at most a quarter of
    a chunk.
    max_chunks: CHUNK raises CONTEXT_BUDGET rather than plan more chunks than this.

    Raises EdgeAgentError(CONTEXT_BUDGET) for REJECT, and for any policy when not even
    the fixed part, max_tokens and a little input fit.
    """
    policy = OverflowPolicy(policy)
    if fixed_tokens < 0 or max_tokens < 0 or budget < 0:
        raise ValueError("fixed_tokens, max_tokens and budget must not be negative")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError("head_fraction must be within [0, 1]")
    tokens = tuple(prompt_tokens)
    total = len(tokens)
    needed = fixed_tokens + total + max_tokens
    room = budget - fixed_tokens - max_tokens  # input tokens that fit

    def error(why: str) -> EdgeAgentError:
        return EdgeAgentError(
            ErrorCode.CONTEXT_BUDGET,
            f"task needs {needed} context tokens (prompt {fixed_tokens + total}"
            f" + max_tokens {max_tokens}), the budget is {budget}: {why}",
            budget=budget,
            needed=needed,
            prompt_tokens=fixed_tokens + total,
            max_tokens=max_tokens,
            policy=str(policy),
        )

    if needed <= budget:
        return OverflowPlan(
            policy=policy,
            budget=budget,
            fits=True,
            tokens=tokens,
            chunks=((0, total),),
            truncated=0,
        )
    if policy is OverflowPolicy.REJECT:
        raise error("overflow policy is reject")
    if room <= 0:
        raise error("not even the fixed prompt and max_tokens fit; lower max_tokens")
    if policy is OverflowPolicy.TRUNCATE:
        keep = room - len(marker_tokens)
        if keep <= 0:
            raise error("no input token fits next to the truncation marker")
        kept = _truncate(tokens, tuple(marker_tokens), keep, head_fraction)
        return OverflowPlan(
            policy=policy,
            budget=budget,
            fits=False,
            tokens=kept,
            chunks=((0, len(kept)),),
            truncated=total - keep,
        )
    step_overlap = max(0, min(overlap, room // 4))
    count = 1 + math.ceil(max(0, total - room) / (room - step_overlap))
    if count > max_chunks:
        raise error(f"the input would need {count} chunks of {room} tokens (max {max_chunks})")
    chunks = _chunk(total, room, step_overlap)
    return OverflowPlan(
        policy=policy, budget=budget, fits=False, tokens=tokens, chunks=chunks, truncated=0
    )


def _truncate(
    tokens: tuple[int, ...], marker: tuple[int, ...], keep: int, head_fraction: float
) -> tuple[int, ...]:
    """keep input tokens: the first ceil(keep x head_fraction), the marker, the last rest."""
    head = min(keep, math.ceil(keep * head_fraction))
    tail = keep - head
    return tokens[:head] + marker + (tokens[len(tokens) - tail :] if tail else ())


def _chunk(total: int, size: int, overlap: int) -> tuple[tuple[int, int], ...]:
    """[start, end) ranges of at most `size` tokens covering [0, total), each next one
    starting `overlap` tokens before the previous end."""
    chunks: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + size, total)
        chunks.append((start, end))
        if end >= total:
            return tuple(chunks)
        start = end - overlap
