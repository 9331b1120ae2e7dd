"""Many cached prompt prefixes with the real SmolLM2 model: reused, and the same answers."""

from __future__ import annotations

import pytest
from support.catalogs import GREENHOUSE_ACTIONS as CATALOG

from edgeagent.config import ModelConfig
from edgeagent.inference.contract import action_spec, schema_spec, select_actions
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Task

pytestmark = pytest.mark.model

CONTRACTS = [
    action_spec(select_actions(CATALOG, None)),
    schema_spec(
        {
            "type": "object",
            "properties": {
                "severity": {"enum": ["info", "warning", "error"]},
                "message": {"type": "string", "maxLength": 80},
            },
            "required": ["severity", "message"],
        }
    ),
    schema_spec(
        {
            "type": "object",
            "properties": {
                "zone": {"type": "integer", "minimum": 1, "maximum": 8},
                "celsius": {"type": "number"},
            },
            "required": ["zone", "celsius"],
        }
    ),
    schema_spec(
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 40},
                "urgent": {"type": "boolean"},
            },
            "required": ["title", "urgent"],
        }
    ),
]
INPUTS = [
    "Zone 3 is very dry, the soil sensor reads 12 %.",
    "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: device descriptor read/64, error -71",
    "The vent in zone 5 is stuck open and it is 4 C outside.",
]


@pytest.fixture(scope="module")
def engine(model_path):
    eng = Engine(ModelConfig(path=model_path, threads=1, n_ctx=2048, n_batch=256, max_tokens=96))
    eng.load()
    yield eng
    eng.close()


def uncached(engine, task):
    """The answer computed from scratch: empty KV cache, nothing in the prefix cache."""

    def run():
        model = engine.model
        limit = model.prefix_cache.limit_bytes
        model.prefix_cache.set_limit(0)
        model.kv.clear()
        try:
            return engine._answer(task)
        finally:
            model.prefix_cache.set_limit(limit)
            model.kv.clear()

    return engine.submit(run).result()


def test_alternating_contracts_reuse_their_prefixes_and_answer_the_same(engine):
    expected = {}
    for c, spec in enumerate(CONTRACTS):
        for i, text in enumerate(INPUTS):
            expected[c, i] = uncached(engine, Task(content=text, spec=spec, max_tokens=96))
    model = engine.model
    # Two rounds over four contracts, alternating: every contract's fixed part is
    # computed once, then comes back from the cache.
    for round_ in range(2):
        for i, text in enumerate(INPUTS):
            for c, spec in enumerate(CONTRACTS):
                answer = engine.answer_blocking(Task(content=text, spec=spec, max_tokens=96))
                assert answer.output == expected[c, i].output, (round_, c, i)
                if (round_, i) != (0, 0):
                    assert answer.cached_prompt_tokens > answer.prompt_tokens // 2
    stats = model.prefix_cache.stats()
    assert stats["entries"] >= len(CONTRACTS)
    assert stats["hits"] >= len(CONTRACTS) * (2 * len(INPUTS) - 1) - 1


def test_cached_prefix_bytes_are_bounded(engine):
    model = engine.model

    def shrink():
        model.prefix_cache.set_limit(model.prefix_cache.bytes // 2)
        return model.prefix_cache.stats()

    stats = engine.submit(shrink).result()
    assert stats["bytes"] <= stats["limit_bytes"]
    # Evicted prefixes are computed again: the answers do not change.
    task = Task(content=INPUTS[0], spec=CONTRACTS[1], max_tokens=96)
    assert engine.answer_blocking(task).output == uncached(engine, task).output
