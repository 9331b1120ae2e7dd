"""What the memory loop sees of the engine and sets on it (memory/control.py).

The context (n_ctx tokens, and the bytes llama.cpp allocated for it) and what the
engine holds beyond it: the KV streams of concurrent tasks and the prefix cache's saved
prompt parts. The view exists before the model loads (the daemon wires the memory loop
first) and follows it from `loaded` on. Read on the event loop; the values are plain
numbers the inference thread writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.batch_costs import BatchCosts
from edgeagent.inference.batch_rule import BatchRule
from edgeagent.inference.engine_model import EngineModel
from edgeagent.inference.scheduler import TaskScheduler


class Capacity:
    def __init__(self, rule: BatchRule, resize: Callable[[int], Awaitable[None]]) -> None:
        """rule: the engine's batch rule (its `parallel` is what the governor sets).
        resize: the engine's resize (between tasks, on the inference thread)."""
        self._rule = rule
        self._resize = resize
        self._model: EngineModel | None = None
        self._scheduler: TaskScheduler | None = None
        self.prefix_cache_max = 0  # bytes the prefix cache would like
        # What a batched token cost against one alone when the model loaded
        # (`[model] parallel = "auto"`); None when not measured.
        self.batch_probe: BatchCosts | None = None

    def loaded(
        self, model: EngineModel, scheduler: TaskScheduler | None, probe: BatchCosts | None
    ) -> None:
        self._model, self._scheduler, self.batch_probe = model, scheduler, probe
        self.prefix_cache_max = model.prefix_cache.limit_bytes

    def closed(self) -> None:
        self._model = self._scheduler = None

    def _loaded(self) -> EngineModel:
        if self._model is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "the model is not loaded")
        return self._model

    # -- the context ------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """Current context size; 0 when the model is not loaded or its context is released."""
        return self._model.n_ctx if self._model is not None else 0

    @property
    def n_ctx_train(self) -> int:
        return self._loaded().n_ctx_train

    @property
    def metadata(self) -> Mapping[str, str]:
        return self._loaded().metadata

    def buffer_bytes(self) -> tuple[int, int]:
        """(KV cache, compute buffer) bytes llama.cpp allocated for the current context."""
        model = self._loaded()
        return model.kv_buffer_bytes, model.compute_buffer_bytes

    async def resize(self, n_ctx: int) -> None:
        """Recreate the context with n_ctx tokens (0: free it), between tasks."""
        await self._resize(n_ctx)

    # -- beyond the context -------------------------------------------------------------

    @property
    def max_parallel(self) -> int:
        """Sequences (tasks at once) the model holds at most."""
        return self._rule.max_parallel

    @property
    def parallel(self) -> int:
        """Tasks at once now (the governor's choice within max_parallel)."""
        return self._rule.parallel

    def sequences_held(self) -> tuple[int, int]:
        """(KV streams of the context now, bytes the prefix cache holds now)."""
        model = self._model
        return (model.n_seq, model.prefix_cache.bytes) if model is not None else (1, 0)

    def set_parallel(self, parallel: int) -> None:
        """Tasks (and KV streams of a batch) at once from now on."""
        if self._scheduler is not None:
            self._scheduler.set_parallel(parallel)
        else:
            self._rule.set_parallel(parallel)

    def set_prefix_cache_limit(self, limit_bytes: int) -> None:
        if self._model is not None:
            self._model.prefix_cache.set_limit(limit_bytes)
