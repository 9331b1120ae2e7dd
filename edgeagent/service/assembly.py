"""The daemon with its real collaborators: what `edgeagent run` starts.

MQTT link (paho), task store (SQLite on its own thread), sd_notify and its watchdog,
the engine (llama.cpp), the memory control loop, and the operators' views (metrics,
Home Assistant). Tests build the Daemon from fakes instead (tests/support).
"""

from __future__ import annotations

from pathlib import Path

from edgeagent.config import Config
from edgeagent.inference.engine import Engine
from edgeagent.memory.control import MemoryControlLoop
from edgeagent.mqtt.link import MqttLink
from edgeagent.protocol.topics import Topics
from edgeagent.service.daemon import Daemon
from edgeagent.service.pipeline.admission import receive_window
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.system import sdnotify
from edgeagent.service.views.operators import OperatorViews

STORE_FILE = "journal.sqlite3"


def build_daemon(
    cfg: Config, *, config_path: Path | None = None, engine: Engine | None = None
) -> Daemon:
    """`engine` lets a caller choose the model factory (tests/support/wedged_daemon.py)."""
    engine = engine or Engine(cfg.model)
    topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, cfg.mqtt.shared_group or None)
    link = MqttLink(
        cfg.mqtt,
        client_id=cfg.mqtt.client_id or f"edgeagent-{cfg.device.id}",
        subscriptions=topics.subscriptions(),
        will_topic=topics.status,
        receive_maximum=receive_window(cfg),
    )
    store = AsyncTaskStore.open(
        cfg.state.dir / STORE_FILE,
        max_age_s=cfg.state.journal_max_age_s,
        max_rows=cfg.state.journal_max_rows,
    )
    notifier = sdnotify.Notifier.from_env()
    daemon: Daemon
    # A lambda, not the bound method: `daemon` does not exist yet when the loop is built.
    memory = MemoryControlLoop(
        engine.capacity,
        cfg,
        on_change=lambda d: daemon.memory_changed(d),  # noqa: PLW0108
    )
    daemon = Daemon(
        cfg,
        link=link,
        store=store,
        notifier=notifier,
        engine=engine,
        memory=memory,
        watchdog=sdnotify.Watchdog(notifier),
        operators=OperatorViews(cfg, topics=topics, link=link, store=store),
        config_path=config_path,
    )
    return daemon
