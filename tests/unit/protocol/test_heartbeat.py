"""The heartbeat's models: the daemon's JSON as it was byte for byte, every producer's
part fits the strict writer, and other devices' heartbeats are read without raising."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from support.fake_engine import FakeEngine, FakeNotifier
from support.fake_link import FakeLink
from support.heartbeats import DEEP, NESTED, beat, hostile_beats
from support.scripted_model import METADATA

from edgeagent.cli.fleet_heartbeat import read_heartbeat
from edgeagent.config import Config, MemoryConfig, ModelConfig
from edgeagent.fleetsim.engine import StaticMemory
from edgeagent.memory.control import MemoryControlLoop
from edgeagent.memory.readings import MemoryReading, MemorySource
from edgeagent.protocol.heartbeat import ContextInfo, Heartbeat, UntrustedHeartbeat
from edgeagent.protocol.reply import ReplyRoute
from edgeagent.protocol.topics import Topics
from edgeagent.service.holds.pending import PendingHolds
from edgeagent.service.holds.records import Draft, HoldRecord, HoldState
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.task_records import Confirmation
from edgeagent.service.system.board import BoardReading
from edgeagent.service.views.telemetry import Telemetry

MIB = 2**20
DOCS = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


class ResizableEngine:
    """Enough of an engine for the real memory control loop (memory.control)."""

    n_ctx = 512
    n_ctx_train = 8192
    metadata = METADATA

    def buffer_bytes(self) -> tuple[int, int]:
        return self.n_ctx * 1024, MIB

    async def resize(self, n_ctx: int) -> None:
        self.n_ctx = n_ctx


def cgroup_reading() -> MemoryReading:
    return MemoryReading(
        host_available_bytes=2210 * MIB,
        host_total_bytes=8 * 2**30,
        swap_free_bytes=0,
        process_rss_bytes=612 * MIB,
        cgroup_version=2,
        cgroup_path="/system.slice/edgeagent.service",
        cgroup_limit_bytes=1500 * MIB,
        cgroup_usage_bytes=300 * MIB,
        psi_some_avg10=None,
        source=MemorySource.CGROUP,
        available_bytes=1210 * MIB + 419430,
    )


def memory_loop() -> MemoryControlLoop:
    """The real loop after its first reading: its snapshot has every field."""
    cfg = Config(
        model=ModelConfig(path=Path("/nonexistent.gguf"), n_ctx=4096, n_batch=256),
        memory=MemoryConfig(reserve_mb=8, min_ctx=512),
    )
    loop = MemoryControlLoop(ResizableEngine(), cfg, read=cgroup_reading)
    asyncio.run(loop.start())
    return loop


def pending_holds() -> PendingHolds:
    draft = Draft(
        task_id="t-43",
        action="set_irrigation",
        args={"zone": 3, "minutes": 20, "note": "ü\u2028"},
        confidence=0.41234567,
        action_topic="edgeagent/greenhouse-01/actions/set_irrigation",
        notice="{}",
        reply="{}",
        routes=(ReplyRoute("replies/a"),),
        text="Water zone 3",
        held_at=1764403100.0,
        expires_at=1764406700.0,
    )
    holds = PendingHolds()
    holds.keep(HoldRecord(draft, HoldState.PENDING, seq=1, notice_state=Confirmation.CONFIRMED))
    return holds


class Store:
    degraded: str | None = None


def telemetry(
    *,
    memory: Any,
    board: dict[str, Any],
    holds: PendingHolds | None,
    link: FakeLink | None = None,
    store: Store | None = None,
) -> Telemetry:
    queue: TaskQueue[str] = TaskQueue(16)
    queue.offer("a")
    engine = FakeEngine()
    engine.n_ctx = 4096
    return Telemetry(
        device="greenhouse-01",
        topics=Topics("edgeagent", "greenhouse-01", "edgeagent"),
        link=link or FakeLink(),
        notifier=FakeNotifier(),
        queue=queue,
        engine=engine,
        memory=memory,
        store=store or Store(),
        period_s=3600,
        wall_clock=lambda: 1764403200.12345,
        memory_usage=lambda: {"rss_mb": 612.3, "host_available_mb": 2210.0},
        board=lambda: board,
        holds=holds.heartbeat if holds is not None else None,
    )


def body_before_the_model(
    t: Telemetry, memory: Any, board: dict[str, Any], holds: Any, degraded: str | None
) -> str:
    """What Telemetry.heartbeat() published before protocol/heartbeat.py: this dict, in
    this order, through json.dumps (the wire format the model must keep)."""
    body = {
        "device": "greenhouse-01",
        "state": "starting",
        "ts": 1764403200.123,
        "queue": {"depth": 1, "capacity": 16},
        "tasks": {"done": t.counters.done, "failed": t.counters.failed, "busy": 0},
        "tokens_per_s": t.counters.tokens_per_s(),
        "context": {"n_ctx": 4096, **memory.snapshot()},
        "memory": {"rss_mb": 612.3, "host_available_mb": 2210.0},
        **({"board": board} if board else {}),
        **(holds.heartbeat() if holds is not None else {}),
        "store": {"state": "ok"} if degraded is None else {"state": "degraded", "reason": degraded},
    }
    return json.dumps(body)


THROTTLED = BoardReading(temp_c=71.5, throttled_bits=0x50005).as_dict()


class NoReading:
    """The memory loop before its first reading: an empty snapshot."""

    def snapshot(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("memory", "board", "holds", "degraded", "answered"),
    [
        pytest.param(NoReading(), {}, None, None, False, id="first beat: nothing optional"),
        pytest.param(memory_loop, THROTTLED, pending_holds, "finish: disk I/O", True, id="all"),
        pytest.param(memory_loop, {"temp_c": 48.2}, PendingHolds, None, True, id="no hold"),
    ],
)
def test_the_published_json_is_what_the_daemon_published_before(
    memory: Any, board: dict[str, Any], holds: Any, degraded: str | None, answered: bool
) -> None:
    memory = memory() if callable(memory) else memory
    holds = holds() if callable(holds) else holds
    link, store = FakeLink(), Store()
    store.degraded = degraded
    t = telemetry(memory=memory, board=board, holds=holds, link=link, store=store)
    if answered:
        t.record_answer(completion_tokens=47, decode_s=4.0)
        t.record_failure()
    link.connected.set()

    async def publish() -> None:
        t.publish_heartbeat()

    asyncio.run(publish())
    (published,) = link.on("edgeagent/greenhouse-01/heartbeat")
    assert published.payload == body_before_the_model(t, memory, board, holds, degraded)


def test_the_memory_snapshot_fills_every_context_field_in_order() -> None:
    """A field the memory loop adds without adding it to ContextInfo would fail the
    strict model (and a renamed one would leave the model's field unset)."""
    snapshot = memory_loop().snapshot()
    assert list(ContextInfo.model_fields) == ["n_ctx", *snapshot]


def test_the_fleet_benchs_memory_fits_the_context() -> None:
    """bench --fleet's daemons (fleetsim/engine.py) publish this snapshot."""
    ContextInfo.model_validate({"n_ctx": 2048, **StaticMemory(2048).snapshot()})


def full_body() -> dict[str, Any]:
    holds = pending_holds()
    t = telemetry(memory=memory_loop(), board=THROTTLED, holds=holds)
    t.record_answer(completion_tokens=47, decode_s=4.0)
    return t.heartbeat()


def test_the_writer_is_strict() -> None:
    body = full_body()
    Heartbeat.model_validate(body)
    for wrong in (
        {**body, "uptime_s": 5},  # a field the model does not name
        {**body, "context": {**body["context"], "pressure": 0.3}},
        {**body, "queue": {"depth": "1", "capacity": 16}},
        {**body, "tasks": {"done": True, "failed": 0, "busy": 0}},
        {**body, "store": {"state": "fine"}},
        {k: v for k, v in body.items() if k != "store"},
    ):
        with pytest.raises(ValidationError):
            Heartbeat.model_validate(wrong)


def test_the_documented_heartbeat_is_one_the_model_writes_as_documented() -> None:
    section = DOCS.read_text(encoding="utf-8").split("## Heartbeat", 1)[1]
    example = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert example is not None
    body = json.loads(example[1])
    assert json.dumps(Heartbeat.model_validate(body).to_json()) == json.dumps(body)


def test_another_daemons_heartbeat_reads_back_whole() -> None:
    """Every field a reader looks for is where the writer puts it."""
    read, problem = read_heartbeat(json.dumps(full_body()).encode())
    assert problem is None
    assert read is not None
    unset = [name for name, value in read if value is None]
    for name, value in read:
        if isinstance(value, BaseModel):
            unset += [f"{name}.{part}" for part, got in value if got is None]
    assert unset == []
    assert read.state == "starting"
    assert read.board is not None
    assert read.board.temp_c == 71.5


def _hostile_payloads() -> list[bytes]:
    payloads = [DEEP.encode(), NESTED.encode(), b"", b"null", b"[]", b'"x"', b"\xff\xfe"]
    for round_ in range(2):
        for _status, body in hostile_beats("pi-x", round_):
            payloads.append(body if isinstance(body, bytes) else json.dumps(body).encode())
    payloads += [
        json.dumps(beat("pi-x", queue={"depth": -1, "capacity": 10**30})).encode(),
        json.dumps(beat("pi-x", board={"temp_c": 1e308}) | {"state": None}).encode(),
        json.dumps({"context": {"budget": True, "available_mb": "1"}}).encode(),
    ]
    return payloads


def test_hostile_heartbeats_read_as_nothing_or_safe_values() -> None:
    for payload in _hostile_payloads():
        read, _problem = read_heartbeat(payload)  # never raises
        if read is None:
            continue
        assert isinstance(read, UntrustedHeartbeat)
        assert read.state is None or len(read.state) <= 256
        numbers = [read.tokens_per_s, read.ts]
        numbers += [read.queue.depth, read.queue.capacity] if read.queue else []
        numbers += [read.context.budget, read.context.available_mb] if read.context else []
        numbers += [read.memory.host_available_mb] if read.memory else []
        for number in numbers:
            assert number is None or (type(number) in (int, float) and 0 <= number <= 1e11)
        assert read.board is None or read.board.temp_c is None or -100 <= read.board.temp_c <= 200
