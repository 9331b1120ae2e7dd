"""The engine: one resident model, one inference thread, typed answers.

Every call into llama.cpp happens on the single thread of `self._thread`; the event
loop only awaits futures from it. That keeps the loop responsive while a 10-second
generation runs, and makes the model's state (KV cache, context size) single-owner.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from llguidance import LLMatcher

from edgeagent.config import ModelConfig
from edgeagent.decoding import Decoder, Generation, Sampler, StepControl, generate_constrained
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.model import load_model
from edgeagent.prompt import Message, build_messages
from edgeagent.schema import OutputSpec

T = TypeVar("T")
FAULT_ENV = "EDGEAGENT_TEST_FAULT"


class EngineModel(Decoder, Protocol):
    """The model surface the engine uses (ResidentModel in production)."""

    n_ctx: int
    n_ctx_train: int
    lltokenizer: Any
    metadata: dict[str, str]

    def render_chat(self, messages: Sequence[Message]) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def resize(self, n_ctx: int) -> None: ...
    def close(self) -> None: ...


ModelFactory = Callable[[ModelConfig], EngineModel]


def _load_resident(cfg: ModelConfig) -> EngineModel:
    if cfg.sha256 is not None:
        actual = sha256_file(cfg.path)
        if actual != cfg.sha256:
            raise EdgeAgentError(
                ErrorCode.CONFIG_INVALID,
                f"model.sha256: {cfg.path} has sha256 {actual}, expected {cfg.sha256}",
            )
    model, _ = load_model(cfg.path, threads=cfg.threads, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch)
    return model


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work for the model, already validated and compiled."""

    content: str | Sequence[Message]
    spec: OutputSpec
    max_tokens: int
    deadline: float = float("inf")  # time.monotonic() value
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Answer:
    output: Any
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    prompt_ms: float
    decode_ms: float
    n_ctx: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
        }

    def timing(self) -> dict[str, float]:
        return {"prompt_ms": round(self.prompt_ms, 1), "decode_ms": round(self.decode_ms, 1)}


class Engine:
    """Owns the model and its inference thread; safe to call from the event loop."""

    def __init__(self, cfg: ModelConfig, factory: ModelFactory = _load_resident) -> None:
        self.cfg = cfg
        self._factory = factory
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeagent-inference")
        self._model: EngineModel | None = None
        self._sampler = Sampler(cfg.temperature, cfg.seed)
        # Monotonic time of the last sign of life of the inference thread (a decode
        # step, or the end of a call); read by the systemd watchdog.
        self.last_progress = time.monotonic()
        self.busy = False
        self.load_ms = 0.0

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
    def model(self) -> EngineModel:
        if self._model is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "the model is not loaded")
        return self._model

    # -- lifecycle -----------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        self._model = self._factory(self.cfg)
        if hasattr(self._model, "on_progress"):
            self._model.on_progress = self._touch
        self.load_ms = (time.perf_counter() - started) * 1000

    def load(self) -> None:
        """Load the model (blocking; from the CLI)."""
        self.submit(self._load).result()

    async def start(self) -> None:
        await self.call(self._load)

    def close(self) -> None:
        def _close() -> None:
            if self._model is not None:
                self._model.close()
                self._model = None

        self.submit(_close).result()
        self._thread.shutdown(wait=True)

    # -- work ----------------------------------------------------------------

    def prompt_tokens(self, task: Task) -> list[int]:
        """Tokens of the task's full prompt (inference thread only)."""
        messages = build_messages(self.cfg.system_prompt, task.spec.instructions, task.content)
        return self.model.render_chat(messages)

    def _answer(self, task: Task) -> Answer:
        model = self.model
        if os.environ.get(FAULT_ENV) == "wedge-inference":
            # Test-only fault: a model call that never returns nor progresses, as a
            # hung driver or a deadlock would. The systemd watchdog test relies on it.
            threading.Event().wait()
        prompt = self.prompt_tokens(task)
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
        generation = generate_constrained(
            model,
            matcher,
            prompt,
            max_tokens=task.max_tokens,
            sampler=self._sampler,
            control=control,
        )
        return self._finish(task.spec, generation, model)

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
        )

    def answer_blocking(self, task: Task) -> Answer:
        return self.submit(lambda: self._answer(task)).result()

    async def answer(self, task: Task) -> Answer:
        return await self.call(lambda: self._answer(task))
