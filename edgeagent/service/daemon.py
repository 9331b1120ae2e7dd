"""`edgeagent run`: the service's wiring and lifecycle.

    link (MQTT) -> Admission -> TaskQueue -> Worker (engine) -> Delivery -> ack
                                 Telemetry (heartbeat, STATUS=)   store (SQLite thread)

Lifecycle (State): STARTING -> LOADING -> SERVING <-> PAUSED -> DRAINING -> STOPPED.
The event loop owns all state; the model runs on the engine's inference thread, the
task store on its own thread, MQTT on paho's. The daemon builds nothing: `service.assembly`
makes its collaborators (the real ones; tests/support the fakes) and the daemon knows
them by the Protocols of service/ports.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path

import structlog

from edgeagent.config import Config, load_config
from edgeagent.config.reload import reloaded
from edgeagent.errors import EdgeAgentError
from edgeagent.mqtt.incoming import Incoming
from edgeagent.mqtt.pubacks import ignore_result
from edgeagent.mqtt.refusals import OutgoingQueueFull, PublishRefused
from edgeagent.mqtt.timeouts import with_timeout
from edgeagent.protocol.topics import Topics
from edgeagent.service.holds.desk import HoldDesk
from edgeagent.service.learning.learner import Learner
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.stages import Stages
from edgeagent.service.ports import (
    InferenceEngine,
    MemoryLoop,
    MemoryVerdict,
    ServiceLink,
    StatusNotifier,
)
from edgeagent.service.system import sdnotify
from edgeagent.service.system.logsetup import configure_logging
from edgeagent.service.views.operators import OperatorViews
from edgeagent.service.views.telemetry import Telemetry

log = structlog.get_logger("edgeagent.service.daemon")

FINAL_PUBLISH_TIMEOUT_S = 5.0  # shutdown: how long to wait for the broker's PUBACKs
HAND_BACK_TIMEOUT_S = 2.0  # shutdown: a cancelled task stops at its next decode step
ENGINE_CLOSE_TIMEOUT_S = 5.0
STORE_PRUNE_EVERY_S = 3600.0
MIN_STALL_S = 10.0  # the watchdog never calls the inference thread stuck sooner


class State(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    SERVING = "serving"
    PAUSED = "paused"  # memory too tight: new tasks get BUSY
    DRAINING = "draining"
    STOPPED = "stopped"


class Daemon:
    """Runs and stops what service/assembly.py built; owns the lifecycle state."""

    def __init__(
        self,
        cfg: Config,
        *,
        topics: Topics,
        link: ServiceLink,
        store: AsyncTaskStore,
        notifier: StatusNotifier,
        engine: InferenceEngine,
        memory: MemoryLoop,
        telemetry: Telemetry,
        stages: Stages,
        watchdog: sdnotify.Watchdog | None = None,
        operators: OperatorViews | None = None,
        holds: HoldDesk | None = None,
        learner: Learner | None = None,
        config_path: Path | None = None,
        load: Callable[[Path], Config] = load_config,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.state = State.STARTING
        self.topics = topics
        self.link = link
        self.store = store
        self.notifier = notifier
        self.engine = engine
        self.memory = memory
        self.watchdog = watchdog
        self.telemetry = telemetry
        self.queue = stages.queue
        self.admission = stages.admission
        self.worker = stages.worker
        self.delivery = stages.delivery
        # Where operators look (docs/integrations.md): Prometheus and Home Assistant.
        self.operators = operators
        # Held actions operators confirm over MQTT (service/holds); None: replies only.
        self.holds = holds
        # Operators' rulings in, learned examples out (service/learning); None: not learning.
        self.learner = learner
        self._load = load
        self._stop = asyncio.Event()
        # Set when shutdown had to leave a stuck inference thread behind.
        self.abandoned_inference = False

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads. 0 after a clean stop, 1 after a crash."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            return await self.serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def serve(self) -> int:
        self._set_state(State.LOADING)
        # Connected while the model loads, so the heartbeat says `loading` meanwhile; tasks
        # that arrive wait, unacknowledged, in admission's bounded intake until it runs.
        self.link.start(self._on_message, self._on_connect)
        started = time.perf_counter()
        # Load at the smallest useful context; the memory governor sizes it right after.
        await self.engine.start(n_ctx=self.cfg.memory.min_ctx)
        log.info(
            "model loaded",
            model=str(self.cfg.model.path),
            load_ms=round((time.perf_counter() - started) * 1000),
            n_ctx_train=self.engine.n_ctx_train,
        )
        await self.memory.start(on_change=self.memory_changed)
        if self.operators is not None:
            self.operators.start()
        self._set_state(State.SERVING)
        self.notifier.ready()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "worker": self.worker.run,
            "admission": self.admission.run,
            "heartbeat": self.telemetry.run,
            "memory": self.memory.run,
            "store pruning": lambda: self.store.keep_pruned(STORE_PRUNE_EVERY_S),
        }
        if self.holds is not None:
            loops["holds"] = self.holds.run
        watchdog = self.watchdog
        if watchdog is not None and watchdog.enabled and watchdog.interval is not None:
            # The event loop pings; it withholds the ping when the inference thread is
            # busy without progress for this long (a wedged model call), so systemd
            # restarts us. One decode batch on a Pi 4 stays well below it.
            max_stall = max(2 * watchdog.interval, MIN_STALL_S)
            watchdog.add_probe(sdnotify.stall_probe(self.engine, max_stall, "inference"))
            loops["watchdog"] = watchdog.run
        tasks = [asyncio.create_task(self._supervised(body, name)) for name, body in loops.items()]
        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        crashed = stop_wait not in done
        stop_wait.cancel()
        await self._shutdown(tasks)
        return 1 if crashed else 0

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply what can change without a restart
        (config/reload.py); a change to the rest is logged and ignored."""
        if self.config_path is None or self.state not in (State.SERVING, State.PAUSED):
            return  # still starting (READY=1 would come too early) or stopping
        self.notifier.reloading()
        try:
            self._apply_config(self.config_path)
        except Exception:  # a bug: the running config stays, and systemd hears READY=1
            log.exception("reload failed; keeping the running config")
        finally:
            # Always: without READY=1 systemd keeps the unit "reloading" for good.
            self.notifier.ready(self.telemetry.status_line())

    def _apply_config(self, path: Path) -> None:
        try:
            new = self._load(path)
        except EdgeAgentError as exc:
            log.error("reload failed; keeping the running config", error=exc.message)  # noqa: TRY400 - message is the useful part
            return
        self.cfg, needs_restart = reloaded(self.cfg, new)
        if needs_restart:
            log.warning("reload: these sections need a restart", sections=needs_restart)
        self.admission.reconfigure(self.cfg)
        self.worker.reconfigure(self.cfg)
        if self.learner is not None:
            self.learner.reconfigure(self.cfg)
        if self.operators is not None:
            self.operators.reconfigure(self.cfg)
        if self.holds is not None:
            self.holds.reconfigure(self.cfg)
        configure_logging(self.cfg.log.level, self.cfg.log.format, self.cfg.device.id)
        log.info("configuration reloaded", actions=len(self.cfg.actions))

    def memory_changed(self, decision: MemoryVerdict) -> None:
        """From the memory control loop, after each decision it applied."""
        if decision.paused:
            self.admission.pause(decision.reason)
        else:
            self.admission.resume()
        if decision.paused and self.state is State.SERVING:
            self._set_state(State.PAUSED)
        elif not decision.paused and self.state is State.PAUSED:
            self._set_state(State.SERVING)
        else:
            self.telemetry.refresh_status()

    async def _supervised(self, body: Callable[[], Awaitable[None]], name: str) -> None:
        """Run a loop forever; an unexpected exception ends the daemon (systemd restarts it)."""
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal loop crashed; exiting for a restart", loop=name)

    def _on_message(self, message: Incoming) -> None:
        """From the link: an operator's confirm or reject to the holds, the rest is a task."""
        if self.holds is None or not self.holds.offer(message):
            self.admission.offer(message)

    def _set_state(self, state: State) -> None:
        self.state = state
        self.telemetry.state_changed(str(state))

    def _on_connect(self) -> None:
        self.telemetry.publish_heartbeat()  # this run's, before `online` shows old values
        future = self.link.publish(self.topics.status, "online", retain=True)
        future.add_done_callback(ignore_result)
        if self.operators is not None:
            self.operators.connected()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self._set_state(State.DRAINING)
        self.notifier.stopping()
        self.admission.close()
        # Waiting tasks go back to the broker: not acked, so it delivers them again.
        for job in self.queue.drain():
            await self.worker.hand_back(job)
        running = self.worker.current
        # Ends as soon as the running task is answered, or the grace period is over.
        if running is not None and not await self.worker.wait_idle(
            within_s=self.cfg.queue.shutdown_grace_s
        ):
            log.warning("grace period over; handing the running task back", task_id=running.task_id)
            running.cancel.set()
            await self.worker.wait_idle(within_s=HAND_BACK_TIMEOUT_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not await self.delivery.wait_idle(within_s=FINAL_PUBLISH_TIMEOUT_S):
            log.warning("replies still unconfirmed at exit; the broker will redeliver their tasks")
        self.delivery.cancel_all()
        if self.holds is not None:  # before the store closes: its table is in the file
            await self.holds.stop(within_s=FINAL_PUBLISH_TIMEOUT_S)
        # Stopped serving: the retained heartbeat says so before `offline` and the disconnect.
        self._set_state(State.STOPPED)
        if self.link.connected.is_set():
            with contextlib.suppress(EdgeAgentError, PublishRefused, OutgoingQueueFull):
                await with_timeout(
                    self.link.publish(self.topics.status, "offline", retain=True),
                    FINAL_PUBLISH_TIMEOUT_S,
                    "offline status",
                )
        self.link.stop()
        if self.operators is not None:
            self.operators.stop()
        # Blocking, but bounded: nothing else runs any more. A wedged inference thread
        # must not turn a stop into systemd's SIGKILL after TimeoutStopSec.
        if not self.engine.close(timeout=ENGINE_CLOSE_TIMEOUT_S):
            self.abandoned_inference = True
            log.error("the inference thread does not respond; exiting without it")
        self.store.close()
        if self.learner is not None:
            self.learner.close()
        counters = self.telemetry.counters
        log.info("stopped", done=counters.done, failed=counters.failed)
