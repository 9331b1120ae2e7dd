"""What the service needs from its collaborators, as small Protocols.

The real implementations are the MQTT link (edgeagent.mqtt.link.MqttLink), the engine
(edgeagent.inference.engine.Engine) and the memory control loop
(edgeagent.memory.control.MemoryControlLoop); tests pass in-memory stand-ins
(tests/support/fake_link.py, fake_engine.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from edgeagent.inference.task import Answer, Task
from edgeagent.mqtt.incoming import Incoming


class Publisher(Protocol):
    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[None]:
        """QoS 1; resolves on the broker's success PUBACK, fails with PublishRefused on a
        refusal and with OutgoingQueueFull when too many publishes are unsent."""
        ...


class Acknowledger(Protocol):
    def ack(self, message: Incoming) -> bool:
        """PUBACK a task message on the connection it came on; False when that is gone."""
        ...


class Connection(Protocol):
    @property
    def connected(self) -> asyncio.Event: ...


class DeliveryLink(Publisher, Acknowledger, Protocol):
    """Delivery publishes replies and actions and acknowledges tasks."""


class HeartbeatLink(Publisher, Connection, Protocol):
    """Telemetry publishes the heartbeat while connected."""


class ServiceLink(Publisher, Acknowledger, Connection, Protocol):
    """The daemon starts and stops the connection and announces online/offline."""

    def start(
        self, on_message: Callable[[Incoming], None], on_connect: Callable[[], None] | None = None
    ) -> None: ...
    def stop(self) -> None: ...


class ProgressSource(Protocol):
    """The inference thread's progress, read by the systemd watchdog."""

    @property
    def busy(self) -> bool: ...
    @property
    def last_progress(self) -> float: ...


class InferenceEngine(ProgressSource, Protocol):
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_ctx_train(self) -> int: ...
    async def start(self, n_ctx: int | None = None) -> None: ...
    async def answer(self, task: Task) -> Answer: ...
    def at_once(self, running: int, waiting: int) -> int: ...
    def close(self, timeout: float | None = None) -> bool: ...


class BudgetView(Protocol):
    @property
    def tokens(self) -> int: ...
    @property
    def limited_by(self) -> str: ...


class MemoryVerdict(Protocol):
    """What the service reads of a memory governor decision."""

    @property
    def paused(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def budget(self) -> BudgetView: ...


class MemoryLoop(Protocol):
    """The memory control loop's public surface (MemoryControlLoop)."""

    @property
    def decision(self) -> MemoryVerdict | None: ...
    async def start(self, on_change: Callable[[MemoryVerdict], None]) -> object: ...
    async def run(self) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


class StatusNotifier(Protocol):
    """sd_notify (sdnotify.Notifier); does nothing outside systemd."""

    @property
    def enabled(self) -> bool: ...
    def ready(self, status: str | None = None) -> bool: ...
    def status(self, text: str) -> bool: ...
    def stopping(self, status: str | None = None) -> bool: ...
    def reloading(self, status: str | None = None) -> bool: ...
    def watchdog(self) -> bool: ...
