"""The hold desk: held actions become pending holds that operators confirm, edit or reject.

    worker: a held `dispatch = true` answer -> prepare (hold `opening`) -> the task's reply
    stored (delivery) -> open (`pending`, notice on held/<task_id>, retained)
    link: held/<id|latest>/confirm|reject -> intake (bounded) -> one command at a time:
    parse -> the hold -> decide -> commit -> outbox (action, answer + ack, follow-up,
    notice cleared); expiry and `max_pending_holds` resolve holds the same way

Decisions are taken one at a time under a lock (a command, an expiry, a new hold pushing
out the oldest), each committed to the store before anything is published. A command
the broker delivers again after a crash (DUP, same packet id) that already resolved a
hold is answered from that resolution, never applied to another hold (`latest` would
name a newer one). Every command ends in exactly one acknowledgement: after its answer,
for a confirm after the action's PUBACK is recorded (outbox.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.grounding import content_text
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import OkReply
from edgeagent.protocol.topics import Topics
from edgeagent.service.holds import records
from edgeagent.service.holds.asyncholds import AsyncHoldStore, StoreThread
from edgeagent.service.holds.commands import Command, answer_route, parse_command
from edgeagent.service.holds.decisions import decide, learned, log_resolution, not_pending
from edgeagent.service.holds.hold_metrics import HoldMetrics
from edgeagent.service.holds.learning import Learner, LearnerHook
from edgeagent.service.holds.outbox import Asker, Outbox
from edgeagent.service.holds.pending import PendingHolds
from edgeagent.service.holds.records import Decision, HoldRecord, HoldState, Resolved
from edgeagent.service.pipeline.jobs import Job

log = structlog.get_logger("edgeagent.service.holds.desk")

PRUNE_EVERY_S = 3600.0


class HoldDesk:
    def __init__(
        self,
        cfg: Config,
        *,
        topics: Topics,
        store: AsyncHoldStore,
        thread: StoreThread,
        outbox: Outbox,
        intake_size: int,
        metrics: HoldMetrics | None = None,
        learner: Learner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._topics = topics
        self._store = store
        self.outbox = outbox
        self._metrics = metrics
        self._learner = LearnerHook(learner, thread)
        self._clock = clock  # wall clock: expires_at is what operators read
        self._intake: asyncio.Queue[tuple[Incoming, str, str]] = asyncio.Queue(intake_size)
        self._pending = PendingHolds()
        self._deciding = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closed = False

    def reconfigure(self, cfg: Config) -> None:
        self._cfg = cfg  # catalog (edits, ttl, max pending) and reply policy
        self.outbox.policy = cfg.reply_policy()

    # -- from the link and the worker ------------------------------------------------------

    def offer(self, message: Incoming) -> bool:
        """A message on held/+/confirm or held/+/reject: taken (True), else False."""
        parsed = self._topics.hold_command(message.topic)
        if parsed is None:
            return False
        if self._closed:
            return True  # stopping: left unacknowledged, the broker delivers it again
        if self._intake.full():  # only a broker ignoring Receive Maximum gets here
            error = EdgeAgentError(ErrorCode.BUSY, "too many hold commands waiting")
            self.outbox.refuse(Asker(message, None), None, error)
            return True
        self._intake.put_nowait((message, *parsed))
        return True

    async def prepare(self, job: Job, reply: OkReply) -> bool:
        """Before a task's reply is stored: its hold, `opening`, if it is one."""
        hold = records.draft(
            reply,
            device=self._cfg.device.id,
            text=content_text(job.request.content),
            routes=tuple(job.entry.routes()),
            held_at=self._clock(),
            ttl_s=self._cfg.catalog.hold_ttl_s,
        )
        if hold is None:
            return False
        if not await self._store.prepare(hold):
            log.error("hold not recorded; the action stays held", task_id=job.task_id)
            return False
        return True

    async def open(self, task_id: str) -> None:
        """After the task's reply is stored: the hold is pending, its notice goes out."""
        async with self._deciding:
            record = await self._store.promote(task_id)
            if record is None:
                log.error("hold not opened; the action stays held", task_id=task_id)
                return
            while len(self._pending) >= self._cfg.catalog.max_pending_holds:
                oldest = self._pending.oldest()
                log.warning("too many pending holds; the oldest expires", task_id=oldest.task_id)
                await self._expire(oldest)
            self._keep(record)
        log.info("action held for an operator", task_id=task_id, action=record.draft.action)
        self.outbox.announce(record)
        self._wake.set()

    # -- what operators see --------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        return self._pending.heartbeat()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        await self._recover()
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._commands())
            loops.create_task(self._expiry())
            loops.create_task(self._pruning())

    async def stop(self, *, within_s: float) -> None:
        """Shutdown: commands still waiting stay with the broker; what is being published
        gets `within_s`, the rest resumes from the store after the restart."""
        self._closed = True
        if not await self.outbox.wait_idle(within_s=within_s):
            log.warning("hold publishes still unconfirmed at exit; resumed after the restart")
        self.outbox.cancel_all()
        self._learner.cancel()
        await self._store.close()

    async def _recover(self) -> None:
        async with self._deciding:
            for record in await self._store.pending():
                self._keep(record)
            now = self._clock()
            for record in await self._store.owing():
                if record.state is HoldState.PENDING:
                    # One that expired while the daemon was down is not announced again
                    # only to be cleared: the expiry loop clears it first thing.
                    if record.draft.expires_at > now:
                        self.outbox.announce(record)
                else:
                    log.info("hold resolution resumed", task_id=record.task_id)
                    self.outbox.publish_resolution(record)

    def _keep(self, record: HoldRecord) -> None:
        self._pending.keep(record)
        if self._metrics is not None:
            self._metrics.pending(len(self._pending))

    async def _commands(self) -> None:
        while True:
            message, target, verb = await self._intake.get()
            try:
                await self._command(message, target, verb)
            except Exception:  # a bug: answered and acknowledged, never left holding a slot
                log.exception("internal error handling a hold command", topic=message.topic)
                error = EdgeAgentError(ErrorCode.INTERNAL, "internal error")
                self.outbox.refuse(Asker(message, None), None, error)

    async def _expiry(self) -> None:
        while True:
            for record in self._pending.due(self._clock()):
                async with self._deciding:
                    if record.task_id in self._pending:
                        await self._expire(record)
            wait_s = self._pending.next_check_s(self._clock)
            self._wake.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _pruning(self) -> None:
        while True:
            removed = await self._store.prune(self._cfg.state.journal_max_rows)
            log.debug("resolved holds pruned", removed=removed)
            await asyncio.sleep(PRUNE_EVERY_S)

    # -- decisions -------------------------------------------------------------------------

    async def _command(self, message: Incoming, target: str, verb: str) -> None:
        asker = Asker(message, None)
        task_id: str | None = None
        try:
            command = parse_command(message, target, verb)
            task_id = command.task_id or (None if command.latest else command.target)
            asker = Asker(message, answer_route(message, self._cfg.reply_policy()))
            async with self._deciding:
                if message.dup and (done := await self._store.by_command(command.digest)):
                    self.outbox.join(done, asker)  # resolved by this very message
                    return
                record = await self._target(command)
                task_id = record.task_id
                resolved = decide(self._cfg, record, command, self._clock())
                await self._commit(record, resolved, asker, command.note)
        except EdgeAgentError as error:
            log.warning(
                "hold command refused",
                task_id=task_id,
                verb=verb,
                error_code=str(error.code),
                message=error.message,
            )
            self.outbox.refuse(asker, task_id, error)

    async def _target(self, command: Command) -> HoldRecord:
        """The pending hold a command names, or the typed error why there is none."""
        if command.latest:
            newest = self._pending.newest()
            if newest is None:
                raise EdgeAgentError(ErrorCode.HOLD_UNKNOWN, "no hold is pending")
            if command.task_id not in (None, newest.task_id):
                await self._pending_hold(str(command.task_id))  # the error saying why not
                raise EdgeAgentError(
                    ErrorCode.INVALID_REQUEST,
                    f"hold {command.task_id!r} is not the newest pending one",
                    newest=newest.task_id,
                )
            record = newest
        else:
            record = await self._pending_hold(command.target)
        if record.draft.expires_at <= self._clock():
            await self._expire(record)
            raise EdgeAgentError(ErrorCode.HOLD_EXPIRED, f"hold {record.task_id!r} expired")
        return record

    async def _pending_hold(self, task_id: str) -> HoldRecord:
        record = self._pending.get(task_id) or await self._store.get(task_id)
        error = not_pending(record, task_id)
        if error is not None:
            raise error
        assert record is not None
        return record

    async def _expire(self, record: HoldRecord) -> None:
        try:
            await self._commit(record, Resolved(Decision.EXPIRED, None, self._clock(), None))
        except EdgeAgentError as exc:  # resolved already: nothing left to expire
            log.warning("hold not expired", task_id=record.task_id, why=exc.message)

    async def _commit(
        self,
        record: HoldRecord,
        resolved: Resolved,
        asker: Asker | None = None,
        note: str | None = None,
    ) -> None:
        """Record the decision, then publish what it owes (outbox)."""
        text = await self._store.resolve(record.task_id, resolved)
        if text is False:  # not pending in the store: resolved meanwhile (a bug)
            self._pending.drop(record.task_id)
            await self._pending_hold(record.task_id)
            raise EdgeAgentError(ErrorCode.INTERNAL, f"hold {record.task_id!r} is not pending")
        # True: the store failed; degraded, the resolution goes on in memory.
        self._pending.drop(record.task_id)
        done = records.resolved_record(record, resolved)
        self.outbox.publish_resolution(done, asker)
        log_resolution(record, resolved, note)
        if self._metrics is not None:
            self._metrics.resolved(resolved.decision)
            self._metrics.pending(len(self._pending))
        self._learner.tell(learned(record, resolved, text))
