"""Refusals at admission: a typed error reply, one ack, the `task` log line and the count.

Two kinds, by whether the message could be tracked:

* untracked (unreadable, a refused address, a conflicting id, BUSY before any entry,
  or admission itself failed): answered once and acknowledged, nothing recorded;
* tracked (an entry is open: refused while its contract compiled or it was queued, or
  poison): recorded like any outcome, so a broker redelivery gets the same answer, and
  delivered through the entry, whose close acknowledges every delivery of the id.
"""

from __future__ import annotations

import structlog

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import ErrorReply, ReplyRoute
from edgeagent.protocol.request import Request
from edgeagent.service.pipeline.delivery import Replier
from edgeagent.service.pipeline.ledger import InFlight, Ledger, Waiting
from edgeagent.service.pipeline.verdicts import Poison
from edgeagent.service.views.telemetry import Counters

# Admission's logger: refusals are admission's decisions, and their log lines keep its name.
log = structlog.get_logger("edgeagent.service.pipeline.admission")


class Refusals:
    def __init__(
        self, *, delivery: Replier, ledger: Ledger, counters: Counters, device: str
    ) -> None:
        self._delivery = delivery
        self._ledger = ledger
        self._counters = counters
        self._device = device

    def untracked(
        self, message: Incoming, task_id: str | None, reply_route: ReplyRoute, error: EdgeAgentError
    ) -> None:
        """A request that cannot be tracked: answered once, not recorded."""
        self._log(task_id, error)
        waiting = Waiting(message, reply_route)
        self._delivery.answer_once(waiting, ErrorReply.of(task_id, self._device, error))

    def conflict(self, waiting: Waiting, request: Request) -> None:
        """An id in use (in flight or in the store) sent with a different task."""
        error = EdgeAgentError(
            ErrorCode.INVALID_REQUEST, f"id {request.id!r} was already used for a different task"
        )
        # The reply names no id: it must not be taken for the other task's answer.
        self._log(request.id, error)
        self._delivery.answer_once(waiting, ErrorReply.of(None, self._device, error))

    async def tracked(
        self, entry: InFlight, error: EdgeAgentError, *, replayable: bool = False
    ) -> None:
        """Refused before running: recorded, so a broker redelivery gets the same answer,
        while a client's re-send is admitted afresh (unless `replayable`)."""
        self._log(entry.task_id, error)
        reply = ErrorReply.of(entry.task_id, self._device, error)
        try:
            await self._delivery.finish(entry, reply, replayable=replayable)
        except Exception:  # a bug: the entry's messages must not stay unacknowledged
            log.exception("recording a refusal failed; acknowledging", task_id=entry.task_id)
            self._ledger.close(entry)

    async def poison(self, entry: InFlight, poison: Poison) -> None:
        log.error(
            "task aborted the daemon too often; answered instead of run again",
            task_id=entry.task_id,
            aborts=poison.aborts,
        )
        # Final, unlike other INTERNAL errors: a re-send of this task gets this answer
        # instead of taking the daemon down again (until the store forgets it).
        await self.tracked(entry, poison.error, replayable=True)

    def _log(self, task_id: str | None, error: EdgeAgentError) -> None:
        self._counters.failed += 1
        log.warning(
            "task",
            task_id=task_id,
            status="error",
            error_code=str(error.code),
            message=error.message,
            device_id=self._device,
        )
