"""Where operators look: Prometheus metrics and Home Assistant, fed from the service's hooks.

The daemon calls `connected` on every MQTT connection (discovery configs), `replied` at
every task's end (counters by status), `dispatched` when the broker confirmed an action
message (with reply-only action answers: the retained last_action) and `heartbeat_taken`
with every heartbeat (gauges). None of it may slow or fail a task: publishes are fire and
forget, store reads go through the store's thread, and failures are logged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError
from edgeagent.mqtt.pubacks import ignore_result
from edgeagent.mqtt.refusals import OutgoingQueueFull, PublishRefused
from edgeagent.protocol.heartbeat import Heartbeat
from edgeagent.protocol.reply import OkReply, Reply
from edgeagent.protocol.topics import Topics
from edgeagent.service.ports import Publisher
from edgeagent.service.system.board import read_board
from edgeagent.service.views import homeassistant
from edgeagent.service.views.prometheus_export import MetricsExport

log = structlog.get_logger("edgeagent.service.views.operators")


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
                holds=any(action.dispatch for action in cfg.actions),
            ),
            cfg.state.dir,
        )
        self._background: set[asyncio.Task[None]] = set()

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg  # the running config, after a reload

    def start(self) -> None:
        self.metrics.start()

    def stop(self) -> None:
        for task in self._background:
            task.cancel()
        self.metrics.stop()

    def connected(self) -> None:
        # The link's last CONNACK: did the broker keep our session (and retained configs)?
        session_present = bool(getattr(self._link, "session_present", False))
        self._spawn(self._sync_discovery(session_present=session_present))

    def replied(self, reply: Reply) -> None:
        """Every task's end: count it. A reply-only action answer (not held: something the
        caller carries out) is the last action; a dispatched one waits for `dispatched`."""
        self.metrics.metrics.reply(reply.to_json())
        # `reply.action` exists only for action tasks (service/pipeline/dispatch.py): a schema
        # task's output, whatever it looks like, never is an action.
        if not isinstance(reply, OkReply) or reply.action is None:
            return
        if reply.action.held is None and not reply.action.dispatched:
            self._publish_last_action(reply.id, reply.output)

    def dispatched(self, task_id: str, action: str) -> None:
        """An action message the broker confirmed (pipeline/delivery.py): the last action."""
        message = json.loads(action)  # the daemon's own ActionMessage
        self._publish_last_action(task_id, {"action": message["action"], "args": message["args"]})

    def _publish_last_action(self, task_id: str, output: Any) -> None:
        if not isinstance(output, dict):
            return
        topic, payload = homeassistant.last_action_message(
            self._topics, task_id, output, datetime.now(UTC)
        )
        self._link.publish(topic, payload, retain=True).add_done_callback(ignore_result)

    def heartbeat_taken(self, beat: Heartbeat) -> None:
        self._spawn(self._refresh_metrics(beat))

    def _spawn(self, body: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(body)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sync_discovery(self, *, session_present: bool) -> None:
        try:
            await self.discovery.sync(
                lambda topic, payload: self._link.publish(topic, payload, retain=True),
                session_present=session_present,
            )
        except (EdgeAgentError, PublishRefused, OutgoingQueueFull, OSError) as exc:
            log.warning("home assistant discovery not published", error=str(exc))

    async def _refresh_metrics(self, beat: Heartbeat) -> None:
        rows = await self._store.count()  # on the store's thread
        self.metrics.refresh(
            beat,
            journal_rows=rows,
            connects=getattr(self._link, "connects", None),
            puback_refusals=getattr(self._link, "refusals", None),
        )
