"""The daemon with its real collaborators: what `edgeagent run` starts.

MQTT link (paho), task store (SQLite on its own thread), sd_notify and its watchdog,
the engine (llama.cpp), the memory control loop, and the operators' views (metrics,
Home Assistant). Tests build the Daemon from fakes instead (tests/support).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgeagent.config import Config
from edgeagent.inference.engine import Engine
from edgeagent.memory.control import MemoryControlLoop
from edgeagent.mqtt.link import MqttLink
from edgeagent.protocol.topics import Topics
from edgeagent.service.daemon import Daemon
from edgeagent.service.holds import learning as holds_learning
from edgeagent.service.holds.asyncholds import AsyncHoldStore, open_hold_store
from edgeagent.service.holds.desk import HoldDesk
from edgeagent.service.holds.metrics import HoldMetrics
from edgeagent.service.holds.outbox import Outbox
from edgeagent.service.learning.learner import Learner
from edgeagent.service.pipeline.admission import receive_window
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.publishing import ConfirmedPublisher
from edgeagent.service.ports import DeliveryLink, InferenceEngine, MemoryLoop
from edgeagent.service.system import sdnotify
from edgeagent.service.views.operators import OperatorViews

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
    daemon: Daemon
    # A lambda, not the bound method: `daemon` does not exist yet when the loop is built.
    memory = MemoryControlLoop(
        engine.capacity,
        cfg,
        on_change=lambda d: daemon.memory_changed(d),  # noqa: PLW0108
    )
    daemon = assemble(
        cfg,
        engine=engine,
        memory=memory,
        notifier=sdnotify.Notifier.from_env(),
        learner=learner if learner is not None else Learner.open(cfg),
        config_path=config_path,
    )
    return daemon


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
    topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, cfg.mqtt.shared_group or None)
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
    return Daemon(
        cfg,
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
