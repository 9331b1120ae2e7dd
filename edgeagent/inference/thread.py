"""The inference thread: the one thread that calls into llama.cpp, and its signs of life.

Every model call that is not a batched task's token loop runs here (loading, resizing,
a task alone, the batcher's decode steps), so the model's state (KV cache, context
size) has one owner and the event loop only awaits futures. `last_progress` is the
monotonic time of the last sign of life — a decode step, or the end of a call — which
the systemd watchdog reads (service/system/sdnotify.py: a wedged llama.cpp call shows
as `busy` without progress).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class InferenceThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeagent-inference")
        self.last_progress = time.monotonic()
        self.busy = False

    def touch(self) -> None:
        """A sign of life from a long call (a decode step)."""
        self.last_progress = time.monotonic()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run fn on the inference thread; RuntimeError after shutdown."""

        def wrapped() -> T:
            self.busy = True
            self.touch()
            try:
                return fn()
            finally:
                self.busy = False
                self.touch()

        return self._executor.submit(wrapped)

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def shutdown(self, *, wait: bool) -> None:
        """Stop taking calls; without wait, a stuck call is left behind (and the calls
        still queued are cancelled)."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
