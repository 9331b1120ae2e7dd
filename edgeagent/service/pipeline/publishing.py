"""Publishing until the broker answers: what delivery and the holds share.

A QoS 1 publish is retried while paho's outgoing queue is full (OutgoingQueueFull: the
broker is slow or away) and waited for until its PUBACK, however long the broker takes;
paho resends an unconfirmed publish after a reconnect, so nothing here publishes a
message twice. A refusal (a PUBACK reason code >= 0x80, or the link's own PublishInvalid
for a topic or payload that can never be sent) is final: logged, reported on the errors
topic as REPLY_REFUSED, and returned to the caller, which records it.
"""

from __future__ import annotations

import asyncio

import structlog

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.refusals import OutgoingQueueFull, PublishInvalid, PublishRefused
from edgeagent.protocol.reply import ErrorReply, encode
from edgeagent.protocol.topics import Topics
from edgeagent.service.ports import Publisher

log = structlog.get_logger("edgeagent.service.pipeline.publishing")

UNCONFIRMED_LOG_S = 30.0  # how often a publish still waiting for its PUBACK is logged
QUEUE_FULL_BACKOFF_S = 1.0  # paho's outgoing queue is full: try again after this


class ConfirmedPublisher:
    def __init__(
        self,
        *,
        link: Publisher,
        topics: Topics,
        device: str,
        unconfirmed_log_s: float = UNCONFIRMED_LOG_S,
        queue_full_backoff_s: float = QUEUE_FULL_BACKOFF_S,
    ) -> None:
        self._link = link
        self._topics = topics
        self._device = device
        self._unconfirmed_log_s = unconfirmed_log_s
        self._queue_full_backoff_s = queue_full_backoff_s

    async def publish(
        self,
        task_id: str | None,
        topic: str,
        payload: str,
        correlation: bytes | None,
        what: str,
        *,
        retain: bool = False,
    ) -> bool:
        """QoS 1 until the broker answers; True if it (or the link) refused it."""
        while True:
            try:
                future = self._link.publish(
                    topic, payload, retain=retain, correlation_data=correlation
                )
                await self._confirmed(future, task_id, topic)
            except PublishRefused as refusal:
                self._refused(task_id, topic, what, refusal)
                return True
            except OutgoingQueueFull:
                # Not a refusal: the broker is slow or away, and paho's queue drains
                # when it takes messages again.
                log.warning("mqtt outgoing queue full; retrying", task_id=task_id, topic=topic)
                await asyncio.sleep(self._queue_full_backoff_s)
                continue
            except Exception as exc:  # raised by the link itself: this publish cannot be sent
                problem = f"{type(exc).__name__}: {exc}"
                self._refused(task_id, topic, what, PublishInvalid(topic, problem))
                return True
            return False

    async def _confirmed(
        self, future: asyncio.Future[None], task_id: str | None, topic: str
    ) -> None:
        waited = 0.0
        while True:
            try:
                # asyncio.timeout: unlike 3.11's wait_for it never swallows a cancellation.
                async with asyncio.timeout(self._unconfirmed_log_s):
                    await asyncio.shield(future)
            except TimeoutError:
                waited += self._unconfirmed_log_s
                log.info("publish not confirmed yet", task_id=task_id, topic=topic, waited_s=waited)
                continue
            return

    def _refused(self, task_id: str | None, topic: str, what: str, refusal: PublishRefused) -> None:
        log.error(
            "broker refused a publish",
            what=what,
            task_id=task_id,
            topic=topic,
            reason_code=refusal.reason_code,
            reason=refusal.reason,
        )
        if topic == self._topics.errors:
            return  # the report would go where the refusal happened
        who = "the link" if isinstance(refusal, PublishInvalid) else "the broker"
        self.report(
            task_id,
            EdgeAgentError(
                ErrorCode.REPLY_REFUSED,
                f"{who} refused the {what} on {topic}: {refusal.reason}",
                topic=topic,
                reason_code=refusal.reason_code,
            ),
        )

    def report(self, task_id: str | None, error: EdgeAgentError) -> None:
        """Best effort, on the errors topic: nothing waits for it."""
        report = ErrorReply.of(task_id, self._device, error)
        try:
            future = self._link.publish(self._topics.errors, encode(report))
        except Exception:  # a report must never take its task's ack with it
            log.exception("error report not published", task_id=task_id)
            return
        future.add_done_callback(_report_done)


def _report_done(future: asyncio.Future[None]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        log.warning("refusal report not delivered", error=str(exc))
