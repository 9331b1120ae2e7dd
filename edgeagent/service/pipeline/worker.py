"""Execution: the one worker that takes jobs off the queue and runs them on the engine.

It turns each job into a typed reply (and, for a `dispatch = true` action, an action
message unless dispatch.py holds it), writes the canonical `task` log line, and hands
the outcome to delivery.
A job stopped by shutdown (TaskHandedBack) is handed back: no reply, no ack, its
accept record dropped, so the broker's redelivery after the restart runs it again.

Jobs run one at a time, or several at once while the queued ones make a batch with the
running ones by the engine's rule (`Answerer.at_once`, inference/batch_rule.py): decided
when a job is queued (the queue's offer event) or one ends.

Each run is counted in the task store before it starts: if the process dies during it,
the count survives, and a task that took the process down `[queue] max_task_aborts`
times is answered by admission instead of being run again (docs/protocol.md). A task
counted before runs alone (alone.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode, TaskHandedBack
from edgeagent.inference.gate import screened_actions
from edgeagent.inference.overflow import input_text
from edgeagent.inference.shots import Shot
from edgeagent.inference.task import Answer, Task
from edgeagent.protocol.reply import (
    ContextUse,
    ErrorReply,
    OkReply,
    Reply,
    Timing,
    Usage,
)
from edgeagent.service.pipeline.alone import AloneGate
from edgeagent.service.pipeline.delivery import Finisher
from edgeagent.service.pipeline.dispatch import DispatchDecision, decide_dispatch
from edgeagent.service.pipeline.jobs import Job
from edgeagent.service.pipeline.ledger import Ledger
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.views.telemetry import Telemetry

log = structlog.get_logger("edgeagent.service.pipeline.worker")


class Answerer(Protocol):
    async def answer(self, task: Task) -> Answer: ...
    def at_once(self, running: int, waiting: int) -> int:
        """Tasks to hand over at once with `running` running and `waiting` queued: the
        engine decodes concurrent tasks together only from a few of them on
        (inference/batch_rule.py); below that, one job at a time, as the queue expects."""
        ...


class HeldActions(Protocol):
    """The hold desk (service/holds): a held `dispatch = true` answer becomes a hold
    that an operator confirms; recorded before the task's reply, opened after it."""

    async def prepare(self, job: Job, reply: OkReply) -> bool: ...
    async def open(self, task_id: str) -> None: ...


class LearnedShots(Protocol):
    """Learned examples for a task's input (service/learning): never raises, bounded."""

    async def shots(self, text: str, allowed: Sequence[str]) -> tuple[Shot, ...]: ...


class RunRecords(Protocol):
    async def start_run(self, task_id: str) -> None: ...
    async def forget(self, task_id: str) -> None: ...


class Worker:
    def __init__(
        self,
        cfg: Config,
        *,
        queue: TaskQueue[Job],
        engine: Answerer,
        delivery: Finisher,
        store: RunRecords,
        ledger: Ledger,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.monotonic,
        holds: HeldActions | None = None,
        learned: LearnedShots | None = None,
    ) -> None:
        self.cfg = cfg
        self._holds = holds
        self._queue = queue
        self._learned = learned
        self._engine = engine
        self._delivery = delivery
        self._store = store
        self._ledger = ledger
        self._telemetry = telemetry
        self._clock = clock
        self.current: Job | None = None
        self._running: list[Job] = []
        self._lanes = 1
        self._lane_group: asyncio.TaskGroup | None = None  # while run() runs
        # One event for every running job: a shutdown's hand-back of `current` stops all.
        self._cancel = threading.Event()
        self._gate = AloneGate()
        self._idle = asyncio.Event()
        self._idle.set()

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg

    @property
    def lanes(self) -> int:
        """Jobs the worker takes at once now: 1, or up to the engine's `at_once` while
        the queued jobs make a batch with the running ones."""
        return self._lanes

    async def run(self) -> None:
        """One lane takes jobs one at a time; more lanes join while the queued jobs make a
        batch: decided when a job is queued (the queue's offer) or one ends, never polled."""
        stop_watching = self._queue.watch(self._add_lanes)
        try:
            async with asyncio.TaskGroup() as lanes:
                self._lane_group = lanes
                try:
                    await self._lane(extra=False)
                finally:
                    self._lane_group = None
        finally:
            stop_watching()

    def _lanes_wanted(self) -> int:
        """Lanes for the jobs running and queued now (Answerer.at_once)."""
        waiting = len(self._queue)
        return self._engine.at_once(len(self._running), waiting) if waiting else 1

    def _add_lanes(self) -> None:
        while self._lane_group is not None and self._lanes < self._lanes_wanted():
            lane = self._lane(extra=True)
            try:
                self._lane_group.create_task(lane)
            except RuntimeError:  # the group is shutting down (a lane crashed): no new lane
                lane.close()
                return
            self._lanes += 1

    async def _lane(self, *, extra: bool) -> None:
        try:
            while True:
                job = await self._queue.take()
                alone = job.aborts > 0
                # Cancelled while waiting (shutdown): not acked, the broker delivers it again.
                await self._gate.enter(alone=alone)
                try:
                    await self._run_tracked(job)
                finally:
                    self._gate.leave(alone=alone)
                if extra and self._lanes > self._lanes_wanted():
                    return
                self._add_lanes()  # the engine may take more now (the governor's parallel)
        finally:
            self._lanes -= extra

    async def _run_tracked(self, job: Job) -> None:
        job.cancel = self._cancel
        self._running.append(job)
        self.current = self._running[0]
        self._idle.clear()
        try:
            await self._run(job)
        finally:
            self._running.remove(job)
            self.current = self._running[0] if self._running else None
            if not self._running:
                self._idle.set()
            self._telemetry.refresh_status()

    async def wait_idle(self, *, within_s: float) -> bool:
        """True as soon as no job runs; False if one still does after `within_s` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within_s)
        return self._idle.is_set()

    async def hand_back(self, job: Job) -> None:
        """Give a job back to the broker: its deliveries stay unacknowledged."""
        self._ledger.hand_back(job.entry)
        await self._store.forget(job.task_id)
        log.info("task handed back", task_id=job.task_id)

    async def _run(self, job: Job) -> None:
        request = job.request
        started = self._clock()
        queue_ms = (started - job.received) * 1000
        answer: Answer | None = None
        log.debug("task started", task_id=request.id, queue_ms=round(queue_ms, 1))
        reply: Reply
        decided: DispatchDecision | None = None
        try:
            if started > job.deadline:
                raise EdgeAgentError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued")
            task = Task(
                content=request.content,
                spec=job.spec,
                max_tokens=request.max_tokens or self.cfg.model.max_tokens,
                deadline=job.deadline,
                cancel=job.cancel,
                overflow=request.overflow or self.cfg.memory.overflow,
                priority=request.priority,
                shots=await self._shots(job),
                screen=screened_actions(self.cfg.catalog, self.cfg.actions),
            )
            # Committed before the engine starts: a run that ends the process is counted.
            await self._store.start_run(job.task_id)
            answer = await self._engine.answer(task)
            decided = decide_dispatch(self.cfg, job.task_id, job.spec.kind, answer, request.content)
            reply = self._ok_reply(job, answer, decided, queue_ms)
        except TaskHandedBack:
            await self.hand_back(job)
            return
        except EdgeAgentError as exc:
            reply = ErrorReply.of(request.id, self.cfg.device.id, exc)
        except Exception as exc:
            log.exception("task crashed", task_id=request.id)
            error = EdgeAgentError(ErrorCode.INTERNAL, type(exc).__name__)
            reply = ErrorReply.of(request.id, self.cfg.device.id, error)
        self._account(job, reply, answer, queue_ms)
        replayable = isinstance(reply, OkReply) or not reply.error.code.retryable
        # A held action (dispatch.py) has no message: it is never published, now or on
        # a redelivery, since the stored reply carries none either.
        message = decided.message if decided is not None and isinstance(reply, OkReply) else None
        # A held dispatch action waits for an operator (service/holds): its hold is
        # recorded before the reply is stored and opened after, so a crash between
        # leaves no hold without its reply nor a reply without its hold.
        holds = self._holds if isinstance(reply, OkReply) and reply.held else None
        held = holds is not None and isinstance(reply, OkReply) and await holds.prepare(job, reply)
        await self._delivery.finish(job.entry, reply, message, replayable=replayable)
        if held and holds is not None:
            await holds.open(job.task_id)

    async def _shots(self, job: Job) -> tuple[Shot, ...]:
        if self._learned is None or job.spec.kind != "action":
            return ()
        return await self._learned.shots(input_text(job.request.content), job.spec.allowed_actions)

    def _ok_reply(
        self, job: Job, answer: Answer, decided: DispatchDecision, queue_ms: float
    ) -> OkReply:
        return OkReply(
            id=job.task_id,
            output=decided.output,
            action=decided.action,
            cut_short=answer.cut_short,
            usage=Usage(
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                cached_prompt_tokens=answer.cached_prompt_tokens,
            ),
            timing=Timing(
                queue_ms=round(queue_ms, 1),
                prompt_ms=round(answer.prompt_ms, 1),
                decode_ms=round(answer.decode_ms, 1),
                total_ms=round((self._clock() - job.received) * 1000, 1),
                screen_ms=round(answer.screen_ms, 1),
            ),
            device=self.cfg.device.id,
            context=ContextUse(
                budget=answer.n_ctx, truncated=answer.truncated, chunks=answer.chunks
            ),
        )

    def _account(self, job: Job, reply: Reply, answer: Answer | None, queue_ms: float) -> None:
        ok = isinstance(reply, OkReply)
        if isinstance(reply, OkReply) and answer is not None:
            self._telemetry.record_answer(answer.completion_tokens, answer.decode_ms / 1000)
        else:
            self._telemetry.record_failure()
        fields: dict[str, Any] = {
            "task_id": job.task_id,
            "device_id": self.cfg.device.id,
            "action": reply.output.get("action", "schema")
            if isinstance(reply, OkReply) and job.spec.kind == "action"
            else job.action_label,
            "status": "ok" if ok else "error",
            "queue_ms": round(queue_ms, 1),
        }
        if answer is not None:
            fields |= answer.usage() | answer.timing() | answer.context()
        if isinstance(reply, OkReply) and reply.action is not None:
            # journalctl shows why an action did not go out without reading the reply.
            info = reply.action
            fields |= {"confidence": info.to_json()["confidence"], "dispatched": info.dispatched}
            if info.instruction_score is not None:
                fields["instruction_score"] = info.to_json()["instruction_score"]
            if info.held is not None:
                fields["held"] = str(info.held.reason)
        if isinstance(reply, OkReply) and reply.cut_short:
            fields["cut_short"] = True
        if isinstance(reply, ErrorReply):
            fields |= {"error_code": str(reply.error.code), "message": reply.error.message}
        (log.info if ok else log.warning)("task", **fields)
