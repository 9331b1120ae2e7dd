"""Admission: an incoming task message becomes a queued job, an answer from the store, or
a refusal — decided one message at a time, in arrival order.

    parse -> id (given, or derived from the payload and its reply address) -> route
    -> in flight? (join it, or refuse a different task under that id)
    -> in the store? (re-publish what the broker is missing; a retryable outcome runs again
       for a client's re-send) -> contract -> paused / queue full? -> accept record -> queue

Messages wait in a bounded queue because looking an id up in the store is a call to
the store's thread; taking them one at a time means two deliveries of one id can never
be admitted side by side. Anyone who can publish a task is untrusted: every path ends
in exactly one acknowledgement, after a reply, or in a deliberate non-ack (shutdown).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from edgeagent.config import ActionConfig, Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import OutputSpec, action_spec, schema_spec, select_actions
from edgeagent.mqtt.link import RECEIVE_MAXIMUM, Incoming
from edgeagent.protocol.reply import ErrorReply, ReplyRoute, route
from edgeagent.protocol.request import Request, parse_request, salvage
from edgeagent.protocol.topics import Topics
from edgeagent.service.delivery import Delivery, Plan
from edgeagent.service.jobs import InFlight, InFlightRegistry, Job, Waiting
from edgeagent.service.queue import TaskQueue
from edgeagent.service.taskstore import TaskRecord, TaskState
from edgeagent.service.telemetry import Counters

log = structlog.get_logger("edgeagent.service.admission")

SPEC_CACHE_SIZE = 64
# The broker never has more than RECEIVE_MAXIMUM task messages unacknowledged with us;
# twice that leaves room for messages of an old connection still being handled.
INCOMING_QUEUE_SIZE = 2 * RECEIVE_MAXIMUM


class RecordLookup(Protocol):
    """The part of AsyncTaskStore admission reads and writes."""

    async def get(self, task_id: str) -> TaskRecord | None: ...
    async def accept(self, task_id: str, fingerprint: str) -> None: ...


def derived_id(message: Incoming) -> str:
    """The id of a task sent without one: the same for every delivery of that message
    (payload + Response Topic + Correlation Data), so a redelivery is recognised."""
    digest = hashlib.sha256()
    for part in (
        message.payload,
        (message.response_topic or "").encode(),
        message.correlation_data or b"",
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


class ContractCache:
    """Compiled output contracts, LRU: clients send the same schema or action list again
    and again, and compiling costs ~6 ms on the event loop."""

    def __init__(
        self,
        size: int = SPEC_CACHE_SIZE,
        *,
        compile_schema: Callable[[dict[str, object]], OutputSpec] = schema_spec,
        compile_actions: Callable[[Sequence[ActionConfig]], OutputSpec] = action_spec,
    ) -> None:
        self._size = size
        self._compile_schema = compile_schema
        self._compile_actions = compile_actions
        self._specs: dict[tuple[str, ...], OutputSpec] = {}  # insertion order is LRU order

    def spec_for(self, request: Request, catalog: Sequence[ActionConfig]) -> OutputSpec:
        schema = request.schema_
        key: tuple[str, ...]
        if schema is not None:
            key = ("schema", json.dumps(schema, sort_keys=True))
            spec = self._specs.pop(key) if key in self._specs else self._compile_schema(schema)
        else:
            actions = select_actions(catalog, request.action_names)
            key = ("actions", *(a.name for a in actions))
            spec = self._specs.pop(key) if key in self._specs else self._compile_actions(actions)
        self._specs[key] = spec  # (re)inserted last
        if len(self._specs) > self._size:
            self._specs.pop(next(iter(self._specs)))
        return spec

    def clear(self) -> None:
        self._specs.clear()

    def __len__(self) -> int:
        return len(self._specs)


class Admission:
    def __init__(
        self,
        cfg: Config,
        *,
        topics: Topics,
        queue: TaskQueue[Job],
        inflight: InFlightRegistry,
        store: RecordLookup,
        delivery: Delivery,
        counters: Counters,
        on_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        contracts: ContractCache | None = None,
    ) -> None:
        self.cfg = cfg
        self._topics = topics
        self._queue = queue
        self._inflight = inflight
        self._store = store
        self._delivery = delivery
        self._counters = counters
        self._on_queued = on_queued
        self._clock = clock
        self.contracts = contracts or ContractCache()
        self._incoming: asyncio.Queue[Incoming] = asyncio.Queue(INCOMING_QUEUE_SIZE)
        self._paused: str | None = None
        self._closed = False

    # -- control (from the daemon) -------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.contracts.clear()  # the catalog may have changed

    def pause(self, reason: str) -> None:
        """Memory is short: new tasks get BUSY."""
        self._paused = reason

    def resume(self) -> None:
        self._paused = None

    def close(self) -> None:
        """Shutdown: leave new messages unacknowledged for the broker to deliver again."""
        self._closed = True

    # -- intake --------------------------------------------------------------------------

    def offer(self, message: Incoming) -> None:
        """From the link, on the event loop."""
        if self._closed:
            return
        if self._incoming.full():
            # Cannot happen while the broker keeps to Receive Maximum; unacknowledged,
            # the message comes back after the next reconnect.
            log.error("incoming queue full; message left to the broker", topic=message.topic)
            return
        self._incoming.put_nowait(message)

    async def run(self) -> None:
        while True:
            message = await self._incoming.get()
            await self.admit(message)

    async def admit(self, message: Incoming) -> None:
        if self._closed:
            return  # not acked: the broker delivers it again after our restart
        try:
            await self._admit(message)
        except Exception:  # a bug here must not take the daemon down with one bad task
            log.exception("internal error admitting a task", topic=message.topic)
            task_id, reply_to = salvage(message.payload, self.cfg.mqtt.max_payload_bytes)
            error = EdgeAgentError(ErrorCode.INTERNAL, "internal error")
            self._refuse_untracked(message, task_id, reply_to, error)

    # -- decisions -----------------------------------------------------------------------

    async def _admit(self, message: Incoming) -> None:
        request = self._parse(message)
        if request is None:
            return
        fingerprint = request.fingerprint()
        waiting = Waiting(message, self._route(message, request.id, request.reply_to))
        entry = self._inflight.get(request.id)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                self._conflict(waiting, request)
            else:
                entry.waiting.append(waiting)  # acknowledged after the reply in progress
                log.debug("task already in flight", task_id=request.id, dup=message.dup)
            return
        # Only admission opens entries and it handles one message at a time, so the id
        # cannot come in flight during this lookup.
        record = await self._store.get(request.id)
        if record is not None and record.fingerprint != fingerprint:
            self._conflict(waiting, request)
            return
        if record is not None and self._answerable(record, redelivery=message.dup):
            self._answer_from_store(record, waiting, fingerprint, redelivery=message.dup)
            return
        await self._queue_job(request, fingerprint, waiting)

    def _parse(self, message: Incoming) -> Request | None:
        """The request with its id (given, or derived); None when it was refused."""
        try:
            request = parse_request(message.payload, self.cfg.mqtt.max_payload_bytes)
        except EdgeAgentError as exc:
            task_id, reply_to = salvage(message.payload, self.cfg.mqtt.max_payload_bytes)
            self._refuse_untracked(message, task_id, reply_to, exc)
            return None
        if "id" not in request.model_fields_set:
            request = request.model_copy(update={"id": derived_id(message)})
        return request

    @staticmethod
    def _answerable(record: TaskRecord, *, redelivery: bool) -> bool:
        """A broker redelivery always gets the stored outcome (exactly once); a client's
        re-send only a final one, else the task runs again."""
        if record.state is not TaskState.FINISHED or record.outcome is None:
            return False  # interrupted by a crash: it runs again
        return redelivery or record.outcome.replayable

    async def _queue_job(self, request: Request, fingerprint: str, waiting: Waiting) -> None:
        entry = self._inflight.open(request.id, fingerprint, waiting)
        try:
            job = self._job_for(request, entry)
        except EdgeAgentError as exc:
            await self._refuse_tracked(entry, exc)
            return
        except Exception:  # the entry is open: it must end in a reply, not hang
            log.exception("internal error admitting a task", task_id=request.id)
            await self._refuse_tracked(entry, EdgeAgentError(ErrorCode.INTERNAL, "internal error"))
            return
        # Recorded before it is queued: a crash from here on finds it `accepted`.
        await self._store.accept(request.id, fingerprint)
        if not self._queue.offer(job, request.priority):  # only admission fills the queue
            await self._refuse_tracked(entry, EdgeAgentError(ErrorCode.BUSY, "queue full"))
            return
        self._on_queued()

    def _job_for(self, request: Request, entry: InFlight) -> Job:
        spec = self.contracts.spec_for(request, self.cfg.actions)
        if self._paused is not None:
            raise EdgeAgentError(
                ErrorCode.BUSY, f"memory is short; try again later ({self._paused})"
            )
        if self._queue.full:
            self._counters.busy += 1
            raise EdgeAgentError(
                ErrorCode.BUSY, f"queue full ({self._queue.capacity} tasks waiting)"
            )
        now = self._clock()
        deadline_s = request.deadline_s or self.cfg.queue.default_deadline_s
        return Job(request, spec, entry, received=now, deadline=now + deadline_s)

    def _answer_from_store(
        self, record: TaskRecord, waiting: Waiting, fingerprint: str, *, redelivery: bool
    ) -> None:
        plan = Plan.from_record(record, redelivery=redelivery)
        if plan.idle:
            # The broker resent a task whose reply (and action) it already confirmed.
            self._delivery.acknowledge(waiting.message)
            return
        log.info("task answered from journal", task_id=record.id, redelivery=redelivery)
        entry = self._inflight.open(record.id, fingerprint, waiting)
        self._delivery.resume(entry, plan)

    def _route(self, message: Incoming, task_id: str | None, reply_to: str | None) -> ReplyRoute:
        return route(
            self._topics,
            task_id,
            response_topic=message.response_topic,
            correlation_data=message.correlation_data,
            reply_to=reply_to,
        )

    def _conflict(self, waiting: Waiting, request: Request) -> None:
        error = EdgeAgentError(
            ErrorCode.INVALID_REQUEST, f"id {request.id!r} was already used for a different task"
        )
        # The reply names no id: it must not be taken for the other task's answer.
        self._log_refusal(request.id, error)
        self._delivery.answer_once(waiting, ErrorReply.of(None, self.cfg.device.id, error))

    def _refuse_untracked(
        self, message: Incoming, task_id: str | None, reply_to: str | None, error: EdgeAgentError
    ) -> None:
        """A request that cannot be tracked (unparseable, or admission failed)."""
        self._log_refusal(task_id, error)
        waiting = Waiting(message, self._route(message, task_id, reply_to))
        self._delivery.answer_once(waiting, ErrorReply.of(task_id, self.cfg.device.id, error))

    async def _refuse_tracked(self, entry: InFlight, error: EdgeAgentError) -> None:
        """Refused before running: recorded, so a broker redelivery gets the same answer,
        while a client's re-send is admitted afresh."""
        self._log_refusal(entry.task_id, error)
        reply = ErrorReply.of(entry.task_id, self.cfg.device.id, error)
        await self._delivery.finish(entry, reply, replayable=False)

    def _log_refusal(self, task_id: str | None, error: EdgeAgentError) -> None:
        self._counters.failed += 1
        log.warning(
            "task",
            task_id=task_id,
            status="error",
            error_code=str(error.code),
            message=error.message,
            device_id=self.cfg.device.id,
        )
