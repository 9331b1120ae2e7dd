"""Where operators look: Prometheus metrics and Home Assistant, fed from the service's hooks.

The daemon calls `connected` on every MQTT connection (discovery configs), `replied` at
every task's end (counters by status, the retained last_action) and `heartbeat_taken`
with every heartbeat (gauges). None of it may slow or fail a task: publishes are fire and
forget, store reads go through the store's thread, and failures are logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError
from edgeagent.mqtt.link import PublishRefused
from edgeagent.protocol.reply import OkReply, Reply
from edgeagent.protocol.topics import Topics
from edgeagent.service import homeassistant
from edgeagent.service.board import read_board
from edgeagent.service.metrics import MetricsExport
from edgeagent.service.ports import Publisher

log = structlog.get_logger("edgeagent.service.operators")


class RowCount(Protocol):
    async def count(self) -> int: ...


class OperatorViews:
    def __init__(self, cfg: Config, *, topics: Topics, link: Publisher, store: RowCount) -> None:
        self.cfg = cfg
        self._topics = topics
        self._link = link
        self._store = store
        # docs/integrations.md: Prometheus and Home Assistant.
        self.metrics = MetricsExport(cfg.metrics, cfg.device.id, cfg.model.path.name)
        self.discovery = homeassistant.Discovery(
            cfg.homeassistant,
            topics,
            homeassistant.DeviceInfo(
                cfg.device.id,
                cfg.model.path.name,
                heartbeat_s=cfg.mqtt.heartbeat_s,
                temperature_known=read_board().temp_c is not None,
            ),
            cfg.state.dir,
        )
        self._background: set[asyncio.Task[None]] = set()

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg  # the catalog decides what counts as a last action

    def start(self) -> None:
        self.metrics.start()

    def stop(self) -> None:
        for task in self._background:
            task.cancel()
        self.metrics.stop()

    def connected(self) -> None:
        self._spawn(self._sync_discovery())

    def replied(self, reply: Reply) -> None:
        """Every task's end: count it; an answered catalog action is the last action."""
        self.metrics.metrics.reply(reply.to_json())
        if (
            isinstance(reply, OkReply)
            and isinstance(reply.output, dict)
            and set(reply.output) == {"action", "args"}
            and self.cfg.action(str(reply.output["action"])) is not None
        ):
            topic, payload = homeassistant.last_action_message(
                self._topics, reply.id, reply.output, datetime.now(UTC)
            )
            self._link.publish(topic, payload, retain=True).add_done_callback(_ignore_result)

    def heartbeat_taken(self, beat: dict[str, Any]) -> None:
        self._spawn(self._refresh_metrics(beat))

    def _spawn(self, body: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(body)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sync_discovery(self) -> None:
        try:
            await self.discovery.sync(
                lambda topic, payload: self._link.publish(topic, payload, retain=True)
            )
        except (EdgeAgentError, PublishRefused, OSError) as exc:
            log.warning("home assistant discovery not published", error=str(exc))

    async def _refresh_metrics(self, beat: dict[str, Any]) -> None:
        rows = await self._store.count()  # on the store's thread
        self.metrics.refresh(
            beat,
            journal_rows=rows,
            connects=getattr(self._link, "connects", None),
            puback_refusals=getattr(self._link, "refusals", None),
        )


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # mark retrieved; a lost last_action is not worth more
