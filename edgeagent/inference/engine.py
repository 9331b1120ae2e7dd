"""The engine: one resident model, one inference thread, typed answers.

Every call into llama.cpp happens on the single thread of `self._thread`; the event
loop only awaits futures from it. That keeps the loop responsive while a 10-second
generation runs, and makes the model's state (KV cache, context size) single-owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar, cast

from llguidance import LLMatcher

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.act_prior import CONTENT_FREE, ActPriors, content_free_act
from edgeagent.inference.batch import MIN_BATCH, Batcher
from edgeagent.inference.batch_costs import BatchCosts, sequences_that_pay
from edgeagent.inference.confidence import tracker_for
from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.decoding import (
    Decoder,
    Generation,
    Sampler,
    StepControl,
    generate_constrained,
)
from edgeagent.inference.engine_model import EngineModel, ModelFactory, load_resident
from edgeagent.inference.finish import Completer, Finisher
from edgeagent.inference.model import ResidentModel
from edgeagent.inference.overflow import answer_within_budget
from edgeagent.inference.prefix_cache import DEFAULT_LIMIT_BYTES, FixedParts
from edgeagent.inference.prompt import Message, build_messages
from edgeagent.inference.scheduler import TaskScheduler
from edgeagent.inference.sequence import SeqHandle
from edgeagent.inference.shots import Shot, shot_messages
from edgeagent.inference.speculative import MAX_DRAFT, DraftTarget, SpeculativeDecoder
from edgeagent.inference.task import Answer, Task

T = TypeVar("T")


class Engine:
    """Owns the model and its inference thread; safe to call from the event loop."""

    def __init__(
        self,
        cfg: ModelConfig,
        factory: ModelFactory | None = None,
        *,
        min_batch: int = MIN_BATCH,
        exact: bool = True,
    ) -> None:
        """min_batch: open sequences from which a step decodes them together (batch.py).
        exact: batched and speculative answers are token for token the answers a task
        gets alone (engine_model.load_resident); False trades that for speed."""
        self.cfg = cfg
        self.exact = exact
        factory = factory or functools.partial(load_resident, exact=exact)
        self.min_batch = min_batch
        # Several tasks at once, for models that hold several sequences (ResidentModel).
        self._scheduler: TaskScheduler | None = None
        self._max_parallel = 1  # sequences the model may hold (batch_costs.sequences_that_pay)
        # What a batched token cost against one alone when the model loaded
        # (`[model] parallel = "auto"`); None when not measured.
        self.batch_probe: BatchCosts | None = None
        self._factory = factory
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeagent-inference")
        self._model: EngineModel | None = None
        self._sampler = Sampler(cfg.temperature, cfg.seed)
        self._fixed_parts = FixedParts()
        self._act_priors = ActPriors()  # per catalog prompt (act_prior.py)
        # Monotonic time of the last sign of life of the inference thread (a decode
        # step, or the end of a call); read by the systemd watchdog.
        self.last_progress = time.monotonic()
        self.busy = False
        self.speculate = True  # prompt-lookup speculation (speculative.py) when greedy

    # -- thread plumbing ------------------------------------------------------

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run fn on the inference thread."""

        def wrapped() -> T:
            self.busy = True
            self.last_progress = time.monotonic()
            try:
                return fn()
            finally:
                self.busy = False
                self.last_progress = time.monotonic()

        return self._thread.submit(wrapped)

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def _touch(self) -> None:
        self.last_progress = time.monotonic()

    @property
    def n_ctx(self) -> int:
        """Current context size; 0 when the model is not loaded or its context is released."""
        return self._model.n_ctx if self._model is not None else 0

    @property
    def n_ctx_train(self) -> int:
        return self.model.n_ctx_train

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.model.metadata

    @property
    def model(self) -> EngineModel:
        if self._model is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "the model is not loaded")
        return self._model

    # -- lifecycle -----------------------------------------------------------

    def _load(self, n_ctx: int | None = None) -> None:
        cfg = self.cfg if n_ctx is None else self.cfg.model_copy(update={"n_ctx": n_ctx})
        self._model = self._factory(cfg)
        self._model.on_progress = self._touch
        if isinstance(self._model, ResidentModel):
            self._max_parallel, self.batch_probe = sequences_that_pay(
                self._model, cfg.parallel, exact=self.exact
            )
        if isinstance(self._model, ResidentModel) and self._max_parallel > 1:
            batcher = Batcher(
                self._model, min_batch=self.min_batch, exact=self.exact, costs=self.batch_probe
            )
            self._scheduler = TaskScheduler(
                batcher,
                run=self._answer,
                on_inference_thread=self.submit,
                parallel=self._max_parallel,
            )

    @property
    def parallel(self) -> int:
        """How many tasks the engine takes at once (`answer` may be awaited that often)."""
        return self._scheduler.parallel if self._scheduler is not None else 1

    # -- what the memory governor sees beyond the context (memory.control) -------

    @property
    def max_parallel(self) -> int:
        return self._max_parallel

    @property
    def prefix_cache_max(self) -> int:
        return DEFAULT_LIMIT_BYTES if isinstance(self._model, ResidentModel) else 0

    def sequences_held(self) -> tuple[int, int]:
        model = self._model
        if not isinstance(model, ResidentModel):
            return 1, 0
        return model.n_seq, model.prefix_cache.bytes

    def set_parallel(self, parallel: int) -> None:
        """Tasks (and KV streams of a batch) at once: the memory governor's choice."""
        if self._scheduler is not None:
            self._scheduler.set_parallel(parallel)
            self._scheduler.batcher.streams = self._scheduler.parallel

    def set_prefix_cache_limit(self, limit_bytes: int) -> None:
        if isinstance(self._model, ResidentModel):
            self._model.prefix_cache.set_limit(limit_bytes)

    def load(self) -> None:
        """Load the model (blocking; from the CLI)."""
        self.submit(self._load).result()

    async def start(self, n_ctx: int | None = None) -> None:
        """Load the model; with n_ctx, at that (small) context first (the daemon's governor
        then sizes it to memory)."""
        await self.call(lambda: self._load(n_ctx))

    def close(self, timeout: float | None = None) -> bool:
        """Free the model on its thread. False if the thread did not get to it in time
        (a wedged model call): the thread is then left behind, and the process should
        exit without waiting for it."""

        if self._scheduler is not None:
            self._scheduler.close()

        def _close() -> None:
            if self._model is not None:
                self._model.close()
                self._model = None

        try:
            self.submit(_close).result(timeout)
        except TimeoutError:
            self._thread.shutdown(wait=False, cancel_futures=True)
            return False
        self._thread.shutdown(wait=True)
        return True

    # -- work ----------------------------------------------------------------

    def prompt_tokens(
        self, spec: OutputSpec, content: str | Sequence[Message], shots: Sequence[Shot] = ()
    ) -> list[int]:
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

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.model.detokenize(tokens)

    def _answer(self, task: Task) -> Answer:
        if self.n_ctx == 0:
            raise EdgeAgentError(ErrorCode.BUSY, "memory is short: no context is allocated")
        return answer_within_budget(self, task)

    def run_once(self, task: Task, content: str | Sequence[Message]) -> Answer:
        """One model run over content; CONTEXT_BUDGET if it does not fit (no overflow policy)."""
        model = self.model
        prompt = self.prompt_tokens(task.spec, content, task.shots)
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
        control = StepControl(deadline=task.deadline, cancel=task.cancel, on_step=self._touch)
        with self._sequence(task) as sequence:
            prior = self._act_priors.get(
                task.spec,
                lambda: content_free_act(
                    sequence, model, task.spec, self.prompt_tokens(task.spec, CONTENT_FREE), control
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
        return dataclasses.replace(self._finish(task.spec, generation, model), act_prior=prior)

    @contextlib.contextmanager
    def _sequence(self, task: Task) -> Iterator[Decoder]:
        """What the token loop talks to: the model itself, or, on a task thread of the
        scheduler, a sequence the batcher feeds (batch.py)."""
        scheduler = self._scheduler
        priority = scheduler.current_priority() if scheduler is not None else None
        if scheduler is None or priority is None:
            yield self.model
            return
        handle = scheduler.batcher.open(
            reserve=task.max_tokens, priority=priority, deadline=task.deadline, cancel=task.cancel
        )
        try:
            yield handle
        finally:
            handle.close()

    def _decoder(self, model: Decoder, matcher: LLMatcher, max_tokens: int) -> Decoder:
        """The model, behind prompt-lookup speculation when decoding is greedy and the
        model can verify drafts exactly (ResidentModel.invariant_rows > 1); a sequence of
        the batcher speculates only while it runs alone."""
        rows = getattr(self._model, "invariant_rows", 1) if self.exact else MAX_DRAFT + 1
        if self._sampler.temperature > 0.0 or rows < 2 or not self.speculate:
            return model
        alone = (lambda: not model.batched) if isinstance(model, SeqHandle) else None
        target = cast("DraftTarget", model)
        return SpeculativeDecoder(
            target, matcher, max_tokens=max_tokens, max_draft=rows - 1, propose_if=alone
        )

    def _resize(self, n_ctx: int) -> None:
        if n_ctx <= 0:
            self.model.release()
        else:
            self.model.resize(n_ctx)

    async def resize(self, n_ctx: int) -> None:
        """Recreate the context with n_ctx tokens (0: free it), between tasks: running
        tasks end first, waiting ones start after it."""
        if self._scheduler is None:
            await self.call(lambda: self._resize(n_ctx))
            return
        self._scheduler.drain()
        try:
            await self.call(lambda: self._resize(n_ctx))
        finally:
            self._scheduler.resume()

    def buffer_bytes(self) -> tuple[int, int]:
        """(KV cache, compute buffer) bytes llama.cpp allocated for the current context."""
        model = self.model
        return model.kv_buffer_bytes, model.compute_buffer_bytes

    @staticmethod
    def _finish(spec: OutputSpec, generation: Generation, model: EngineModel) -> Answer:
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

    def answer_blocking(self, task: Task) -> Answer:
        if self._scheduler is not None:
            return self._scheduler.answer(task, task.priority).result()
        return self.submit(lambda: self._answer(task)).result()

    async def answer(self, task: Task) -> Answer:
        """The task's answer. Safe to await several times at once (up to `parallel`
        tasks then run together; the others wait, highest `task.priority` first)."""
        if self._scheduler is not None:
            return await asyncio.wrap_future(self._scheduler.answer(task, task.priority))
        return await self.call(lambda: self._answer(task))
