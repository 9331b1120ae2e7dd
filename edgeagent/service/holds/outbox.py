"""What holds owe the broker, published until confirmed and recorded, in order.

For a resolved hold (each step recorded before the next, so a restart resumes exactly
where the process stopped, from the store):

    the action message (confirmed / edited; until its PUBACK) -> mark it
    -> the operator's answer (when the command named an allowed response topic)
    -> acknowledge the command -> the follow-up reply on the task's reply routes
    -> mark it -> clear the retained notice -> mark it

so the confirm message is acknowledged only once the broker took the action and the
store knows it; after a crash the broker delivers the command again and the desk joins
it to this (or answers it from the store), and the action is never published twice.
A pending hold's notice is published retained and marked; its clearing waits for it, so
a slow notice can never land after its own clearing.

Publishing is delivery's (pipeline/publishing.py): QoS 1 until the PUBACK, retried while
paho's outgoing queue is full, refusals final, reported on the errors topic and recorded
as refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

import structlog

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import ErrorReply, ReplyRoute, encode
from edgeagent.protocol.reply_policy import ReplyPolicy
from edgeagent.protocol.topics import Topics
from edgeagent.service.holds import records
from edgeagent.service.holds.asyncholds import AsyncHoldStore
from edgeagent.service.holds.records import HoldRecord, HoldState
from edgeagent.service.pipeline.publishing import ConfirmedPublisher
from edgeagent.service.pipeline.task_records import Confirmation
from edgeagent.service.ports import Acknowledger

log = structlog.get_logger("edgeagent.service.holds.outbox")


@dataclass(frozen=True, slots=True)
class Asker:
    """An operator's command message: acknowledged once answered; its answer's address."""

    message: Incoming
    route: ReplyRoute | None  # an allowed MQTT v5 response topic, with correlation data


class Outbox:
    def __init__(
        self,
        *,
        publisher: ConfirmedPublisher,
        acks: Acknowledger,
        store: AsyncHoldStore,
        topics: Topics,
        device: str,
        policy: ReplyPolicy,
        on_dispatched: Callable[[str, str], None] | None = None,
    ) -> None:
        self._publisher = publisher
        self._acks = acks
        self._store = store
        self._topics = topics
        self._device = device
        self.policy = policy  # where follow-ups may go; the desk sets it on a reload
        # An action message the broker confirmed: (task id, payload), as delivery's
        # (Home Assistant's retained last_action, service/views/operators.py).
        self._on_dispatched = on_dispatched
        # Bounded by the commands the broker lets us hold unacknowledged, and the holds.
        self._tasks: set[asyncio.Task[None]] = set()
        self._notices: dict[str, asyncio.Task[None]] = {}
        # Resolutions whose action is not settled yet: their record once it is.
        self._dispatching: dict[str, asyncio.Future[HoldRecord]] = {}

    # -- entry points (event loop) -------------------------------------------------------

    def announce(self, record: HoldRecord) -> None:
        """A pending hold's retained notice on held/<task_id>."""
        task = self._spawn(self._announce(record))
        self._notices[record.task_id] = task
        task.add_done_callback(lambda _t: self._forget_notice(record.task_id, task))

    def publish_resolution(self, record: HoldRecord, asker: Asker | None = None) -> None:
        """Publish what a resolved hold owes; answer and acknowledge `asker` on the way."""
        if record.action_state is Confirmation.PENDING:
            self._dispatching[record.task_id] = asyncio.get_running_loop().create_future()
        self._spawn(self._publish_resolution(record, asker))

    def join(self, record: HoldRecord, asker: Asker) -> None:
        """A command the broker delivered again, that resolved `record` already: answered
        once the action is settled (it may be on its way now), then acknowledged."""
        self._spawn(self._join(record, asker))

    def refuse(self, asker: Asker, task_id: str | None, error: EdgeAgentError) -> None:
        """A command that resolved nothing: its typed error on the errors topic (and to
        its response topic), then the acknowledgement."""
        self._spawn(self._refuse(asker, task_id, error))

    def acknowledge(self, message: Incoming) -> None:
        try:
            self._acks.ack(message)
        except Exception:  # the link's to report; the broker redelivers what stays unacked
            log.exception("acknowledging a hold command failed", mid=message.mid)

    async def wait_idle(self, *, within_s: float) -> bool:
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=within_s)
        return not pending

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- the steps -------------------------------------------------------------------------

    def _spawn(self, body: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(body)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hold publishing crashed", exc_info=task.exception())

    def _forget_notice(self, task_id: str, task: asyncio.Task[None]) -> None:
        if self._notices.get(task_id) is task:
            del self._notices[task_id]

    async def _announce(self, record: HoldRecord) -> None:
        topic = self._topics.held(record.task_id)
        refused = await self._publisher.publish(
            record.task_id, topic, record.draft.notice, None, "hold notice", retain=True
        )
        state = Confirmation.REFUSED if refused else Confirmation.CONFIRMED
        await self._store.mark(record.task_id, "notice_state", state, hold=HoldState.PENDING)

    async def _publish_resolution(self, record: HoldRecord, asker: Asker | None) -> None:
        task_id = record.task_id
        try:
            record = await self._dispatch(record)
            if asker is not None:
                await self._answer(asker, task_id, records.answer(record))
        except Exception as exc:  # a bug: the command is still acknowledged (a held slot)
            log.exception("settling a hold failed", task_id=task_id)
            self._publisher.report(task_id, EdgeAgentError(ErrorCode.INTERNAL, type(exc).__name__))
        finally:
            # Cancelled (shutdown): the command stays unacknowledged, the broker brings it
            # back and the store says what is left.
            waiting = self._dispatching.pop(task_id, None)
            if waiting is not None and not waiting.done():
                waiting.cancel()
        if asker is not None:
            self.acknowledge(asker.message)
        await self._follow_up(record)
        await self._clear(record)

    async def _dispatch(self, record: HoldRecord) -> HoldRecord:
        """The action message, once: published only while the store says it is owed."""
        if record.action_state is not Confirmation.PENDING:
            return record
        task_id = record.task_id
        refused = await self._publisher.publish(
            task_id,
            record.draft.action_topic,
            record.action_message(self._device),
            None,
            "action",
        )
        state = Confirmation.REFUSED if refused else Confirmation.CONFIRMED
        await self._store.mark(task_id, "action_state", state, hold=HoldState.RESOLVED)
        settled = HoldRecord(
            record.draft,
            record.state,
            record.seq,
            record.notice_state,
            record.resolved,
            state,
            record.followup_state,
        )
        log.info("held action dispatched", task_id=task_id, refused=refused)
        if not refused and self._on_dispatched is not None:
            try:
                self._on_dispatched(task_id, record.action_message(self._device))
            except Exception:  # a view must never cost the resolution its ack
                log.exception("dispatch observer failed", task_id=task_id)
        waiting = self._dispatching.pop(task_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(settled)
        return settled

    async def _join(self, record: HoldRecord, asker: Asker) -> None:
        waiting = self._dispatching.get(record.task_id)
        try:
            if waiting is not None:
                record = await asyncio.shield(waiting)
            await self._answer(asker, record.task_id, records.answer(record))
        except asyncio.CancelledError:
            if waiting is None or not waiting.cancelled():
                raise  # shutdown: left to the broker
            # The resolution stopped (shutdown) before its action was settled.
            return
        except Exception:
            log.exception("answering a repeated hold command failed", task_id=record.task_id)
        self.acknowledge(asker.message)

    async def _answer(self, asker: Asker, task_id: str | None, payload: str) -> None:
        if asker.route is None:
            return
        route = asker.route
        await self._publisher.publish(
            task_id, route.topic, payload, route.correlation_data, "answer"
        )

    async def _refuse(self, asker: Asker, task_id: str | None, error: EdgeAgentError) -> None:
        reply = ErrorReply.of(task_id, self._device, error)
        try:
            await self._publisher.publish(
                task_id, self._topics.errors, encode(reply), None, "error"
            )
            await self._answer(asker, task_id, encode(reply))
        except Exception:  # a bug: the command is still acknowledged
            log.exception("answering a hold command failed", task_id=task_id)
        self.acknowledge(asker.message)

    async def _follow_up(self, record: HoldRecord) -> None:
        """The requester's follow-up on the task's reply routes the policy still allows."""
        if record.followup_state is not Confirmation.PENDING:
            return
        payload = records.followup(record, degraded=self._store.degraded)
        policy = self.policy
        refused = False
        for route in record.draft.routes:
            if (problem := policy.refusal(route.topic)) is not None:
                log.warning("follow-up route no longer allowed", topic=route.topic, why=problem)
                continue
            refused |= await self._publisher.publish(
                record.task_id, route.topic, payload, route.correlation_data, "follow-up"
            )
        state = Confirmation.REFUSED if refused else Confirmation.CONFIRMED
        await self._store.mark(record.task_id, "followup_state", state, hold=HoldState.RESOLVED)

    async def _clear(self, record: HoldRecord) -> None:
        """The retained notice cleared (a zero-length retained message), after it was
        published if that is still in flight."""
        if record.notice_state is not Confirmation.PENDING:
            return
        announcing = self._notices.get(record.task_id)
        if announcing is not None:
            await asyncio.wait([announcing])
        topic = self._topics.held(record.task_id)
        refused = await self._publisher.publish(
            record.task_id, topic, "", None, "hold notice", retain=True
        )
        state = Confirmation.REFUSED if refused else Confirmation.CONFIRMED
        await self._store.mark(record.task_id, "notice_state", state, hold=HoldState.RESOLVED)
