"""Admission: an incoming task message becomes a queued job, an answer from the store, or
a refusal — decided one message at a time, in arrival order.

    too large? -> parse -> id (given, or derived from the payload and its reply address)
    -> reply address allowed? (reading.py: the reply policy) -> in flight? (join its
    ledger entry, or refuse a different task under that id) -> in the store? (verdicts.py:
    re-publish what the broker is missing; a retryable outcome runs again for a client's
    re-send; a task that died with the process too often is answered INTERNAL; the crash
    budget) -> contract (compiled off the loop) -> paused / queue full? -> accept record
    -> queue

Messages wait in a bounded queue because looking an id up in the store is a call to
the store's thread; taking them one at a time means two deliveries of one id can never
be admitted side by side. Anyone who can publish a task is untrusted: every path ends
in exactly one acknowledgement, after a reply, or in a deliberate non-ack (shutdown);
the ledger (ledger.py) gives them. A bug on any path still ends in an INTERNAL reply and
the ack (`admit`, `run`): a message left unacknowledged would hold one of the broker's
in-flight slots until the next reconnect, and enough of them make the device deaf.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.incoming import Incoming
from edgeagent.mqtt.limits import RECEIVE_MAXIMUM_LIMIT
from edgeagent.protocol.request import Request, salvage
from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline.contracts import ContractCache
from edgeagent.service.pipeline.delivery import Replier
from edgeagent.service.pipeline.jobs import Job
from edgeagent.service.pipeline.ledger import InFlight, Ledger, Waiting
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.reading import ReplyAddresses, Unreadable, read_request
from edgeagent.service.pipeline.refusals import Refusals
from edgeagent.service.pipeline.task_records import TaskRecord
from edgeagent.service.pipeline.verdicts import AnswerFromStore, CoolDown, Poison, verdict
from edgeagent.service.views.telemetry import Counters

log = structlog.get_logger("edgeagent.service.pipeline.admission")

# Tasks running at once: the worker hands the engine up to the batch rule's `parallel`
# queued jobs together, at most inference.batch_rule.MAX_PARALLEL
# (tests/unit/service/pipeline/test_admission.py keeps the two in step).
RUNNING_TASKS = 8
# Unacknowledged messages beyond the queue and the running tasks: replies waiting for
# their PUBACK, refusals and BUSY answers being sent, deliveries of an id in flight that
# wait for its reply, messages waiting for admission. With this margin a full queue
# still answers BUSY at once instead of the broker holding tasks back.
RECEIVE_MARGIN = 16


def receive_window(cfg: Config) -> int:
    """How many unacknowledged task messages the daemon holds: its MQTT v5 Receive Maximum.

    The queue's capacity, the running tasks and a margin (RECEIVE_MARGIN). More would buy
    nothing: tasks beyond the queue get BUSY at once anyway, while every message held
    costs up to `max_payload_bytes` of memory. Fewer would let the broker hold tasks back
    before the queue is full, and answer nothing while it does.
    """
    return min(cfg.queue.size + RUNNING_TASKS + RECEIVE_MARGIN, RECEIVE_MAXIMUM_LIMIT)


class RecordLookup(Protocol):
    """The part of AsyncTaskStore admission reads and writes."""

    async def get(self, task_id: str) -> TaskRecord | None: ...
    async def accept(self, task_id: str, fingerprint: str) -> None: ...
    def death_ages(self) -> list[float]: ...


class Admission:
    def __init__(
        self,
        cfg: Config,
        *,
        topics: Topics,
        queue: TaskQueue[Job],
        ledger: Ledger,
        store: RecordLookup,
        delivery: Replier,
        counters: Counters,
        on_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        contracts: ContractCache | None = None,
    ) -> None:
        self.cfg = cfg
        self._queue = queue
        self._ledger = ledger
        self._store = store
        self._delivery = delivery
        self._counters = counters
        self._on_queued = on_queued
        self._clock = clock
        self.contracts = contracts or ContractCache()
        self._addresses = ReplyAddresses(topics, cfg.reply_policy())
        self._refusals = Refusals(
            delivery=delivery, ledger=ledger, counters=counters, device=cfg.device.id
        )
        # The broker never has more than the receive window unacknowledged with us; twice
        # that leaves room for messages of an old connection still being handled.
        self._incoming: asyncio.Queue[Incoming] = asyncio.Queue(2 * receive_window(cfg))
        self._paused: str | None = None
        self._closed = False
        self._arrivals = itertools.count()
        # Tasks whose contract compiles (or waits for a compile thread): each holds one
        # unacknowledged message, so the receive window bounds them.
        self._preparing: set[asyncio.Task[None]] = set()

    # -- control (from the daemon) -------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self._addresses.policy = cfg.reply_policy()
        self.contracts.clear()  # the catalog or the schema limits may have changed

    def pause(self, reason: str) -> None:
        """Memory is short: new tasks get BUSY."""
        self._paused = reason

    def resume(self) -> None:
        self._paused = None

    def close(self) -> None:
        """Shutdown: leave new messages unacknowledged for the broker to deliver again."""
        self._closed = True
        for task in self._preparing:  # their contracts compile on: nobody waits for them
            task.cancel()

    # -- intake --------------------------------------------------------------------------

    def offer(self, message: Incoming) -> None:
        """From the link, on the event loop."""
        if self._closed:
            return
        if self._incoming.full():
            # Only a broker that ignores Receive Maximum (or a 3.1.1 broker allowing more
            # in flight than the queue holds) gets here. Answered without reading the
            # payload, and acknowledged: left alone, it would hold an in-flight slot.
            log.error("incoming queue full; message answered BUSY", topic=message.topic)
            error = EdgeAgentError(ErrorCode.BUSY, "too many messages waiting for admission")
            reply_route = self._addresses.route_or_errors(message, None, None)
            self._refusals.untracked(message, None, reply_route, error)
            return
        self._incoming.put_nowait(message)

    async def run(self) -> None:
        while True:
            message = await self._incoming.get()
            try:
                await self.admit(message)
            except Exception:  # admit's own last resort failed: the ack is what is left
                log.exception("admission failed twice; acknowledging the message")
                self._ledger.acknowledge_untracked(message)

    async def admit(self, message: Incoming) -> None:
        if self._closed:
            return  # not acked: the broker delivers it again after our restart
        try:
            await self._admit(message)
        except Exception:  # a bug here must not take the daemon down with one bad task
            log.exception("internal error admitting a task", topic=message.topic)
            if self._ledger.holding(message):
                return  # its entry's delivery answers and acknowledges it
            task_id, reply_to = salvage(message.payload, self.cfg.mqtt.max_payload_bytes)
            error = EdgeAgentError(ErrorCode.INTERNAL, "internal error")
            reply_route = self._addresses.route_or_errors(message, task_id, reply_to)
            self._refusals.untracked(message, task_id, reply_route, error)

    # -- decisions -----------------------------------------------------------------------

    async def _admit(self, message: Incoming) -> None:
        request = self._parse(message)
        if request is None:
            return
        try:
            reply_route = self._addresses.route(message, request.id, request.reply_to)
        except EdgeAgentError as exc:
            # The address is refused: its error goes to the errors topic, never to it.
            self._refusals.untracked(message, request.id, self._addresses.errors, exc)
            return
        fingerprint = request.fingerprint()
        waiting = Waiting(message, reply_route)
        entry = self._ledger.get(request.id)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                self._refusals.conflict(waiting, request)
            elif (busy := self._ledger.join(entry, waiting)) is not None:
                self._refusals.untracked(message, entry.task_id, reply_route, busy)
            return
        # Only admission opens entries and it handles one message at a time, so the id
        # cannot come in flight during this lookup.
        record = await self._store.get(request.id)
        if record is not None and record.fingerprint != fingerprint:
            self._refusals.conflict(waiting, request)
            return
        decided = verdict(
            record,
            redelivery=message.dup,
            max_task_aborts=self.cfg.queue.max_task_aborts,
            death_ages=self._store.death_ages,
        )
        if isinstance(decided, AnswerFromStore):
            self._answer_from_store(request.id, decided, waiting, fingerprint)
        elif isinstance(decided, Poison):
            entry = self._ledger.open(request.id, fingerprint, waiting)
            await self._refusals.poison(entry, decided)
        elif isinstance(decided, CoolDown):
            self._refusals.untracked(message, request.id, reply_route, decided.error)
        else:
            await self._queue_job(request, fingerprint, waiting, decided.aborts)

    def _parse(self, message: Incoming) -> Request | None:
        """The request with its id (given, or derived); None when it was refused."""
        read = read_request(message, self.cfg.mqtt.max_payload_bytes)
        if isinstance(read, Unreadable):
            reply_route = self._addresses.route_or_errors(message, read.task_id, read.reply_to)
            self._refusals.untracked(message, read.task_id, reply_route, read.error)
            return None
        return read

    def _answer_from_store(
        self, task_id: str, answer: AnswerFromStore, waiting: Waiting, fingerprint: str
    ) -> None:
        if answer.plan.idle:
            # The broker resent a task whose reply (and action) it already confirmed.
            self._ledger.acknowledge_untracked(waiting.message)
            return
        log.info("task answered from journal", task_id=task_id, redelivery=waiting.message.dup)
        entry = self._ledger.open(task_id, fingerprint, waiting)
        self._delivery.resume(entry, answer.plan)

    # -- queueing ------------------------------------------------------------------------

    async def _queue_job(
        self, request: Request, fingerprint: str, waiting: Waiting, aborts: int = 0
    ) -> None:
        entry = self._ledger.open(request.id, fingerprint, waiting)
        # Its place in the queue is its arrival, also when its contract compiles while
        # later messages are admitted.
        arrival = next(self._arrivals)
        if self.contracts.ready(request, self.cfg.actions):
            await self._prepare(request, entry, arrival, aborts)  # a dictionary lookup away
            return
        # Compiling takes a thread and may take seconds: admission goes on with the next
        # messages meanwhile. The entry is open, so another delivery of this id joins it.
        task = asyncio.create_task(self._prepare(request, entry, arrival, aborts))
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def _prepare(
        self, request: Request, entry: InFlight, arrival: int, aborts: int = 0
    ) -> None:
        """Contract, checks, accept record, queue; or the refusal. Never raises but a
        cancellation (shutdown: its deliveries go back to the broker)."""
        try:
            job = await self._job_for(request, entry, aborts)
            if self._closed:
                self._ledger.hand_back(entry)  # stopping: left to the broker, as if not taken
                return
            # Recorded before it is queued: a crash from here on finds it `accepted`.
            await self._store.accept(request.id, entry.fingerprint)
            if not self._queue.offer(job, request.priority, order=arrival):
                raise EdgeAgentError(ErrorCode.BUSY, "queue full")  # only admission fills it
        except EdgeAgentError as exc:
            await self._refusals.tracked(entry, exc)
            return
        except asyncio.CancelledError:
            self._ledger.hand_back(entry)
            raise
        except Exception:  # the entry is open: it must end in a reply, not hang
            log.exception("internal error admitting a task", task_id=request.id)
            error = EdgeAgentError(ErrorCode.INTERNAL, "internal error")
            await self._refusals.tracked(entry, error)
            return
        try:
            self._on_queued()
        except Exception:  # the status line is not worth a task
            log.exception("on_queued failed", task_id=request.id)

    async def _job_for(self, request: Request, entry: InFlight, aborts: int = 0) -> Job:
        spec = await self.contracts.spec_for(
            request, self.cfg.actions, self.cfg.schema_limits, reason=self.cfg.model.reason
        )
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
        return Job(request, spec, entry, received=now, deadline=now + deadline_s, aborts=aborts)
