"""The daemon with its real collaborators: what `edgeagent run` starts.

MQTT link (paho), task store (SQLite on its own thread), sd_notify and its watchdog,
the engine (llama.cpp), the memory control loop, and the operators' views (metrics,
Home Assistant). Tests build the Daemon from fakes instead (tests/support).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgeagent.config import Config, load_config
from edgeagent.inference.engine import Engine
from edgeagent.memory.control import MemoryControlLoop
from edgeagent.mqtt.link import MqttLink
from edgeagent.protocol.topics import Topics
from edgeagent.service.daemon import Daemon
from edgeagent.service.holds import learning as holds_learning
from edgeagent.service.holds.asyncholds import AsyncHoldStore, open_hold_store
from edgeagent.service.holds.desk import HoldDesk
from edgeagent.service.holds.hold_metrics import HoldMetrics
from edgeagent.service.holds.outbox import Outbox
from edgeagent.service.learning.learner import Learner
from edgeagent.service.pipeline.admission import receive_window
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.jobs import Job
from edgeagent.service.pipeline.publishing import ConfirmedPublisher
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.stages import build_stages
from edgeagent.service.ports import (
    DeliveryLink,
    InferenceEngine,
    MemoryLoop,
    ServiceLink,
    StatusNotifier,
)
from edgeagent.service.system import sdnotify
from edgeagent.service.system.board import read_board
from edgeagent.service.views.operators import OperatorViews
from edgeagent.service.views.telemetry import Telemetry

STORE_FILE = "journal.sqlite3"


def build_daemon(
    cfg: Config,
    *,
    config_path: Path | None = None,
    engine: Engine | None = None,
    learner: Learner | None = None,
) -> Daemon:
    """`engine` lets a caller choose the model factory (tests/support/wedged_daemon.py);
    `learner` hears every resolved hold (service/holds/learning.py) and gives each action
    task its learned examples (service/learning); default: what `[catalog] learn` asks."""
    engine = engine or Engine(cfg.model)
    return assemble(
        cfg,
        engine=engine,
        # The daemon hears its decisions from start() on (Daemon.memory_changed).
        memory=MemoryControlLoop(engine.capacity, cfg),
        notifier=sdnotify.Notifier.from_env(),
        learner=learner if learner is not None else Learner.open(cfg),
        config_path=config_path,
    )


def assemble(
    cfg: Config,
    *,
    engine: InferenceEngine,
    memory: MemoryLoop,
    notifier: sdnotify.Notifier,
    learner: Learner,
    config_path: Path | None = None,
) -> Daemon:
    """The real link, task store, hold desk, watchdog and operators' views around an
    engine and a memory loop: `build_daemon`'s, or the fleet simulator's scripted ones
    (fleetsim/)."""
    topics = topics_for(cfg)
    link = MqttLink(
        cfg.mqtt,
        client_id=cfg.mqtt.client_id or f"edgeagent-{cfg.device.id}",
        subscriptions=topics.subscriptions(),
        control_subscriptions=topics.hold_commands,
        will_topic=topics.status,
        receive_maximum=receive_window(cfg),
    )
    store = AsyncTaskStore.open(
        cfg.state.dir / STORE_FILE,
        max_age_s=cfg.state.journal_max_age_s,
        max_rows=cfg.state.journal_max_rows,
    )
    operators = OperatorViews(cfg, topics=topics, link=link, store=store)
    holds = build_hold_desk(
        cfg,
        topics=topics,
        link=link,
        store=store,
        path=cfg.state.dir / STORE_FILE,
        metrics=HoldMetrics(operators.metrics.metrics.registry),
        learner=learner,
        on_dispatched=operators.dispatched,
    )
    return wire(
        cfg,
        topics=topics,
        link=link,
        store=store,
        notifier=notifier,
        engine=engine,
        memory=memory,
        watchdog=sdnotify.Watchdog(notifier),
        operators=operators,
        holds=holds,
        learner=learner,
        config_path=config_path,
    )


def topics_for(cfg: Config) -> Topics:
    """The device's topics: made once, here, and passed to everything that publishes."""
    return Topics(cfg.mqtt.topic_prefix, cfg.device.id, cfg.mqtt.shared_group or None)


def wire(
    cfg: Config,
    *,
    topics: Topics,
    link: ServiceLink,
    store: AsyncTaskStore,
    notifier: StatusNotifier,
    engine: InferenceEngine,
    memory: MemoryLoop,
    watchdog: sdnotify.Watchdog | None = None,
    operators: OperatorViews | None = None,
    holds: HoldDesk | None = None,
    learner: Learner | None = None,
    config_path: Path | None = None,
    load: Callable[[Path], Config] = load_config,
    clock: Callable[[], float] = time.monotonic,
) -> Daemon:
    """The heartbeat, the task pipeline and the daemon around them, from collaborators
    made elsewhere: `assemble`'s real ones, or the fakes of the unit tests."""
    queue: TaskQueue[Job] = TaskQueue(cfg.queue.size)
    telemetry = build_telemetry(
        cfg,
        topics=topics,
        link=link,
        notifier=notifier,
        queue=queue,
        engine=engine,
        memory=memory,
        store=store,
        operators=operators,
        holds=holds,
    )
    stages = build_stages(
        cfg,
        topics=topics,
        queue=queue,
        link=link,
        store=store,
        engine=engine,
        telemetry=telemetry,
        holds=holds,
        learned=learner,
        on_reply=operators.replied if operators else None,
        on_dispatched=operators.dispatched if operators else None,
        clock=clock,
    )
    return Daemon(
        cfg,
        topics=topics,
        link=link,
        store=store,
        notifier=notifier,
        engine=engine,
        memory=memory,
        telemetry=telemetry,
        stages=stages,
        watchdog=watchdog,
        operators=operators,
        holds=holds,
        learner=learner,
        config_path=config_path,
        load=load,
    )


def build_hold_desk(
    cfg: Config,
    *,
    topics: Topics,
    link: DeliveryLink,
    store: AsyncTaskStore,
    path: Path | str,
    metrics: HoldMetrics | None = None,
    learner: holds_learning.Learner | None = None,
    on_dispatched: Callable[[str, str], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> HoldDesk:
    """Held actions operators confirm over MQTT: their table in the task store's file
    `path`, used on its thread (opened after it: a file it moved aside is fresh by now)."""
    holds = AsyncHoldStore(open_hold_store(path), store)
    outbox = Outbox(
        publisher=ConfirmedPublisher(link=link, topics=topics, device=cfg.device.id),
        acks=link,
        store=holds,
        topics=topics,
        device=cfg.device.id,
        policy=cfg.reply_policy(),
        on_dispatched=on_dispatched,
    )
    return HoldDesk(
        cfg,
        topics=topics,
        store=holds,
        thread=store,
        outbox=outbox,
        intake_size=2 * receive_window(cfg),
        metrics=metrics,
        learner=learner,
        clock=clock,
    )


def build_telemetry(
    cfg: Config,
    *,
    topics: Topics,
    link: ServiceLink,
    notifier: StatusNotifier,
    queue: TaskQueue[Job],
    engine: InferenceEngine,
    memory: MemoryLoop,
    store: AsyncTaskStore,
    operators: OperatorViews | None = None,
    holds: HoldDesk | None = None,
) -> Telemetry:
    """The heartbeat and STATUS= over the queue, engine, memory loop and store."""
    return Telemetry(
        device=cfg.device.id,
        topics=topics,
        link=link,
        notifier=notifier,
        queue=queue,
        engine=engine,
        memory=memory,
        store=store,
        period_s=cfg.mqtt.heartbeat_s,
        on_heartbeat=operators.heartbeat_taken if operators else None,
        # The SoC temperature for Home Assistant, the metrics and the fleet view.
        board=lambda: read_board().as_dict(),
        holds=holds.heartbeat if holds else None,
    )
