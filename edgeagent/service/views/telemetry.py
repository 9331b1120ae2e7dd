"""Telemetry: task counters, the retained heartbeat, and systemd's one-line STATUS=."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil
import structlog
from pydantic import ValidationError

from edgeagent.mqtt.pubacks import ignore_result
from edgeagent.protocol.heartbeat import Heartbeat
from edgeagent.protocol.topics import Topics
from edgeagent.service.ports import HeartbeatLink, MemoryLoop, StatusNotifier
from edgeagent.service.system.board import BoardReading, ThrottleWatch

log = structlog.get_logger("edgeagent.service.views.telemetry")
MIB = 2**20
# Each period is drawn from period * [1 - this, 1 + this]: devices that started together
# (a site back from a power cut, a fleet restarted by Ansible) drift apart instead of
# beating in the same second forever (docs/scale.md).
PERIOD_JITTER = 0.1


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


class QueueView(Protocol):
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...


class ContextView(Protocol):
    @property
    def n_ctx(self) -> int: ...


class StoreHealth(Protocol):
    @property
    def degraded(self) -> str | None: ...


def host_memory() -> dict[str, float]:
    """This process's RSS and the host's available memory, in MiB."""
    return {
        "rss_mb": round(psutil.Process().memory_info().rss / MIB, 1),
        "host_available_mb": round(psutil.virtual_memory().available / MIB, 1),
    }


class Telemetry:
    def __init__(
        self,
        *,
        device: str,
        topics: Topics,
        link: HeartbeatLink,
        notifier: StatusNotifier,
        queue: QueueView,
        engine: ContextView,
        memory: MemoryLoop,
        store: StoreHealth,
        period_s: float,
        wall_clock: Callable[[], float] = time.time,
        memory_usage: Callable[[], dict[str, float]] = host_memory,
        on_heartbeat: Callable[[Heartbeat], None] | None = None,
        board: Callable[[], dict[str, Any]] | None = None,
        holds: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.counters = Counters()
        self._device = device
        self._topics = topics
        self._link = link
        self._notifier = notifier
        self._queue = queue
        self._engine = engine
        self._memory = memory
        self._store = store
        self._state = "starting"  # the daemon's lifecycle state, as it last said
        self._period_s = period_s
        self._wall_clock = wall_clock
        self._memory_usage = memory_usage
        self._on_heartbeat = on_heartbeat  # the metrics: gauges from the same numbers
        self._board = board  # service/system/board.py: SoC temperature, throttling (what is known)
        self._holds = holds  # service/holds: `held` and `latest_hold`
        self._board_now = BoardReading()
        self._throttle = ThrottleWatch()

    def record_answer(self, completion_tokens: int, decode_s: float) -> None:
        self.counters.done += 1
        self.counters.recent.append((completion_tokens, decode_s))

    def record_failure(self) -> None:
        self.counters.failed += 1

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat's JSON object, as it is published."""
        return self.beat().to_json()

    def beat(self) -> Heartbeat:
        """A heartbeat as of now (protocol/heartbeat.py has its fields)."""
        degraded = self._store.degraded
        return Heartbeat.model_validate(
            {
                "device": self._device,
                "state": self._state,
                "ts": round(self._wall_clock(), 3),
                "queue": {"depth": len(self._queue), "capacity": self._queue.capacity},
                "tasks": {
                    "done": self.counters.done,
                    "failed": self.counters.failed,
                    "busy": self.counters.busy,
                },
                "tokens_per_s": self.counters.tokens_per_s(),
                "context": {"n_ctx": self._engine.n_ctx, **self._memory.snapshot()},
                "memory": self._memory_usage(),
                **self._board_field(),
                **(self._holds() if self._holds is not None else {}),
                "store": {"state": "ok"}
                if degraded is None
                else {"state": "degraded", "reason": degraded},
            }
        )

    def _board_field(self) -> dict[str, Any]:
        """`board` when the board tells anything; logs when throttling etc. start or end."""
        board = self._board() if self._board is not None else {}
        self._board_now = BoardReading.from_dict(board)
        for change in self._throttle.update(self._board_now):
            (log.warning if change.started else log.info)(change.message(), board=board)
        return {"board": board} if board else {}

    def status_line(self) -> str:
        tps = self.counters.tokens_per_s()
        decision = self._memory.decision
        budget = (
            f" (budget {decision.budget.tokens}, {decision.budget.limited_by})" if decision else ""
        )
        state = self._state
        line = (
            f"{state}; queue {len(self._queue)}/{self._queue.capacity}; "
            f"ctx {self._engine.n_ctx}{budget}; "
            f"done {self.counters.done} failed {self.counters.failed}; "
            f"{tps if tps is not None else '-'} tok/s"
        )
        if state == "paused" and decision is not None:
            line += f"; {decision.reason}"
        if self._store.degraded is not None:
            line += "; task store degraded: exactly-once not guaranteed"
        if board := self._board_now.status_suffix():
            line += f"; {board}"
        return line

    def refresh_status(self) -> None:
        self._notifier.status(self.status_line())

    def state_changed(self, state: str) -> None:
        """A lifecycle transition (daemon.State): systemd's STATUS= and the heartbeat say
        it at once, so Home Assistant and the fleet view see `draining` (and the rest) when
        it happens,
        not up to a heartbeat period later, or never: `stopped` goes out before the
        daemon's `offline` and its disconnect."""
        self._state = state
        self.publish_heartbeat()
        self.refresh_status()

    def publish_heartbeat(self) -> None:
        """Retained, while connected. Also on every connect (the daemon's hook), so the
        counters of the previous run are replaced at once."""
        try:
            heartbeat = self.beat()
        except ValidationError:
            # A reading the model does not describe (a bug, or a board that reports
            # something new): this heartbeat is skipped and said so, the daemon serves on.
            log.exception("heartbeat not published: a reading does not fit its model")
            return
        if self._on_heartbeat is not None:
            self._on_heartbeat(heartbeat)  # connected or not: the metrics stay current
        if not self._link.connected.is_set():
            return  # not queued for later: a stale heartbeat is worth nothing
        beat = heartbeat.to_json()
        future = self._link.publish(self._topics.heartbeat, json.dumps(beat), retain=True)
        future.add_done_callback(ignore_result)

    async def run(self) -> None:
        while True:
            self.publish_heartbeat()
            self.refresh_status()
            # Jitter, not a secret.
            spread = random.uniform(1 - PERIOD_JITTER, 1 + PERIOD_JITTER)  # noqa: S311
            await asyncio.sleep(self._period_s * spread)
