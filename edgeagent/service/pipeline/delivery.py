"""Delivery: a finished task's reply and action reach the broker, then its messages are acked.

For one task id, in this order:

    store the outcome -> publish the action (dispatch = true, not held) until the
    broker confirms (or refuses) it -> mark it -> publish the reply -> mark it
    -> close the id's ledger entry: every delivery that waited for this reply is
       acknowledged (ledger.py)

so a crash at any point leaves the task message unacknowledged and the store knows
exactly what the broker already has: the redelivery publishes only what is missing.
The action goes first so that the reply tells what the broker answered: `dispatched`
stays true only when it confirmed the action message; when it refused it, the reply
says `"dispatched": false` and `dispatch_refused` (`refused_dispatch`, the same bytes
on a redelivery or re-send, derived from the stored reply and the action's state).
A refusal (PUBACK reason code >= 0x80) is final: logged with its reason, reported on
the errors topic, recorded in the store, and the task is acknowledged (sending the
same message again would be refused again).

What a publish cannot tell: a crash between the broker's PUBACK and the store's
commit leaves the reply marked pending, so its redelivery sends it once more.

Every delivery ends in its acks, whatever happens on the way: a publish the link
refuses itself (PublishInvalid: a topic or payload that can never be sent) is final like
a broker's refusal, and an unexpected exception (a bug) is logged, reported on the errors
topic and still acknowledged, since a message left unacknowledged would hold one of the
broker's in-flight slots until the next reconnect and come back after it. Only a
cancellation (shutdown) leaves messages to the broker on purpose.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Protocol

import structlog

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.reply import (
    ActionMessage,
    ErrorReply,
    OkReply,
    Reply,
    encode,
)
from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline.ledger import InFlight, Ledger, Waiting
from edgeagent.service.pipeline.plan import Plan, refused_dispatch
from edgeagent.service.pipeline.publishing import (
    QUEUE_FULL_BACKOFF_S,
    UNCONFIRMED_LOG_S,
    ConfirmedPublisher,
)
from edgeagent.service.pipeline.task_records import Confirmation, Outcome
from edgeagent.service.ports import Publisher

log = structlog.get_logger("edgeagent.service.pipeline.delivery")


class OutcomeStore(Protocol):
    """The part of AsyncTaskStore delivery writes to."""

    @property
    def degraded(self) -> str | None: ...
    async def finish(self, task_id: str, fingerprint: str, outcome: Outcome) -> None: ...
    async def mark_reply(self, task_id: str, state: Confirmation) -> None: ...
    async def mark_action(self, task_id: str, state: Confirmation) -> None: ...


class Finisher(Protocol):
    """What the worker hands a task's outcome to (Delivery)."""

    async def finish(
        self,
        entry: InFlight,
        reply: Reply,
        action: ActionMessage | None = None,
        *,
        replayable: bool = True,
    ) -> None: ...


class Replier(Finisher, Protocol):
    """What admission answers through (Delivery): also replies from the store and
    replies that are not recorded."""

    def resume(self, entry: InFlight, plan: Plan) -> None: ...
    def answer_once(self, waiting: Waiting, reply: ErrorReply) -> None: ...


class Delivery:
    def __init__(
        self,
        *,
        link: Publisher,
        store: OutcomeStore,
        ledger: Ledger,
        topics: Topics,
        device: str,
        unconfirmed_log_s: float = UNCONFIRMED_LOG_S,
        queue_full_backoff_s: float = QUEUE_FULL_BACKOFF_S,
        on_reply: Callable[[Reply], None] | None = None,
        on_dispatched: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._topics = topics
        self._device = device
        self._publisher = ConfirmedPublisher(
            link=link,
            topics=topics,
            device=device,
            unconfirmed_log_s=unconfirmed_log_s,
            queue_full_backoff_s=queue_full_backoff_s,
        )
        # Every task's end passes here once (answered, failed or refused): the metrics.
        self._on_reply = on_reply
        # Every action message the broker confirmed: (task id, its payload), for the
        # retained last_action (service/views/operators.py).
        self._on_dispatched = on_dispatched
        # Bounded by the broker's window of unacknowledged task messages.
        self._tasks: set[asyncio.Task[None]] = set()

    # -- entry points ------------------------------------------------------------------

    async def finish(
        self,
        entry: InFlight,
        reply: Reply,
        action: ActionMessage | None = None,
        *,
        replayable: bool = True,
    ) -> None:
        """Record a task's outcome, then deliver it in the background.

        A held action (the reply says `held`, service/pipeline/dispatch.py) has no action message:
        it is stored without one, so no redelivery or re-send can ever dispatch it.
        """
        if action is not None and isinstance(reply, OkReply) and reply.held:
            log.error("a held action was handed to delivery; not dispatched", task_id=reply.id)
            action = None
        self._observe(reply)
        degraded_before = self._store.degraded is not None
        stored = dataclasses.replace(reply, exactly_once=False) if degraded_before else reply
        outcome = Outcome(
            encode(stored),
            replayable,
            self._topics.action(action.name) if action is not None else None,
            encode(action) if action is not None else None,
        )
        await self._store.finish(entry.task_id, entry.fingerprint, outcome)
        payload = outcome.reply
        if self._store.degraded is not None and not degraded_before:
            payload = encode(dataclasses.replace(reply, exactly_once=False))
        plan = Plan(
            entry.task_id, payload, action_topic=outcome.action_topic, action=outcome.action
        )
        self._spawn(self._deliver(entry, plan))

    def resume(self, entry: InFlight, plan: Plan) -> None:
        """Deliver what the store says is still missing (a redelivery or re-send)."""
        self._spawn(self._deliver(entry, plan))

    def answer_once(self, waiting: Waiting, reply: ErrorReply) -> None:
        """A reply that is not recorded (a request too broken to track, or an id that
        belongs to another task): publish it, then acknowledge."""
        self._observe(reply)
        self._spawn(self._answer_once(waiting, reply))

    async def wait_idle(self, *, within_s: float) -> bool:
        """Shutdown: wait for deliveries in progress; False if some did not finish."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=within_s)
        return not pending

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- the steps -----------------------------------------------------------------------

    def _observe(self, reply: Reply) -> None:
        if self._on_reply is None:
            return
        try:
            self._on_reply(reply)
        except Exception:  # the metrics must never cost a task its reply or its ack
            log.exception("reply observer failed", task_id=reply.id)

    def _dispatched(self, task_id: str, action: str) -> None:
        if self._on_dispatched is None:
            return
        try:
            self._on_dispatched(task_id, action)
        except Exception:  # Home Assistant's view must never cost a task its reply
            log.exception("dispatch observer failed", task_id=task_id)

    def _spawn(self, body: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(body)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery crashed", exc_info=task.exception())

    async def _deliver(self, entry: InFlight, plan: Plan) -> None:
        try:
            await self._deliver_steps(entry, plan)
        except Exception as exc:
            # A bug: whatever was published stays published, the store keeps the outcome
            # for a re-send; the messages are acknowledged so none holds a broker slot.
            log.exception("delivery failed; acknowledging its messages", task_id=entry.task_id)
            self._report(entry.task_id, EdgeAgentError(ErrorCode.INTERNAL, type(exc).__name__))
            self._ledger.close(entry)
        finally:
            # Cancelled (shutdown): the deliveries stay unacknowledged and come back
            # from the broker; the id must not stay in flight meanwhile. (A no-op once
            # the entry is closed.)
            self._ledger.hand_back(entry)

    async def _deliver_steps(self, entry: InFlight, plan: Plan) -> None:
        task_id = entry.task_id
        reply = plan.reply
        if plan.action_topic is not None and plan.action is not None:
            # Before the reply, which then says what the broker answered.
            refused = await self._publish(task_id, plan.action_topic, plan.action, None, "action")
            state = Confirmation.REFUSED if refused else Confirmation.CONFIRMED
            await self._store.mark_action(task_id, state)
            if refused:
                reply = refused_dispatch(reply, plan.action_topic)
            else:
                self._dispatched(task_id, plan.action)
        if not plan.send_reply:
            entry.served.update(entry.routes())
        if plan.send_reply:
            refused = await self._send_reply(entry, reply)
            state = Confirmation.REFUSED if refused else Confirmation.CONFIRMED
            await self._store.mark_reply(task_id, state)
        # Deliveries that joined meanwhile with a new address, or a client's re-send to a
        # served one, get the reply too; no await between the last check and closing the
        # entry, so none is missed.
        await self._send_reply(entry, reply)
        self._ledger.close(entry)

    async def _send_reply(self, entry: InFlight, payload: str) -> bool:
        """Publish to every waiting address not yet served; True if one refused it."""
        refused = False
        while todo := entry.unserved():
            for reply_route in todo:
                entry.served.add(reply_route)
                refused |= await self._publish(
                    entry.task_id, reply_route.topic, payload, reply_route.correlation_data, "reply"
                )
        return refused

    async def _publish(
        self, task_id: str | None, topic: str, payload: str, correlation: bytes | None, what: str
    ) -> bool:
        """QoS 1 until the broker answers; True if it refused (publishing.py)."""
        return await self._publisher.publish(task_id, topic, payload, correlation, what)

    def _report(self, task_id: str | None, error: EdgeAgentError) -> None:
        self._publisher.report(task_id, error)

    async def _answer_once(self, waiting: Waiting, reply: ErrorReply) -> None:
        reply_route = waiting.route
        try:
            if self._store.degraded is not None:
                reply = dataclasses.replace(reply, exactly_once=False)
            await self._publish(
                reply.id, reply_route.topic, encode(reply), reply_route.correlation_data, "reply"
            )
        except Exception:  # a bug: the message is still acknowledged (see the module doc)
            log.exception("answering a refused task failed; acknowledging it", task_id=reply.id)
        self._ledger.acknowledge_untracked(waiting.message)
