"""The engine as the event loop sees it: start, answer, resize, close, and its capacity.

Behind it (docs/engine.md, "Who runs where"):

* thread.py: the one inference thread that calls into llama.cpp; the event loop only
  awaits its futures, so it stays responsive while a 10-second generation runs;
* runner.py: a task on the model (prompt, overflow policy, token loop, answer), run on
  that thread — or, for a model that holds several sequences, on a task thread of the
  scheduler (scheduler.py) whose decodes the batcher (batch.py) serves there;
* batch_rule.py: when tasks run together — the rule the service worker follows too
  (`at_once`);
* capacity.py: what the memory loop reads and sets (context, sequences, prefix cache).

The model comes from a factory (`Engine(cfg, factory=...)`); unit tests pass a scripted
model that takes the same branches as the real one (engine_model.EngineModel).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TypeVar

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.batch import Batcher
from edgeagent.inference.batch_costs import sequences_that_pay
from edgeagent.inference.batch_rule import MIN_BATCH, BatchRule
from edgeagent.inference.capacity import Capacity
from edgeagent.inference.engine_model import ModelFactory, load_resident
from edgeagent.inference.runner import Runner
from edgeagent.inference.scheduler import TaskScheduler
from edgeagent.inference.task import Answer, Task
from edgeagent.inference.thread import InferenceThread

T = TypeVar("T")


class Engine:
    """Owns the model and its inference thread. Its methods are for the event loop and
    never block it, except `load`, `answer_blocking` and `call_blocking`: those wait, for
    callers without an event loop (the CLI, the benchmark, tests)."""

    def __init__(
        self,
        cfg: ModelConfig,
        factory: ModelFactory | None = None,
        *,
        min_batch: int = MIN_BATCH,
        exact: bool = True,
        speculate: bool = True,
    ) -> None:
        """min_batch: tasks at once from which they are decoded together (batch_rule.py).
        exact: batched and speculative answers are token for token the answers a task
        gets alone (engine_model.load_resident); False trades that for speed.
        speculate: prompt-lookup drafts when decoding is greedy (speculative.py); off,
        the benchmark's and the tests' baseline."""
        self.cfg = cfg
        self._factory = factory or functools.partial(load_resident, exact=exact)
        self._exact = exact
        self._speculate = speculate
        self._thread = InferenceThread()
        self._rule = BatchRule(min_batch)
        self._runner: Runner | None = None
        self._scheduler: TaskScheduler | None = None
        self.capacity = Capacity(self._rule, self.resize)

    # -- what the daemon reads --------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """Current context size; 0 when the model is not loaded or its context is released."""
        return self.capacity.n_ctx

    @property
    def n_ctx_train(self) -> int:
        return self.capacity.n_ctx_train

    @property
    def busy(self) -> bool:
        """A call runs on the inference thread (the watchdog's stall probe)."""
        return self._thread.busy

    @property
    def last_progress(self) -> float:
        """Monotonic time of the inference thread's last sign of life."""
        return self._thread.last_progress

    def at_once(self, running: int, waiting: int) -> int:
        """Tasks to hand over at once with `running` running and `waiting` queued
        (batch_rule.BatchRule.at_once; the service worker's side of the rule)."""
        return self._rule.at_once(running, waiting)

    # -- lifecycle --------------------------------------------------------------------

    def _load(self, n_ctx: int | None = None) -> None:
        cfg = self.cfg if n_ctx is None else self.cfg.model_copy(update={"n_ctx": n_ctx})
        model = self._factory(cfg)
        model.on_progress = self._thread.touch
        max_parallel, probe = sequences_that_pay(model, cfg.parallel, exact=self._exact)
        self._rule.hold(max_parallel)
        batcher = None
        if max_parallel > 1:
            batcher = Batcher(model, self._rule, exact=self._exact, costs=probe)
        runner = Runner(
            cfg,
            model,
            batcher=batcher,
            exact=self._exact,
            speculate=self._speculate,
            on_step=self._thread.touch,
        )
        if batcher is not None:
            self._scheduler = TaskScheduler(
                batcher,
                run=functools.partial(runner.answer, batched=True),
                on_inference_thread=self._thread.submit,
            )
        self._runner = runner
        self.capacity.loaded(model, self._scheduler, probe)

    async def start(self, n_ctx: int | None = None) -> None:
        """Load the model; with n_ctx, at that (small) context first (the daemon's governor
        then sizes it to memory)."""
        await self._thread.call(lambda: self._load(n_ctx))

    def load(self) -> None:
        """Load the model (blocking)."""
        self._thread.submit(self._load).result()

    def close(self, timeout: float | None = None) -> bool:
        """Free the model on its thread. False if the thread did not get to it in time
        (a wedged model call): the thread is then left behind, and the process should
        exit without waiting for it."""
        if self._scheduler is not None:
            self._scheduler.close()

        def _close() -> None:
            if self._runner is not None:
                self._runner.model.close()
                self._runner = None
                self.capacity.closed()

        try:
            self._thread.submit(_close).result(timeout)
        except TimeoutError:
            self._thread.shutdown(wait=False)
            return False
        self._thread.shutdown(wait=True)
        return True

    # -- work -------------------------------------------------------------------------

    def _runner_or_fail(self) -> Runner:
        if self._runner is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "the model is not loaded")
        return self._runner

    def _answer_alone(self, task: Task) -> Answer:
        """On the inference thread: the task on the model itself."""
        if self._runner is None:
            raise EdgeAgentError(ErrorCode.BUSY, "memory is short: no context is allocated")
        return self._runner.answer(task)

    async def answer(self, task: Task) -> Answer:
        """The task's answer. Safe to await several times at once (up to the rule's
        `parallel` tasks then run together; the others wait, highest `task.priority`
        first)."""
        if self._scheduler is not None:
            return await asyncio.wrap_future(self._scheduler.answer(task))
        return await self._thread.call(lambda: self._answer_alone(task))

    def answer_blocking(self, task: Task) -> Answer:
        if self._scheduler is not None:
            return self._scheduler.answer(task).result()
        return self._thread.submit(lambda: self._answer_alone(task)).result()

    async def resize(self, n_ctx: int) -> None:
        """Recreate the context with n_ctx tokens (0: free it), between tasks: running
        tasks end first, waiting ones start after it."""

        def _resize() -> None:
            model = self._runner_or_fail().model
            if n_ctx <= 0:
                model.release()
            else:
                model.resize(n_ctx)

        if self._scheduler is None:
            await self._thread.call(_resize)
            return
        self._scheduler.drain()
        try:
            await self._thread.call(_resize)
        finally:
            self._scheduler.resume()

    def call_blocking(self, fn: Callable[[Runner], T]) -> T:
        """fn(runner) on the inference thread, between decode steps: for tools that look
        inside (the benchmark, tests); the service never does."""
        return self._thread.submit(lambda: fn(self._runner_or_fail())).result()
