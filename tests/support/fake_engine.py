"""Stand-ins for the engine, the memory control loop and sd_notify in service unit tests.

`FakeEngine.answer` returns a scripted output at once, or holds a task until the test
releases it (to look at the daemon while a task runs); a held task that is cancelled
(shutdown) raises TaskHandedBack like the real engine does at its next decode step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from edgeagent.config import ActionConfig, Config
from edgeagent.errors import TaskHandedBack
from edgeagent.inference.batch_rule import BatchRule
from edgeagent.inference.task import Answer, Task

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
}

CATALOG = [
    ActionConfig(
        name="set_irrigation",
        description="Open the irrigation valve of a zone for some minutes.",
        dispatch=True,
        schema={
            "type": "object",
            "properties": {"zone": {"type": "integer"}, "minutes": {"type": "integer"}},
            "required": ["zone", "minutes"],
        },
    ),
    ActionConfig(
        name="notify",
        description="Send a short message to the operator.",
        schema={"type": "object", "properties": {"message": {"type": "string"}}},
    ),
]


def service_config(tmp_path: Any = "/nonexistent", **sections: dict[str, Any]) -> Config:
    """A valid config for service tests (the model path is never opened)."""
    data: dict[str, Any] = {
        "device": {"id": "dev1"},
        "model": {"path": "/nonexistent/model.gguf", "n_ctx": 2048, "max_tokens": 64},
        "mqtt": {"heartbeat_s": 3600},
        "state": {"dir": str(tmp_path)},
        "actions": [a.model_dump(by_alias=True) for a in CATALOG],
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


def default_output(task: Task) -> Any:
    if task.spec.kind == "action":
        name = task.spec.allowed_actions[0]
        args = {"zone": 3, "minutes": 20} if name == "set_irrigation" else {"message": "hi"}
        return {"action": name, "args": args}
    return {"city": "Porto", "celsius": 21.5}


class FakeEngine:
    def __init__(self, respond: Callable[[Task], Any] = default_output) -> None:
        self.respond = respond
        self.n_ctx = 0
        self.n_ctx_train = 8192
        self.busy = False
        self.last_progress = time.monotonic()
        self.tasks: list[Task] = []
        self.hold = False  # True: each task waits for release()
        self._released = asyncio.Event()
        self.running = asyncio.Event()  # set while a task is inside answer()
        self.closed = False
        self.failure: BaseException | None = None  # raised by the next answer()
        self.active: list[Task] = []  # inside answer() now
        self.beside: list[Task] = []  # tasks that ever ran while another one did
        # When tasks run together (the real engine's rule); by default one at a time.
        self.batching = BatchRule()

    async def start(self, n_ctx: int | None = None) -> None:
        self.n_ctx = n_ctx or 512

    def release(self) -> None:
        self._released.set()

    def at_once(self, running: int, waiting: int) -> int:
        return self.batching.at_once(running, waiting)

    async def answer(self, task: Task) -> Answer:
        self.tasks.append(task)
        if self.active:
            self.beside.extend(t for t in [*self.active, task] if t not in self.beside)
        self.active.append(task)
        self.busy = True
        self.running.set()
        try:
            if self.hold:
                await self._held(task)
            if self.failure is not None:
                failure, self.failure = self.failure, None
                raise failure
            return Answer(
                output=self.respond(task),
                prompt_tokens=100,
                cached_prompt_tokens=0,
                completion_tokens=10,
                prompt_ms=12.34,
                decode_ms=56.78,
                n_ctx=self.n_ctx,
            )
        finally:
            self.active.remove(task)
            self.busy = bool(self.active)
            if not self.active:
                self.running.clear()

    async def _held(self, task: Task) -> None:
        released = asyncio.ensure_future(self._released.wait())
        try:
            while not released.done():
                if task.cancel.is_set():
                    raise TaskHandedBack
                # Polls `cancel` like the real engine does between decode steps.
                await asyncio.wait([released], timeout=0.01)
        finally:
            released.cancel()
        self._released.clear()

    def close(self, timeout: float | None = None) -> bool:  # noqa: ARG002 - never blocks
        self.closed = True
        return True


class FakeDecision:
    def __init__(self, *, paused: bool = False, reason: str = "fine", tokens: int = 2048) -> None:
        self.paused = paused
        self.reason = reason
        self.budget = type("Budget", (), {"tokens": tokens, "limited_by": "config"})()


class FakeMemory:
    """The memory control loop: no sampling; a test sets `decision` and tells the daemon."""

    def __init__(self) -> None:
        self.decision: FakeDecision | None = FakeDecision()
        self.started = False
        self.on_change: Callable[[Any], None] | None = None

    async def start(self, on_change: Callable[[Any], None] | None = None) -> object:
        self.started = True
        self.on_change = on_change  # a test tells the daemon of a new decision through it
        return self.decision

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to sample; cancelled at shutdown

    def snapshot(self) -> dict[str, Any]:
        return {"state": "normal", "budget": 2048}


class FakeNotifier:
    """Records sd_notify calls."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.enabled = True
        self._changed = asyncio.Event()

    def _record(self, *assignments: str) -> bool:
        self.sent.extend(assignments)
        self._changed.set()
        return True

    async def wait_for(self, assignment: str) -> None:
        """Until `assignment` (e.g. "STOPPING=1") was sent."""
        while assignment not in self.sent:
            self._changed.clear()
            await self._changed.wait()

    def ready(self, status: str | None = None) -> bool:
        return self._record("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self._record(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self._record("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str | None = None) -> bool:
        return self._record("RELOADING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self._record("WATCHDOG=1")

    @property
    def statuses(self) -> list[str]:
        return [s.removeprefix("STATUS=") for s in self.sent if s.startswith("STATUS=")]
