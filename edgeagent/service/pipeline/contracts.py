"""Compiled output contracts for admission: an LRU cache, filled off the event loop.

A caller's schema takes milliseconds to compile, a few hundred for large ones (more on
a Pi), so compiling runs on threads of its own and repeated schemas or action lists
cost nothing. A compile that overruns its time limit is answered SCHEMA_UNSUPPORTED;
its thread cannot be stopped, so the number running at once is bounded
(compile_threads.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from edgeagent.config import ActionConfig, SchemaLimits
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import OutputSpec, compile_contract, select_actions
from edgeagent.protocol.request import Request
from edgeagent.service.pipeline.compile_threads import CompileThreads

SPEC_CACHE_SIZE = 64


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
