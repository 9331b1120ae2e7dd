"""Admission: an incoming task message becomes a queued job, an answer from the store, or
a refusal — decided one message at a time, in arrival order.

    too large? -> parse -> id (given, or derived from the payload and its reply address)
    -> reply address allowed? (the reply policy) -> in flight? (join it, or refuse a
    different task under that id) -> in the store? (re-publish what the broker is missing;
    a retryable outcome runs again for a client's re-send; a task that died with the
    process too often is answered INTERNAL) -> contract (compiled off the loop)
    -> paused / queue full? -> accept record -> queue

Messages wait in a bounded queue because looking an id up in the store is a call to
the store's thread; taking them one at a time means two deliveries of one id can never
be admitted side by side. Anyone who can publish a task is untrusted: every path ends
in exactly one acknowledgement, after a reply, or in a deliberate non-ack (shutdown).
A bug on any path still ends in an INTERNAL reply and the ack (`admit`, `run`): a
message left unacknowledged would hold one of the broker's in-flight slots until the
next reconnect, and enough of them make the device deaf.

Replies go only where the reply policy allows (protocol.reply_policy): a request that
names a refused address (its `reply_to` or its MQTT v5 Response Topic) is answered
INVALID_REQUEST on the device's errors topic, and nothing is ever published to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.incoming import Incoming
from edgeagent.mqtt.limits import RECEIVE_MAXIMUM_LIMIT
from edgeagent.protocol.reply import ErrorReply, ReplyRoute, route
from edgeagent.protocol.reply_policy import ReplyPolicy, check_reply_topic
from edgeagent.protocol.request import Request, parse_request, salvage
from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline import crash_budget
from edgeagent.service.pipeline.contracts import ContractCache
from edgeagent.service.pipeline.delivery import Delivery, Plan
from edgeagent.service.pipeline.jobs import InFlight, InFlightRegistry, Job, Waiting
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.task_records import TaskRecord, TaskState
from edgeagent.service.views.telemetry import Counters

log = structlog.get_logger("edgeagent.service.pipeline.admission")
T = TypeVar("T")

# Tasks running at once: the worker hands the engine up to the batch rule's `parallel`
# queued jobs together, at most inference.batch_rule.MAX_PARALLEL
# (tests/unit/service/pipeline/test_admission.py keeps the two in step).
RUNNING_TASKS = 8
# Unacknowledged messages beyond the queue and the running tasks: replies waiting for
# their PUBACK, refusals and BUSY answers being sent, deliveries of an id in flight that
# wait for its reply, messages waiting for admission. With this margin a full queue
# still answers BUSY at once instead of the broker holding tasks back.
RECEIVE_MARGIN = 16
# Deliveries of one task id in flight held unacknowledged at once, each for its own reply
# address (Response Topic + Correlation Data): copies to a held address are acknowledged
# at once, so copies can never fill the receive window (see Admission._join).
COPY_ADDRESSES = 4


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


def derived_id(message: Incoming) -> str:
    """The id of a task sent without one: the same for every delivery of that message
    (payload + Response Topic + Correlation Data), so a redelivery is recognised."""
    digest = hashlib.sha256()
    for part in (
        message.payload,
        (message.response_topic or "").encode("utf-8", "surrogatepass"),
        message.correlation_data or b"",
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


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
        self._policy: ReplyPolicy = cfg.reply_policy()
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
        self._policy = cfg.reply_policy()
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

    async def settle(self) -> None:
        """Until every task whose contract was compiling is queued or refused."""
        while self._preparing:
            await asyncio.wait(set(self._preparing))

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
            self._refuse_untracked(message, None, self._address_route(message, None, None), error)
            return
        self._incoming.put_nowait(message)

    async def run(self) -> None:
        while True:
            message = await self._incoming.get()
            try:
                await self.admit(message)
            except Exception:  # admit's own last resort failed: the ack is what is left
                log.exception("admission failed twice; acknowledging the message")
                self._delivery.acknowledge(message)

    async def admit(self, message: Incoming) -> None:
        if self._closed:
            return  # not acked: the broker delivers it again after our restart
        try:
            await self._admit(message)
        except Exception:  # a bug here must not take the daemon down with one bad task
            log.exception("internal error admitting a task", topic=message.topic)
            if self._inflight.holding(message):
                return  # its entry's delivery answers and acknowledges it
            task_id, reply_to = salvage(message.payload, self.cfg.mqtt.max_payload_bytes)
            error = EdgeAgentError(ErrorCode.INTERNAL, "internal error")
            reply_route = self._address_route(message, task_id, reply_to)
            self._refuse_untracked(message, task_id, reply_route, error)

    # -- decisions -----------------------------------------------------------------------

    async def _admit(self, message: Incoming) -> None:
        request = self._parse(message)
        if request is None:
            return
        try:
            reply_route = self._route(message, request.id, request.reply_to)
        except EdgeAgentError as exc:
            # The address is refused: its error goes to the errors topic, never to it.
            self._refuse_untracked(message, request.id, ReplyRoute(self._topics.errors), exc)
            return
        fingerprint = request.fingerprint()
        waiting = Waiting(message, reply_route)
        entry = self._inflight.get(request.id)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                self._conflict(waiting, request)
            else:
                self._join(entry, waiting)
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
        await self._run(request, fingerprint, waiting, record)

    async def _run(
        self, request: Request, fingerprint: str, waiting: Waiting, record: TaskRecord | None
    ) -> None:
        """Queue the task, unless it is poison or the crash budget (crash_budget.py) is
        spent: then nothing runs, so no task can cost another restart meanwhile."""
        if record is not None and self._poison(record):
            await self._end_poison(record, waiting, fingerprint)
            return
        # Not recorded: an accepted task keeps its run count for when it comes again.
        if (cooldown := crash_budget.spent(self._store.death_ages())) is not None:
            self._refuse_untracked(waiting.message, request.id, waiting.route, cooldown)
            return
        # Runs that ended with the process: such a task runs alone (see Worker), so a
        # second abort is its own and not a neighbour's in a batch.
        aborts = record.runs if record is not None and record.state is TaskState.ACCEPTED else 0
        await self._queue_job(request, fingerprint, waiting, aborts)

    def _join(self, entry: InFlight, copy: Waiting) -> None:
        """Another delivery of a task in flight. Its reply is the one in progress, sent
        once to each distinct address; but a held copy is an unacknowledged message, and
        enough of them fill the broker's window: the device hears nothing else until the
        task ends (up to its deadline). So one delivery per address is held, and only the
        newest connection's (an ack on a lost connection is void: that one must not be
        the delivery that waits); a copy for an address already held is acknowledged at
        once (a client's re-send there gets the reply again if it was already sent), and
        addresses beyond COPY_ADDRESSES are answered BUSY.

        Exactly once holds: the held delivery stays unacknowledged until the reply is
        confirmed, so after a crash the broker delivers it again and the task store
        answers it."""
        message = copy.message
        held = next((i for i, w in enumerate(entry.waiting) if w.route == copy.route), None)
        if held is not None:
            kept = entry.waiting[held].message
            if kept.generation != message.generation:
                entry.waiting[held] = copy  # the old one's ack could not reach the broker
            elif kept.mid != message.mid:  # (the same mid on one connection: one message)
                # A client's re-send: if its address was already served it gets the
                # reply again (the kept delivery's ack still waits for the reply).
                if not message.dup:
                    entry.served.discard(copy.route)
                self._delivery.acknowledge(message)
            log.debug("task already in flight", task_id=entry.task_id, dup=message.dup)
            return
        if len(entry.waiting) < COPY_ADDRESSES:
            entry.waiting.append(copy)  # acknowledged after the reply in progress
            log.debug("task already in flight", task_id=entry.task_id, dup=message.dup)
            return
        error = EdgeAgentError(
            ErrorCode.BUSY,
            f"{len(entry.waiting)} deliveries of task {entry.task_id!r} with different reply "
            "addresses already wait for its reply",
        )
        self._refuse_untracked(message, entry.task_id, copy.route, error)

    def _parse(self, message: Incoming) -> Request | None:
        """The request with its id (given, or derived); None when it was refused."""
        limit = self.cfg.mqtt.max_payload_bytes
        if message.oversize is not None:  # the link dropped it: never read
            error = EdgeAgentError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload is {message.oversize} bytes, the limit is {limit}",
            )
            self._refuse_untracked(message, None, self._address_route(message, None, None), error)
            return None
        try:
            request = parse_request(message.payload, limit)
        except EdgeAgentError as exc:
            # salvage reads nothing over the limit, and its reply_to is policy-checked.
            task_id, reply_to = salvage(message.payload, limit)
            reply_route = self._address_route(message, task_id, reply_to)
            self._refuse_untracked(message, task_id, reply_route, exc)
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

    def _poison(self, record: TaskRecord) -> bool:
        """Accepted, and every run it started ended with the process, too often."""
        return record.state is TaskState.ACCEPTED and record.runs >= self.cfg.queue.max_task_aborts

    async def _end_poison(self, record: TaskRecord, waiting: Waiting, fingerprint: str) -> None:
        log.error(
            "task aborted the daemon too often; answered instead of run again",
            task_id=record.id,
            aborts=record.runs,
        )
        error = EdgeAgentError(
            ErrorCode.INTERNAL, f"task aborted the daemon {record.runs} times", aborts=record.runs
        )
        entry = self._inflight.open(record.id, fingerprint, waiting)
        # Final, unlike other INTERNAL errors: a re-send of this task gets this answer
        # instead of taking the daemon down again (until the store forgets it).
        await self._refuse_tracked(entry, error, replayable=True)

    async def _queue_job(
        self, request: Request, fingerprint: str, waiting: Waiting, aborts: int = 0
    ) -> None:
        entry = self._inflight.open(request.id, fingerprint, waiting)
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
                self._inflight.close(entry)  # stopping: left to the broker, as if not taken
                return
            # Recorded before it is queued: a crash from here on finds it `accepted`.
            await self._store.accept(request.id, entry.fingerprint)
            if not self._queue.offer(job, request.priority, order=arrival):
                raise EdgeAgentError(ErrorCode.BUSY, "queue full")  # only admission fills it
        except EdgeAgentError as exc:
            await self._refuse_tracked(entry, exc)
            return
        except asyncio.CancelledError:
            self._inflight.close(entry)
            raise
        except Exception:  # the entry is open: it must end in a reply, not hang
            log.exception("internal error admitting a task", task_id=request.id)
            await self._refuse_tracked(entry, EdgeAgentError(ErrorCode.INTERNAL, "internal error"))
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

    # -- where replies go ----------------------------------------------------------------

    def _route(self, message: Incoming, task_id: str | None, reply_to: str | None) -> ReplyRoute:
        """The reply's address; INVALID_REQUEST when the request names an address (either
        of them) the reply policy refuses."""
        if message.response_topic is not None:
            check_reply_topic(message.response_topic, self._policy, field="response_topic")
        if reply_to is not None:
            check_reply_topic(reply_to, self._policy, field="reply_to")
        return route(
            self._topics,
            task_id,
            response_topic=message.response_topic,
            correlation_data=message.correlation_data,
            reply_to=reply_to,
        )

    def _address_route(
        self, message: Incoming, task_id: str | None, reply_to: str | None
    ) -> ReplyRoute:
        """Where the refusal of a request that could not be read goes: its address if the
        policy allows it, else the errors topic (a salvaged id has the id pattern, so its
        results topic is always a valid topic of this device)."""
        try:
            return self._route(message, task_id, reply_to)
        except EdgeAgentError:
            return ReplyRoute(self._topics.errors)

    # -- refusals ------------------------------------------------------------------------

    def _conflict(self, waiting: Waiting, request: Request) -> None:
        error = EdgeAgentError(
            ErrorCode.INVALID_REQUEST, f"id {request.id!r} was already used for a different task"
        )
        # The reply names no id: it must not be taken for the other task's answer.
        self._log_refusal(request.id, error)
        self._delivery.answer_once(waiting, ErrorReply.of(None, self.cfg.device.id, error))

    def _refuse_untracked(
        self, message: Incoming, task_id: str | None, reply_route: ReplyRoute, error: EdgeAgentError
    ) -> None:
        """A request that cannot be tracked (unreadable, a refused address, or admission
        failed): answered once, not recorded."""
        self._log_refusal(task_id, error)
        waiting = Waiting(message, reply_route)
        self._delivery.answer_once(waiting, ErrorReply.of(task_id, self.cfg.device.id, error))

    async def _refuse_tracked(
        self, entry: InFlight, error: EdgeAgentError, *, replayable: bool = False
    ) -> None:
        """Refused before running: recorded, so a broker redelivery gets the same answer,
        while a client's re-send is admitted afresh (unless `replayable`)."""
        self._log_refusal(entry.task_id, error)
        reply = ErrorReply.of(entry.task_id, self.cfg.device.id, error)
        try:
            await self._delivery.finish(entry, reply, replayable=replayable)
        except Exception:  # a bug: the entry's messages must not stay unacknowledged
            log.exception("recording a refusal failed; acknowledging", task_id=entry.task_id)
            for waiting in self._inflight.close(entry):
                self._delivery.acknowledge(waiting.message)

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
