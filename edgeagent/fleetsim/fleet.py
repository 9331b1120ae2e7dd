"""N simulated devices on one event loop, each a real Daemon from service/assembly.py.

Per device: its own config (device id, state directory under the simulator's work
directory, the broker), the real MQTT link, task store, telemetry and Home Assistant
discovery; a ScriptedEngine instead of the model and a StaticMemory instead of the
memory loop. No sd_notify (the notifier is off), no signal handlers (`serve`, not `run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeagent.config import Config
from edgeagent.fleetsim.engine import ScriptedEngine, StaticMemory
from edgeagent.mqtt.link import MqttLink
from edgeagent.service.assembly import assemble
from edgeagent.service.daemon import Daemon
from edgeagent.service.learning.learner import Learner
from edgeagent.service.system import sdnotify

N_CTX = 2048
POLL_S = 0.05  # how often the links are looked at (their CONNACK times are exact)
STOP_TIMEOUT_S = 60.0

Settings = Mapping[str, Mapping[str, Any]]


def device_config(
    device: str, *, host: str, port: int, state_dir: Path, settings: Settings
) -> Config:
    """A device's config: the simulator's defaults, then `settings` (section -> values)."""
    data: dict[str, Any] = {
        "device": {"id": device},
        # Never opened: the scripted engine has no model file.
        "model": {"path": str(state_dir / "scripted.gguf"), "n_ctx": N_CTX, "max_tokens": 64},
        "mqtt": {"host": host, "port": port},
        "state": {"dir": str(state_dir)},
        "homeassistant": {"discovery": True},
        "log": {"level": "error"},
    }
    for section, values in settings.items():
        data.setdefault(section, {}).update(values)
    return Config.model_validate(data)


@dataclass(slots=True)
class Device:
    id: str
    daemon: Daemon
    link: MqttLink
    engine: ScriptedEngine
    serving: asyncio.Task[int] | None = None


class SimFleet:
    def __init__(
        self,
        count: int,
        *,
        workdir: Path,
        host: str,
        port: int,
        latency_s: float,
        settings: Settings,
        id_prefix: str = "sim",
    ) -> None:
        self.devices: list[Device] = []
        for index in range(count):
            device = f"{id_prefix}-{index:04d}"
            state_dir = workdir / device
            state_dir.mkdir(parents=True, exist_ok=True)
            cfg = device_config(
                device, host=host, port=port, state_dir=state_dir, settings=settings
            )
            engine = ScriptedEngine(latency_s)
            daemon = assemble(
                cfg,
                engine=engine,
                memory=StaticMemory(N_CTX),
                notifier=sdnotify.Notifier(None),
                learner=Learner.open(cfg),  # off unless --set catalog.learn=true
            )
            link = daemon.link
            if not isinstance(link, MqttLink):  # assemble builds the real link
                raise TypeError(f"{type(link).__name__} is no MqttLink")
            self.devices.append(Device(device, daemon, link, engine))

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.devices]

    def start(self) -> None:
        for device in self.devices:
            device.serving = asyncio.create_task(device.daemon.serve())

    def connected(self) -> int:
        return sum(1 for d in self.devices if d.link.connected.is_set())

    def connects(self) -> list[int]:
        return [d.link.connects for d in self.devices]

    def crashed(self) -> list[str]:
        """Devices whose daemon ended on its own (a loop crashed)."""
        return [d.id for d in self.devices if d.serving is not None and d.serving.done()]

    async def wait_connected(
        self, since: list[int], *, origin: float, within_s: float
    ) -> list[tuple[float, float] | None]:
        """For each device, once it had a connection newer than its count in `since`:
        (seconds from `origin` to the attempt that succeeded, to its CONNACK), both as
        stamped on paho's thread; None: not within `within_s`."""
        deadline = time.monotonic() + within_s
        times: list[tuple[float, float] | None] = [None] * len(self.devices)
        waiting = set(range(len(self.devices)))
        while waiting and time.monotonic() < deadline:
            for index in list(waiting):
                link = self.devices[index].link
                connected, attempted = link.connected_at, link.attempted_at
                if link.connects > since[index] and connected is not None:
                    times[index] = ((attempted or connected) - origin, connected - origin)
                    waiting.discard(index)
            await asyncio.sleep(POLL_S)
        return times

    async def stop(self) -> None:
        for device in self.devices:
            device.daemon.request_stop()
        tasks = [d.serving for d in self.devices if d.serving is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_TIMEOUT_S)
