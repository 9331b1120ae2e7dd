"""Blocking calls (schema compiles) on daemon threads of their own, bounded in number and
in the time each is awaited; what the contract cache (contracts.py) compiles on.

Apart from the cache because it is its own problem: a thread that cannot be stopped,
a slot it keeps until it ends, and the loop that must never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from edgeagent.errors import EdgeAgentError, ErrorCode

T = TypeVar("T")

# Contracts compile on threads of their own, never on the event loop: a caller's schema
# takes milliseconds, a few hundred for large ones (more on a Pi). A compile that takes
# longer than COMPILE_TIMEOUT_S is answered SCHEMA_UNSUPPORTED; its thread cannot be
# stopped and runs on, so at most COMPILE_THREADS run at once: a task that needs one waits
# for a thread (at most COMPILE_TIMEOUT_S), and is answered BUSY at once when every thread
# is held by a compile that overran.
COMPILE_THREADS = 2
COMPILE_TIMEOUT_S = 5.0


class _Call:
    """One blocking call on its own thread."""

    __slots__ = ("abandoned", "future")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.abandoned = False  # nobody waits for it any more (timed out, or cancelled)


class CompileThreads:
    """Runs blocking calls on daemon threads, at most `size` at once, each awaited at most
    `timeout_s`.

    A call waits for a free thread (at most `timeout_s`: every running call ends or is
    given up within that); it is refused BUSY at once when every thread is held by a call
    that was given up. Not an executor: a ThreadPoolExecutor's threads (also
    asyncio.to_thread's) are joined at interpreter exit, so one compile stuck for minutes
    would hold up a stop. A daemon thread is left behind at exit, and a call given up keeps
    its slot until its thread ends, so stuck threads can never pile up.
    """

    def __init__(self, size: int = COMPILE_THREADS, timeout_s: float = COMPILE_TIMEOUT_S) -> None:
        self.size = size
        self.timeout_s = timeout_s
        # Touched on the event loop only.
        self.busy = 0  # threads running now, given-up ones included
        self.abandoned = 0  # threads running calls nobody waits for any more
        self.idle = asyncio.Event()  # set while no thread runs
        self.idle.set()
        self._waiters: set[asyncio.Future[None]] = set()

    async def run(self, fn: Callable[[], T]) -> T:
        """fn's result (or exception). BUSY when no thread comes free, SCHEMA_UNSUPPORTED
        naming the time limit when fn takes longer."""
        await self._slot()
        call = _Call(asyncio.get_running_loop().create_future())
        thread = threading.Thread(
            target=self._body, args=(fn, call), name="edgeagent-compile", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:
            # "can't start new thread": the unit's TasksMax (or RLIMIT_NPROC) is reached.
            # Nothing was counted yet, so the slot stays free for when threads end.
            raise EdgeAgentError(
                ErrorCode.BUSY, f"cannot start a schema compile thread ({exc}); try again later"
            ) from None
        # Counted only now that the thread runs: _settle, its only way down, is called
        # from that thread (no await in between, so it cannot come first).
        self.busy += 1
        self.idle.clear()
        try:
            async with asyncio.timeout(self.timeout_s):
                result: T = await call.future
        except TimeoutError:
            self._abandon(call)
            raise EdgeAgentError(
                ErrorCode.SCHEMA_UNSUPPORTED,
                f"compiling the schema took longer than {self.timeout_s:g} s (the limit)",
                limit="compile_timeout_s",
                maximum=self.timeout_s,
            ) from None
        except asyncio.CancelledError:
            self._abandon(call)
            raise
        return result

    async def _slot(self) -> None:
        """Until a thread is free for one more call."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                while self.busy >= self.size:
                    if self.abandoned >= self.size:
                        break  # none of them is coming back soon
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.add(waiter)
                    try:
                        await waiter
                    finally:
                        self._waiters.discard(waiter)
        except TimeoutError:
            pass
        if self.busy >= self.size:
            raise EdgeAgentError(
                ErrorCode.BUSY, f"all {self.size} schema compile threads are busy; try again later"
            )

    def _abandon(self, call: _Call) -> None:
        if not call.abandoned and not call.future.done():
            call.abandoned = True
            self.abandoned += 1
            self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _body(self, fn: Callable[[], T], call: _Call) -> None:
        """On the compile thread: run fn, hand its outcome to the loop."""
        try:
            outcome: tuple[bool, Any] = (True, fn())
        except BaseException as exc:  # handed to the awaiting task as it is
            outcome = (False, exc)
        # The loop is closed only when the daemon has stopped: nobody waits any more.
        with contextlib.suppress(RuntimeError):
            call.future.get_loop().call_soon_threadsafe(self._settle, call, outcome)

    def _settle(self, call: _Call, outcome: tuple[bool, Any]) -> None:
        """On the loop: free the slot, and hand the outcome over unless it was given up."""
        self.busy -= 1
        if call.abandoned:
            self.abandoned -= 1
        if self.busy == 0:
            self.idle.set()
        self._wake()
        if call.future.done():
            return
        ok, value = outcome
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)
