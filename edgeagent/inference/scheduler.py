"""Tasks on their way to the batcher: waiting in priority order, then one thread each.

`Engine.answer()` may be awaited by several callers at once (the service worker hands
over as many queued jobs as the batch rule says, batch_rule.py). Each task waits here,
highest priority first, then oldest; up to the rule's `parallel` of them run at a time,
each in a thread of its own that runs the usual path (runner.py: prompt, overflow
policy, token loop) against a `SeqHandle` of the batcher. Meanwhile the inference
thread runs `Batcher.step` in a loop, until no task is left. A resize of the context
(the memory governor) first lets the running tasks finish and starts no new one.

When the loop has had nothing to do for `idle_s` seconds, the batcher gives back the
KV streams a batch allocated (`Batcher.give_back`): a burst must not leave n_ctx tokens
of KV per extra sequence resident for good (docs/memory.md).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from edgeagent.errors import TaskHandedBack
from edgeagent.inference.batch import Batcher
from edgeagent.inference.task import Answer, Task

IDLE_S = 5.0  # without a task for this long, the streams of a batch are given back


class TaskScheduler:
    def __init__(
        self,
        batcher: Batcher,
        *,
        run: Callable[[Task], Answer],
        on_inference_thread: Callable[[Callable[[], None]], Future[None]],
        idle_s: float = IDLE_S,
    ) -> None:
        """run: a task's answer, on a task thread (its sequence comes from the batcher).
        How many run at once is the batcher's rule: `batcher.rule.parallel`."""
        self.batcher = batcher
        self._rule = batcher.rule
        self._run = run
        self._on_inference_thread = on_inference_thread
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, Task, Future[Answer]]] = []
        self._order = itertools.count()
        self._running = 0
        self._looping = False
        self._draining = False
        self._closed = False
        self._idle_s = idle_s
        self._idle_timer: threading.Timer | None = None
        self._loops = 0  # loops started: a give-back armed before a later loop is stale
        self._threads = ThreadPoolExecutor(
            max_workers=self._rule.max_parallel, thread_name_prefix="edgeagent-task"
        )

    # -- any thread ---------------------------------------------------------------

    def answer(self, task: Task) -> Future[Answer]:
        """The task's answer, once it has waited its turn (`task.priority`) and run."""
        future: Future[Answer] = Future()
        with self._lock:
            heapq.heappush(self._waiting, (-task.priority, next(self._order), task, future))
        self._kick()
        # A loop already running may be waiting in a step with no sequence open (the
        # previous task is finishing): without this the task waited out that step.
        self.batcher.wake()
        return future

    def set_parallel(self, parallel: int) -> None:
        """Tasks that may run at once (the rule keeps it within 1..max_parallel); the
        memory governor lowers it under pressure."""
        with self._lock:
            self._rule.set_parallel(parallel)
        self._kick()

    def drain(self) -> None:
        """Start no new task (before a resize): the loop ends when the running ones have."""
        with self._lock:
            self._draining = True

    def resume(self) -> None:
        with self._lock:
            self._draining = False
        self._kick()

    def close(self) -> None:
        """Hand back the tasks that have not started; let the running ones end."""
        with self._lock:
            self._draining = self._closed = True
            waiting, self._waiting = self._waiting, []
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        for _, _, _, future in waiting:
            future.set_exception(TaskHandedBack("the engine is closing"))
        self._threads.shutdown(wait=False)

    def _kick(self) -> None:
        with self._lock:
            if self._looping or self._draining or not self._waiting:
                return
            self._looping = True
            self._loops += 1
        self._on_inference_thread(self._loop)

    def _arm_give_back(self) -> None:
        """After idle_s without a loop, give back the batch's streams (lock held)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._closed:
            return
        give_back = functools.partial(self._give_back, self._loops)
        self._idle_timer = threading.Timer(self._idle_s, self._submit_give_back, (give_back,))
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _submit_give_back(self, give_back: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
        try:
            self._on_inference_thread(give_back)
        except RuntimeError:  # the inference thread shut down meanwhile
            return

    def _give_back(self, loop: int) -> None:
        """On the inference thread: unless a loop started since the timer was armed."""
        with self._lock:
            if self._looping or self._loops != loop or self._closed:
                return
        self.batcher.give_back()

    # -- the inference thread -----------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                self._start_tasks()
                with self._lock:
                    if self._running == 0 and (self._draining or not self._waiting):
                        self._looping = False
                        self._arm_give_back()
                        return
                self.batcher.step()
        except BaseException:
            with self._lock:
                self._looping = False
            raise

    def _start_tasks(self) -> None:
        with self._lock:
            while self._waiting and self._running < self._rule.parallel and not self._draining:
                _, _, task, future = heapq.heappop(self._waiting)
                if task.cancel.is_set():
                    future.set_exception(TaskHandedBack("task cancelled by shutdown"))
                    continue
                self._running += 1
                self._threads.submit(self._task_main, task, future)

    # -- task threads ---------------------------------------------------------------

    def _task_main(self, task: Task, future: Future[Answer]) -> None:
        try:
            result: Any = self._run(task)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            with self._lock:
                self._running -= 1
            self.batcher.wake()
