"""`edgeagent run`: the service. Wires broker -> request -> queue -> engine -> reply -> ack.

Lifecycle (State): STARTING -> LOADING -> SERVING <-> PAUSED -> DRAINING -> STOPPED.
The event loop owns all state; the model runs on the engine's inference thread.
A task's MQTT message is acknowledged only once its reply was confirmed by the
broker, and the journal makes a redelivered task cheap and answer-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil
import structlog

from edgeagent.config import Config, load_config
from edgeagent.errors import EdgeAgentError, ErrorCode, TaskHandedBack
from edgeagent.inference.contract import OutputSpec, action_spec, schema_spec, select_actions
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Answer, Task
from edgeagent.memory.control import MemoryControlLoop
from edgeagent.memory.governor import Decision
from edgeagent.mqtt.link import Incoming, MqttLink, with_timeout
from edgeagent.protocol.reply import ReplyRoute, error_reply, ok_reply, route
from edgeagent.protocol.request import Request, parse_request, salvage
from edgeagent.protocol.topics import Topics
from edgeagent.service import sdnotify
from edgeagent.service.logsetup import configure_logging
from edgeagent.service.queue import TaskQueue
from edgeagent.service.taskstore import TaskState, TaskStore

log = structlog.get_logger("edgeagent.service.daemon")

PUBLISH_RETRY_S = 30.0  # re-publish a reply the broker has not confirmed after this long
FINAL_PUBLISH_TIMEOUT_S = 5.0  # shutdown: how long to wait for the broker's PUBACKs
ENGINE_CLOSE_TIMEOUT_S = 5.0
JOURNAL_PRUNE_EVERY_S = 3600.0
MIN_STALL_S = 10.0  # the watchdog never calls the inference thread stuck sooner
_SPEC_CACHE_SIZE = 64


class State(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    SERVING = "serving"
    PAUSED = "paused"  # memory too tight: new tasks get BUSY
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(slots=True)
class Job:
    request: Request
    spec: OutputSpec
    route: ReplyRoute
    message: Incoming  # the latest delivery of this task; it gets the ack
    received: float  # time.monotonic()
    deadline: float
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def action_label(self) -> str:
        return "schema" if self.spec.kind == "schema" else ",".join(self.spec.allowed_actions)


@dataclass(slots=True)
class Counters:
    done: int = 0
    failed: int = 0
    busy: int = 0
    # (completion tokens, decode seconds) of the last tasks, for a recent tokens/s.
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=20))

    def tokens_per_s(self) -> float | None:
        tokens = sum(t for t, _ in self.recent)
        seconds = sum(s for _, s in self.recent)
        return round(tokens / seconds, 2) if seconds > 0 else None


class Daemon:
    def __init__(
        self, cfg: Config, *, config_path: Path | None = None, engine: Engine | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.state = State.STARTING
        self.engine = engine or Engine(cfg.model)
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, cfg.mqtt.shared_group or None)
        self.queue: TaskQueue[Job] = TaskQueue(cfg.queue.size)
        self.store = TaskStore(
            cfg.state.dir / "journal.sqlite3",
            max_age_s=cfg.state.journal_max_age_s,
            max_rows=cfg.state.journal_max_rows,
        )
        self.broker = MqttLink(
            cfg.mqtt,
            client_id=cfg.mqtt.client_id or f"edgeagent-{cfg.device.id}",
            subscriptions=self.topics.subscriptions(),
            will_topic=self.topics.status,
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self.counters = Counters()
        self.pressure = MemoryControlLoop(self.engine, cfg, on_change=self._memory_changed)
        self.notifier = sdnotify.Notifier.from_env()
        self._inflight: dict[str, Job] = {}
        self._current: Job | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._specs: dict[tuple[str, ...], OutputSpec] = {}  # LRU of compiled contracts
        # Set when shutdown had to leave a stuck inference thread behind.
        self.abandoned_inference = False

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._set_state(State.LOADING)
        started = time.perf_counter()
        # Load at the smallest useful context; the memory governor sizes it right after.
        await self.engine.start(n_ctx=self.cfg.memory.min_ctx)
        log.info(
            "model loaded",
            model=str(self.cfg.model.path),
            load_ms=round((time.perf_counter() - started) * 1000),
            n_ctx_train=self.engine.model.n_ctx_train,
        )
        await self.pressure.start()
        self.store.prune()
        self.broker.start()
        self._set_state(State.SERVING)
        self.notifier.ready()
        workers = [
            asyncio.create_task(self._supervised(self._work, "worker")),
            asyncio.create_task(self._supervised(self._heartbeat, "heartbeat")),
            asyncio.create_task(self._supervised(self.pressure.run, "memory")),
        ]
        watchdog = sdnotify.Watchdog(self.notifier)
        if watchdog.enabled and watchdog.interval is not None:
            # The event loop pings; it withholds the ping when the inference thread is
            # busy without progress for this long (a wedged model call), so systemd
            # restarts us. One decode batch on a Pi 4 stays well below it.
            max_stall = max(2 * watchdog.interval, MIN_STALL_S)
            watchdog.add_probe(sdnotify.stall_probe(self.engine, max_stall, "inference"))
            workers.append(asyncio.create_task(self._supervised(watchdog.run, "watchdog")))
        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop_wait, *workers], return_when=asyncio.FIRST_COMPLETED)
        crashed = stop_wait not in done
        await self._shutdown(workers)
        return 1 if crashed else 0

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply what can change without a restart.

        Live: the action catalog, queue deadlines, memory policy, log level. The model,
        broker connection, device id and state dir need a restart; a change there is
        logged and ignored.
        """
        if self.config_path is None or self.state not in (State.SERVING, State.PAUSED):
            return  # still starting (READY=1 would come too early) or stopping
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except EdgeAgentError as exc:
            log.error("reload failed; keeping the running config", error=exc.message)  # noqa: TRY400 - message is the useful part
            self.notifier.ready(self.status_line())
            return
        fixed = {
            "model": new.model != self.cfg.model,
            "mqtt": new.mqtt != self.cfg.mqtt,
            "device": new.device != self.cfg.device,
            "state": new.state != self.cfg.state,
        }
        needs_restart = sorted(k for k, changed in fixed.items() if changed)
        if needs_restart:
            log.warning("reload: these sections need a restart", sections=needs_restart)
        self.cfg = new.model_copy(update={k: getattr(self.cfg, k) for k in fixed})
        self._specs.clear()
        configure_logging(self.cfg.log.level, self.cfg.log.format, self.cfg.device.id)
        log.info("configuration reloaded", actions=len(self.cfg.actions))
        self.notifier.ready(self.status_line())

    async def _supervised(self, body: Callable[[], Awaitable[None]], name: str) -> None:
        """Run a loop forever; an unexpected exception ends the daemon (systemd restarts it)."""
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal loop crashed; exiting for a restart", loop=name)

    def _set_state(self, state: State) -> None:
        self.state = state
        self.notifier.status(self.status_line())

    def status_line(self) -> str:
        tps = self.counters.tokens_per_s()
        decision = self.pressure.decision
        budget = (
            f" (budget {decision.budget.tokens}, {decision.budget.limited_by})" if decision else ""
        )
        line = (
            f"{self.state}; queue {len(self.queue)}/{self.queue.capacity}; "
            f"ctx {self.engine.n_ctx}{budget}; "
            f"done {self.counters.done} failed {self.counters.failed}; "
            f"{tps if tps is not None else '-'} tok/s"
        )
        if self.state is State.PAUSED and self.pressure.decision is not None:
            line += f"; {self.pressure.decision.reason}"
        return line

    def _memory_changed(self, decision: Decision) -> None:
        if decision.paused and self.state is State.SERVING:
            self._set_state(State.PAUSED)
        elif not decision.paused and self.state is State.PAUSED:
            self._set_state(State.SERVING)
        else:
            self.notifier.status(self.status_line())

    async def _shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        self._set_state(State.DRAINING)
        self.notifier.stopping()
        # Waiting tasks go back to the broker: not acked, so it delivers them again.
        for job in self.queue.drain():
            self._hand_back(job)
        current = self._current
        if current is not None:
            worker = workers[0]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker), self.cfg.queue.shutdown_grace_s)
            if self._current is current:
                log.warning(
                    "grace period over; handing the running task back", task_id=current.request.id
                )
                current.cancel.set()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=FINAL_PUBLISH_TIMEOUT_S)
        if self.broker.connected.is_set():
            with contextlib.suppress(EdgeAgentError):
                await with_timeout(
                    self.broker.publish(self.topics.status, "offline", retain=True),
                    FINAL_PUBLISH_TIMEOUT_S,
                    "offline status",
                )
        self.broker.stop()
        # Blocking, but bounded: nothing else runs any more. A wedged inference thread
        # must not turn a stop into systemd's SIGKILL after TimeoutStopSec.
        if not self.engine.close(timeout=ENGINE_CLOSE_TIMEOUT_S):
            self.abandoned_inference = True
            log.error("the inference thread does not respond; exiting without it")
        self.store.close()
        self._set_state(State.STOPPED)
        log.info("stopped", done=self.counters.done, failed=self.counters.failed)

    def _hand_back(self, job: Job) -> None:
        self._inflight.pop(job.request.id, None)
        self.store.forget(job.request.id)
        log.info("task handed back", task_id=job.request.id)

    # -- incoming ------------------------------------------------------------------

    def _on_connect(self) -> None:
        future = self.broker.publish(self.topics.status, "online", retain=True)
        future.add_done_callback(_ignore_result)

    def _on_message(self, message: Incoming) -> None:
        if self.state in (State.DRAINING, State.STOPPED):
            return  # not acked: the broker delivers it again after our restart
        try:
            self._admit(message)
        except Exception:  # a bug here must not take the daemon down with one bad task
            log.exception("internal error admitting a task", topic=message.topic)
            task_id, reply_to = salvage(message.payload)
            self._reject(
                message, task_id, reply_to, EdgeAgentError(ErrorCode.INTERNAL, "internal error")
            )

    def _admit(self, message: Incoming) -> None:
        try:
            request = parse_request(message.payload, self.cfg.mqtt.max_payload_bytes)
        except EdgeAgentError as exc:
            task_id, reply_to = salvage(message.payload)
            self._reject(message, task_id, reply_to, exc)
            return
        reply_route = route(
            self.topics,
            request.id,
            response_topic=message.response_topic,
            correlation_data=message.correlation_data,
            reply_to=request.reply_to,
        )
        if self._answer_from_journal(message, request, reply_route):
            return
        try:
            spec = self._spec_for(request)
            if self.state is State.PAUSED:
                reason = self.pressure.decision.reason if self.pressure.decision else ""
                raise EdgeAgentError(ErrorCode.BUSY, f"memory is short; try again later ({reason})")
        except EdgeAgentError as exc:
            self._reject(message, request.id, request.reply_to, exc, reply_route)
            return
        now = time.monotonic()
        deadline_s = request.deadline_s or self.cfg.queue.default_deadline_s
        job = Job(request, spec, reply_route, message, received=now, deadline=now + deadline_s)
        if not self.queue.offer(job, request.priority):
            self.counters.busy += 1
            busy = EdgeAgentError(
                ErrorCode.BUSY, f"queue full ({self.queue.capacity} tasks waiting)"
            )
            self._reject(message, request.id, request.reply_to, busy, reply_route)
            return
        self.store.accept(request.id, request.fingerprint())
        self._inflight[request.id] = job
        self.notifier.status(self.status_line())

    def _answer_from_journal(
        self, message: Incoming, request: Request, reply_route: ReplyRoute
    ) -> bool:
        """True when the task id is known and needs no model run."""
        running = self._inflight.get(request.id)
        if running is not None:
            # A redelivery of a task we are still working on: its reply acks this copy.
            running.message = message
            return True
        entry = self.store.get(request.id)
        if entry is None or entry.state is TaskState.ACCEPTED:
            return False  # new, or interrupted by a crash: run it
        if entry.fingerprint != request.fingerprint():
            error = EdgeAgentError(
                ErrorCode.INVALID_REQUEST,
                f"id {request.id!r} was already used for a different task",
            )
            self._reject(message, None, request.reply_to, error, reply_route)
            return True
        if message.dup and entry.state is TaskState.REPLIED:
            # The broker resent a task whose reply it already confirmed.
            self.broker.ack(message)
            return True
        assert entry.reply is not None
        log.info("task answered from journal", task_id=request.id)
        self._deliver(request.id, entry.reply, reply_route, message)
        return True

    def _spec_for(self, request: Request) -> OutputSpec:
        """The compiled contract, cached: clients usually send the same schema or
        action list again and again, and compiling costs ~6 ms on the event loop."""
        schema = request.schema_
        key: tuple[str, ...]
        if schema is not None:
            key = ("schema", json.dumps(schema, sort_keys=True))
            spec = self._specs.pop(key) if key in self._specs else schema_spec(schema)
        else:
            actions = select_actions(self.cfg.actions, request.action_names)
            key = ("actions", *(a.name for a in actions))
            spec = self._specs.pop(key) if key in self._specs else action_spec(actions)
        self._specs[key] = spec  # (re)inserted last: the dict is the LRU order
        if len(self._specs) > _SPEC_CACHE_SIZE:
            self._specs.pop(next(iter(self._specs)))
        return spec

    def _reject(
        self,
        message: Incoming,
        task_id: str | None,
        reply_to: str | None,
        error: EdgeAgentError,
        reply_route: ReplyRoute | None = None,
    ) -> None:
        if reply_route is None:
            reply_route = route(
                self.topics,
                task_id,
                response_topic=message.response_topic,
                correlation_data=message.correlation_data,
                reply_to=reply_to,
            )
        self.counters.failed += 1
        log.warning(
            "task",
            task_id=task_id,
            status="error",
            error_code=str(error.code),
            message=error.message,
            device_id=self.cfg.device.id,
        )
        self._deliver(
            task_id,
            error_reply(task_id, self.cfg.device.id, error),
            reply_route,
            message,
            journal=False,
        )

    # -- work ------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self.queue.take()
            self._current = job
            try:
                await self._run_job(job)
            finally:
                self._current = None
                self.notifier.status(self.status_line())

    async def _run_job(self, job: Job) -> None:
        request = job.request
        started = time.monotonic()
        queue_ms = (started - job.received) * 1000
        answer: Answer | None = None
        log.debug("task started", task_id=request.id, queue_ms=round(queue_ms, 1))
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
            )
            answer = await self.engine.answer(task)
            reply = ok_reply(
                request.id,
                self.cfg.device.id,
                answer.output,
                usage=answer.usage(),
                timing={
                    "queue_ms": round(queue_ms, 1),
                    **answer.timing(),
                    "total_ms": round((time.monotonic() - job.received) * 1000, 1),
                },
                context=answer.context(),
            )
        except TaskHandedBack:
            self._hand_back(job)
            return
        except EdgeAgentError as exc:
            reply = error_reply(request.id, self.cfg.device.id, exc)
        except Exception as exc:
            log.exception("task crashed", task_id=request.id)
            reply = error_reply(
                request.id,
                self.cfg.device.id,
                EdgeAgentError(ErrorCode.INTERNAL, type(exc).__name__),
            )
        self._account(job, reply, answer, queue_ms)
        self.store.finish(request.id, reply)
        self._deliver(request.id, reply, job.route, job, dispatch=reply["status"] == "ok")

    def _account(
        self, job: Job, reply: dict[str, Any], answer: Answer | None, queue_ms: float
    ) -> None:
        ok = reply["status"] == "ok"
        if ok and answer is not None:
            self.counters.done += 1
            self.counters.recent.append((answer.completion_tokens, answer.decode_ms / 1000))
        else:
            self.counters.failed += 1
        fields: dict[str, Any] = {
            "task_id": job.request.id,
            "device_id": self.cfg.device.id,
            "action": reply["output"].get("action", "schema")
            if ok and job.spec.kind == "action"
            else job.action_label,
            "status": reply["status"],
            "queue_ms": round(queue_ms, 1),
        }
        if answer is not None:
            fields |= answer.usage() | answer.timing() | answer.context()
        if not ok:
            fields |= {"error_code": reply["error"]["code"], "message": reply["error"]["message"]}
        (log.info if ok else log.warning)("task", **fields)

    # -- delivery ----------------------------------------------------------------------

    def _deliver(
        self,
        task_id: str | None,
        reply: dict[str, Any],
        reply_route: ReplyRoute,
        source: Job | Incoming,
        *,
        journal: bool = True,
        dispatch: bool = False,
    ) -> None:
        task = asyncio.create_task(
            self._publish_then_ack(
                task_id, reply, reply_route, source, journal=journal, dispatch=dispatch
            )
        )
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _publish_then_ack(
        self,
        task_id: str | None,
        reply: dict[str, Any],
        reply_route: ReplyRoute,
        source: Job | Incoming,
        *,
        journal: bool,
        dispatch: bool,
    ) -> None:
        payload = json.dumps(reply, ensure_ascii=False)
        await self._publish_until_confirmed(
            reply_route.topic, payload, reply_route.correlation_data
        )
        if dispatch and isinstance(source, Job) and source.spec.kind == "action":
            name = reply["output"]["action"]
            action_cfg = self.cfg.action(name)
            if action_cfg is not None and action_cfg.dispatch:
                body = {"id": task_id, "device": self.cfg.device.id, **reply["output"]}
                await self._publish_until_confirmed(
                    self.topics.action(name), json.dumps(body, ensure_ascii=False), None
                )
        if journal and task_id is not None:
            self.store.mark_replied(task_id)
        message = source.message if isinstance(source, Job) else source
        if isinstance(source, Job):
            self._inflight.pop(source.request.id, None)
        self.broker.ack(message)

    async def _publish_until_confirmed(
        self, topic: str, payload: str, correlation: bytes | None
    ) -> None:
        """QoS 1 publish that survives broker restarts: paho resends on reconnect, and a
        publish still unconfirmed after PUBLISH_RETRY_S while connected is sent again."""
        future = self.broker.publish(topic, payload, correlation_data=correlation)
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(future), PUBLISH_RETRY_S)
            except TimeoutError:
                if self.broker.connected.is_set():
                    future = self.broker.publish(topic, payload, correlation_data=correlation)
                continue
            return

    # -- heartbeat ---------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        return {
            "device": self.cfg.device.id,
            "state": str(self.state),
            "ts": round(time.time(), 3),
            "queue": {"depth": len(self.queue), "capacity": self.queue.capacity},
            "tasks": {
                "done": self.counters.done,
                "failed": self.counters.failed,
                "busy": self.counters.busy,
            },
            "tokens_per_s": self.counters.tokens_per_s(),
            "context": {"n_ctx": self.engine.n_ctx, **self.pressure.snapshot()},
            "memory": {
                "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
                "host_available_mb": round(vm.available / 2**20, 1),
            },
        }

    async def _heartbeat(self) -> None:
        last_prune = time.monotonic()
        while True:
            if time.monotonic() - last_prune > JOURNAL_PRUNE_EVERY_S:
                # Keeps the journal bounded on a daemon that runs for months.
                removed = self.store.prune()
                last_prune = time.monotonic()
                log.debug("journal pruned", removed=removed, rows=self.store.count())
            if self.broker.connected.is_set():
                future = self.broker.publish(
                    self.topics.heartbeat, json.dumps(self.heartbeat()), retain=True
                )
                future.add_done_callback(_ignore_result)
            self.notifier.status(self.status_line())
            await asyncio.sleep(self.cfg.mqtt.heartbeat_s)


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # mark retrieved; a lost heartbeat is not an error
