"""One task on the model: its prompt, the overflow policy, the token loop, the answer.

A `Runner` runs where the model may be called: on the inference thread (a task alone,
thread.py) or on a task thread of the scheduler (scheduler.py), whose model calls the
batcher serves on the inference thread (batch.py). Which one is the caller's argument,
`batched`; a batched task's sequence is ranked by the task's own priority.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence

from llguidance import LLMatcher

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.act_prior import CONTENT_FREE, ActPriors, content_free_act
from edgeagent.inference.batch import Batcher
from edgeagent.inference.confidence import tracker_for
from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.decoding import (
    Decoder,
    Generation,
    Sampler,
    StepControl,
    generate_constrained,
)
from edgeagent.inference.engine_model import EngineModel
from edgeagent.inference.finish import Completer, Finisher
from edgeagent.inference.grounding import content_text
from edgeagent.inference.overflow import answer_within_budget
from edgeagent.inference.prefix_cache import FixedParts, Prompt
from edgeagent.inference.prompt import Message, build_messages
from edgeagent.inference.screen import AnswerTokens, instruction_score, screen_messages
from edgeagent.inference.sequence import SeqHandle
from edgeagent.inference.shots import Shot, shot_messages
from edgeagent.inference.speculative import MAX_DRAFT, DraftTarget, SpeculativeDecoder
from edgeagent.inference.task import Answer, Task

Content = str | Sequence[Message]


class Runner:
    def __init__(
        self,
        cfg: ModelConfig,
        model: EngineModel,
        *,
        batcher: Batcher | None = None,
        exact: bool = True,
        speculate: bool = True,
        on_step: Callable[[], None] | None = None,
    ) -> None:
        """batcher: the sequences of concurrent tasks (None: one task at a time).
        exact: see Engine. speculate: prompt-lookup drafts when decoding is greedy
        (speculative.py). on_step: a sign of life after every decode step (the watchdog)."""
        self.cfg = cfg
        self.model = model
        self.batcher = batcher
        self._exact = exact
        self._speculate = speculate
        self._on_step = on_step
        self._sampler = Sampler(cfg.temperature, cfg.seed)
        self._fixed_parts = FixedParts()
        self._act_priors = ActPriors()  # per catalog prompt (act_prior.py)
        self._answer_tokens: AnswerTokens | None = None  # the screen's yes/no (screen.py)

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.model.detokenize(tokens)

    def prompt(self, spec: OutputSpec, content: Content, shots: Sequence[Shot] = ()) -> Prompt:
        """Tokens of the full prompt for this content: a `Prompt` that knows where the
        part the device wrote, the same for every caller, ends (prefix_cache.FixedParts).
        A schema is the caller's text (shared only with `[model] share_schemas`); an
        action catalog's instructions are the device's. Learned examples (`shots`) come
        after that part: they are never in a cached prefix."""
        messages = build_messages(
            self.cfg.system_prompt, spec.instructions, content, shot_messages(shots)
        )
        shared = spec.kind == "action" or self.cfg.share_schemas
        owned = spec.instructions if shared else ""
        return self._fixed_parts.prompt(
            self.model.render_chat,
            messages,
            functools.partial(build_messages, self.cfg.system_prompt, owned),
        )

    def answer(self, task: Task, *, batched: bool = False) -> Answer:
        """The task's answer under its overflow policy (overflow.py). batched: on a task
        thread of the scheduler, the sequence from the batcher; else on the inference
        thread, on the model itself."""
        if self.n_ctx == 0:
            raise EdgeAgentError(ErrorCode.BUSY, "memory is short: no context is allocated")
        return answer_within_budget(self, task, functools.partial(self.run, batched=batched))

    def run(self, task: Task, content: Content, *, batched: bool = False) -> Answer:
        """One model run over content; CONTEXT_BUDGET if it does not fit (no overflow policy)."""
        model = self.model
        prompt = self.prompt(task.spec, content, task.shots)
        if len(prompt) + task.max_tokens > model.n_ctx:
            raise EdgeAgentError(
                ErrorCode.CONTEXT_BUDGET,
                f"prompt ({len(prompt)} tokens) plus max_tokens ({task.max_tokens}) exceeds "
                f"the context budget of {model.n_ctx} tokens",
                prompt_tokens=len(prompt),
                max_tokens=task.max_tokens,
                budget=model.n_ctx,
            )
        matcher = LLMatcher(model.lltokenizer, task.spec.grammar)
        control = StepControl(deadline=task.deadline, cancel=task.cancel, on_step=self._on_step)
        with self.sequence(task, batched=batched) as sequence:
            prior = self._act_priors.get(
                task.spec,
                lambda: content_free_act(
                    sequence, model, task.spec, self.prompt(task.spec, CONTENT_FREE), control
                ),
            )
            generation = generate_constrained(
                self._decoder(sequence, matcher, task.max_tokens),
                matcher,
                prompt,
                max_tokens=task.max_tokens,
                sampler=self._sampler,
                control=control,
                confidence=tracker_for(task.spec, model),
                finisher=Finisher(Completer(model.lltokenizer, model.piece), task.max_tokens),
            )
            answer = dataclasses.replace(finish(task.spec, generation, model), act_prior=prior)
            if screened(task, answer.output):
                control.check()
                answer = self._screened(sequence, answer, content)
        return answer

    def _screened(self, reader: DraftTarget, answer: Answer, content: Content) -> Answer:
        """The answer with the instruction screen's score of the caller's text (screen.py)."""
        if self._answer_tokens is None:
            self._answer_tokens = AnswerTokens(self.model)
        started = time.perf_counter()
        prompt = self._fixed_parts.prompt(
            self.model.render_chat, screen_messages(content_text(content)), screen_messages
        )
        score = instruction_score(reader, prompt, self._answer_tokens)
        elapsed = (time.perf_counter() - started) * 1000
        return dataclasses.replace(answer, instruction_score=score, screen_ms=elapsed)

    def sequence(
        self, task: Task, *, batched: bool
    ) -> contextlib.AbstractContextManager[DraftTarget]:
        """What the token loop talks to: the model itself, or a sequence of the batcher."""
        if not batched:
            return contextlib.nullcontext(self.model)
        if self.batcher is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "a batched run without a batcher")
        return self.batcher.sequence(task)

    def _decoder(self, model: DraftTarget, matcher: LLMatcher, max_tokens: int) -> Decoder:
        """The model, behind prompt-lookup speculation when decoding is greedy and the
        model can verify drafts exactly (invariant_rows > 1); a sequence of the batcher
        speculates only while it runs alone."""
        rows = self.model.invariant_rows if self._exact else MAX_DRAFT + 1
        if self._sampler.temperature > 0.0 or rows < 2 or not self._speculate:
            return model
        alone = (lambda: not model.batched) if isinstance(model, SeqHandle) else None
        return SpeculativeDecoder(
            model, matcher, max_tokens=max_tokens, max_draft=rows - 1, propose_if=alone
        )


def screened(task: Task, output: object) -> bool:
    """Whether the answer names an action the task has screened."""
    if task.spec.kind != "action" or not isinstance(output, dict):
        return False
    return output.get("action") in task.screen


def finish(spec: OutputSpec, generation: Generation, model: EngineModel) -> Answer:
    """The answer of a finished token loop: parsed, validated again, with its figures."""
    text = model.detokenize(generation.tokens)
    try:
        output = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgeAgentError(ErrorCode.OUTPUT_INVALID, f"answer is not JSON: {exc}") from exc
    spec.validate(output)
    return Answer(
        output=output,
        prompt_tokens=generation.prompt_tokens,
        cached_prompt_tokens=generation.cached_prompt_tokens,
        completion_tokens=generation.completion_tokens,
        prompt_ms=generation.prompt_ms,
        decode_ms=generation.decode_ms,
        n_ctx=model.n_ctx,
        confidence=generation.confidence,
        act=generation.act,
        cut_short=generation.cut_short,
    )
