"""The simulated device's model and memory loop: an answer after a set latency, no memory.

ScriptedEngine has the engine's surface (service/ports.py InferenceEngine) without a
thread or a model: it sleeps on the event loop for the configured latency and answers
with a fixed valid output, so hundreds of devices fit in one process and the figures are
those of the service and the broker, not of llama.cpp. StaticMemory is a memory loop
whose budget never changes (no device is paused).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeagent.errors import TaskHandedBack
from edgeagent.inference.task import Answer, Task
from edgeagent.service.ports import MemoryVerdict

# The bench's task schema, and the answer the scripted engine gives to it.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
_CANCEL_POLL_S = 0.05  # a shutdown's hand-back is noticed within this, like a decode step


def scripted_output(task: Task) -> Any:
    """A valid answer to the bench's tasks: {"ok": true}, or the first allowed action."""
    if task.spec.kind == "action":
        return {"action": task.spec.allowed_actions[0], "args": {}}
    return {"ok": True}


class ScriptedEngine:
    """Answers every task after `latency_s`, one token per 10 ms of it."""

    def __init__(
        self,
        latency_s: float,
        *,
        respond: Callable[[Task], Any] = scripted_output,
        n_ctx_train: int = 8192,
    ) -> None:
        self.latency_s = latency_s
        self.respond = respond
        self.n_ctx = 0
        self.n_ctx_train = n_ctx_train
        self.running = 0
        self.last_progress = time.monotonic()
        self.answered = 0

    @property
    def busy(self) -> bool:
        return self.running > 0

    def at_once(self, running: int, waiting: int) -> int:  # noqa: ARG002 - one at a time
        """One task at a time, like a model that holds one sequence."""
        return 1

    async def start(self, n_ctx: int | None = None) -> None:
        self.n_ctx = n_ctx or 512

    async def answer(self, task: Task) -> Answer:
        self.running += 1
        try:
            deadline = time.monotonic() + self.latency_s
            while (left := deadline - time.monotonic()) > 0:
                if task.cancel.is_set():
                    raise TaskHandedBack
                await asyncio.sleep(min(left, _CANCEL_POLL_S))
                self.last_progress = time.monotonic()
        finally:
            self.running -= 1
        self.answered += 1
        return Answer(
            output=self.respond(task),
            prompt_tokens=100,
            cached_prompt_tokens=0,
            completion_tokens=max(1, round(self.latency_s * 100)),
            prompt_ms=0.0,
            decode_ms=self.latency_s * 1000,
            n_ctx=self.n_ctx,
        )

    def close(self, timeout: float | None = None) -> bool:  # noqa: ARG002 - nothing to wait for
        return True


@dataclass(frozen=True, slots=True)
class _Budget:
    tokens: int
    limited_by: str = "config"


@dataclass(frozen=True, slots=True)
class _Verdict:
    budget: _Budget
    paused: bool = False
    reason: str = "simulated: memory is not governed"


class StaticMemory:
    """A memory loop whose decision never changes (service/ports.py MemoryLoop)."""

    def __init__(self, budget_tokens: int) -> None:
        self.decision = _Verdict(_Budget(budget_tokens))

    async def start(
        self,
        on_change: Callable[[MemoryVerdict], None],  # noqa: ARG002 - nothing ever changes to report
    ) -> object:
        return self.decision

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to sample; cancelled at shutdown

    def snapshot(self) -> dict[str, Any]:
        return {"state": "normal", "budget": self.decision.budget.tokens}
