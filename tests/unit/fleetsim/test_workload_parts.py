"""The simulator's small parts: the scripted engine, shares and percentiles, the report's
table, the --set parser."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.fake_engine import CATALOG

from edgeagent.cli.bench_fleet import settings
from edgeagent.errors import EdgeAgentError, TaskHandedBack
from edgeagent.fleetsim.engine import SCHEMA, ScriptedEngine, StaticMemory
from edgeagent.fleetsim.fleet import device_config
from edgeagent.fleetsim.report import render
from edgeagent.fleetsim.requester import percentile
from edgeagent.inference.contract import action_spec, schema_spec
from edgeagent.inference.task import Task


def test_the_scripted_engine_answers_after_its_latency():
    async def scenario():
        engine = ScriptedEngine(0.05)
        await engine.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await engine.answer(Task(content="x", spec=schema_spec(SCHEMA), max_tokens=8))
        return answer, loop.time() - started, engine

    answer, took, engine = asyncio.run(scenario())
    assert answer.output == {"ok": True}
    assert 0.05 <= took < 0.5
    assert (answer.decode_ms, engine.answered, engine.busy) == (50.0, 1, False)


def test_the_scripted_engine_answers_an_action_task_with_an_allowed_action():
    async def scenario():
        spec = action_spec(CATALOG)
        return await ScriptedEngine(0).answer(Task(content="x", spec=spec, max_tokens=8))

    answer = asyncio.run(scenario())
    assert answer.output["action"] in {a.name for a in CATALOG}


def test_a_cancelled_task_is_handed_back():
    async def scenario():
        task = Task(content="x", spec=schema_spec(SCHEMA), max_tokens=8)
        task.cancel.set()
        await ScriptedEngine(5.0).answer(task)

    with pytest.raises(TaskHandedBack):
        asyncio.run(scenario())


def test_static_memory_never_pauses():
    memory = StaticMemory(2048)
    assert not memory.decision.paused
    assert memory.snapshot() == {"state": "normal", "budget": 2048}


def test_percentile_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (50.0, 99.0)
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.99) == 7.0


def test_set_parses_toml_values_and_keeps_other_text():
    assert settings(["mqtt.heartbeat_s=60", "homeassistant.republish=connect"]) == {
        "mqtt": {"heartbeat_s": 60},
        "homeassistant": {"republish": "connect"},
    }
    assert settings(['mqtt.topic_prefix="site-a"', "homeassistant.discovery=false"]) == {
        "mqtt": {"topic_prefix": "site-a"},
        "homeassistant": {"discovery": False},
    }
    with pytest.raises(EdgeAgentError, match=r"SECTION\.KEY=VALUE"):
        settings(["heartbeat_s=60"])


def test_a_device_config_is_a_valid_config_with_the_settings(tmp_path: Path):
    cfg = device_config(
        "sim-0001",
        host="127.0.0.1",
        port=1884,
        state_dir=tmp_path,
        settings={"mqtt": {"heartbeat_s": 60}},
    )
    assert (cfg.device.id, cfg.mqtt.port, cfg.mqtt.heartbeat_s) == ("sim-0001", 1884, 60)
    assert cfg.homeassistant.discovery
    assert cfg.state.dir == tmp_path


REPORT = json.loads((Path(__file__).parent / "report-sample.json").read_text(encoding="utf-8"))


def test_the_table_has_a_row_per_phase_and_every_figure():
    text = render(REPORT)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PHASE"))
    assert [line.split()[0] for line in lines[header + 1 : header + 5]] == [
        "start", "steady", "tasks", "restart",
    ]  # fmt: skip
    assert "p50 129.2  p99 260.1" in text
    assert "min 2  max 2" in text
    assert "all online 1.33 s after it was back" in text
    assert "CONNECTs in the busiest 100 ms" in text
    assert "573 KiB per device" in text
