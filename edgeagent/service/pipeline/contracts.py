"""Compiled output contracts for admission: an LRU cache, filled off the event loop.

A caller's schema takes milliseconds to compile, a few hundred for large ones (more on
a Pi), so compiling runs on threads of its own and repeated schemas or action lists
cost nothing. A compile that overruns its time limit is answered SCHEMA_UNSUPPORTED;
its thread cannot be stopped, so the number running at once is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from edgeagent.config import ActionConfig, SchemaLimits
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import OutputSpec, compile_contract, select_actions
from edgeagent.protocol.request import Request

T = TypeVar("T")

SPEC_CACHE_SIZE = 64
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


class _Refusal:
    """A contract that cannot be compiled, remembered: the same schema is refused again
    without compiling it again (a hostile client sends the same one many times)."""

    __slots__ = ("code", "details", "message")

    def __init__(self, error: EdgeAgentError) -> None:
        self.code = error.code
        self.message = error.message
        self.details = dict(error.details)

    def error(self) -> EdgeAgentError:
        return EdgeAgentError(self.code, self.message, **self.details)


Compiler = Callable[..., OutputSpec]  # compile_contract's signature


class ContractCache:
    """Compiled output contracts (and refusals), LRU: clients send the same schema or
    action list again and again, and a cached one costs a dictionary lookup. Compiling
    runs on CompileThreads, off the event loop."""

    def __init__(
        self,
        size: int = SPEC_CACHE_SIZE,
        *,
        compile_contract: Compiler = compile_contract,
        threads: CompileThreads | None = None,
    ) -> None:
        self._size = size
        self._compile = compile_contract
        self.threads = threads or CompileThreads()
        # insertion order is LRU order
        self._specs: dict[tuple[str, ...], OutputSpec | _Refusal] = {}
        self._compiling: dict[tuple[str, ...], asyncio.Task[OutputSpec | _Refusal]] = {}
        self._generation = 0  # advanced by clear(): compiles in progress are stale

    async def spec_for(
        self,
        request: Request,
        catalog: Sequence[ActionConfig],
        limits: SchemaLimits,
        *,
        reason: bool = False,
    ) -> OutputSpec:
        """The request's contract. Raises EdgeAgentError: the contract's refusal, BUSY when
        every compile thread is taken, SCHEMA_UNSUPPORTED when compiling takes too long."""
        schema = request.schema_
        if schema is not None:
            key = _schema_key(schema)

            def build() -> OutputSpec:
                return self._compile(catalog, schema=schema, limits=limits)
        else:
            # Cheap and bounded (at most 256 names): the key is the selected actions, in
            # catalog order, so every spelling of one choice shares a contract.
            actions = select_actions(catalog, request.action_names)
            key = ("actions", *(a.name for a in actions))

            options = {"reason": True} if reason else {}  # `[model] reason`

            def build() -> OutputSpec:
                # The whole catalog goes along: the prompt and the gate's confidence
                # are the catalog's whatever subset the request allows (contract.py).
                names = [a.name for a in actions]
                return self._compile(catalog, action_names=names, limits=limits, **options)

        cached = self._specs.get(key) if key is not None else None
        if cached is None:
            cached = await self._compiled(key, build)  # kept in the cache by the compile
        else:
            self._keep(key, cached)  # used again: now the most recent
        if isinstance(cached, _Refusal):
            raise cached.error()
        return cached

    async def _compiled(
        self, key: tuple[str, ...] | None, build: Callable[[], OutputSpec]
    ) -> OutputSpec | _Refusal:
        """One compile per key at a time: deliveries of one new schema share it (a client
        sending a burst of tasks with a new schema gets one compile, not a BUSY)."""
        if key is None:
            return await self._compile_now(build)
        shared = self._compiling.get(key)
        if shared is None:
            shared = asyncio.create_task(self._compile_and_keep(key, build))
            self._compiling[key] = shared
            shared.add_done_callback(lambda task: self._compile_done(key, task))
        # Shielded: one waiter cancelled (shutdown) does not cancel the others' compile.
        return await asyncio.shield(shared)

    def _compile_done(
        self, key: tuple[str, ...], task: asyncio.Task[OutputSpec | _Refusal]
    ) -> None:
        if self._compiling.get(key) is task:
            del self._compiling[key]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone

    async def _compile_and_keep(
        self, key: tuple[str, ...], build: Callable[[], OutputSpec]
    ) -> OutputSpec | _Refusal:
        """Compile, and keep the outcome before anyone can look for it again: a task of
        the same schema admitted right after finds it in the cache, not compiling."""
        generation = self._generation
        outcome = await self._compile_now(build)
        if generation == self._generation:  # else compiled for the config before a reload
            self._keep(key, outcome)
        return outcome

    def _keep(self, key: tuple[str, ...] | None, value: OutputSpec | _Refusal) -> None:
        if key is None:
            return
        self._specs.pop(key, None)
        self._specs[key] = value  # (re)inserted last: the most recently used
        if len(self._specs) > self._size:
            self._specs.pop(next(iter(self._specs)))

    async def _compile_now(self, build: Callable[[], OutputSpec]) -> OutputSpec | _Refusal:
        try:
            return await self.threads.run(build)
        except EdgeAgentError as exc:
            if exc.code is ErrorCode.BUSY or exc.details.get("limit") == "compile_timeout_s":
                raise  # about this moment, not about the schema: not remembered
            return _Refusal(exc)

    def ready(self, request: Request, catalog: Sequence[ActionConfig]) -> bool:
        """Whether spec_for answers without a thread: the contract (or its refusal) is
        cached, or the request names actions not in the catalog."""
        if request.schema_ is not None:
            key = _schema_key(request.schema_)
        else:
            try:
                key = ("actions", *(a.name for a in select_actions(catalog, request.action_names)))
            except EdgeAgentError:
                return True
        return key is not None and key in self._specs

    def clear(self) -> None:
        self._specs.clear()
        self._compiling.clear()
        self._generation += 1

    def __len__(self) -> int:
        return len(self._specs)


def _schema_key(schema: dict[str, Any]) -> tuple[str, ...] | None:
    """The cache key of a schema; None when it cannot be serialized (nesting deep enough to
    exhaust the recursion limit: compiled uncached, and refused by the schema limits)."""
    try:
        return ("schema", json.dumps(schema, sort_keys=True))
    except (RecursionError, ValueError, TypeError):
        return None
