"""Many cached prompt prefixes with the real SmolLM2 model: reused, and the same answers."""

from __future__ import annotations

import pytest
from support.catalogs import GREENHOUSE_ACTIONS as CATALOG

from edgeagent.config import ModelConfig
from edgeagent.inference.contract import action_spec, schema_spec, select_actions
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Task

pytestmark = pytest.mark.model

# Action contracts: their fixed part (the catalog's instructions) is the device's own
# text, shared across callers. A caller's schema is not (test_prefix_oracle below).
CONTRACTS = [
    action_spec(select_actions(CATALOG, names))
    for names in (None, ["open_vent", "notify"], ["notify", "start_heater"], ["open_vent"])
]
EVENT = schema_spec(
    {
        "type": "object",
        "properties": {
            "severity": {"enum": ["info", "warning", "error"]},
            "message": {"type": "string", "maxLength": 80},
        },
        "required": ["severity", "message"],
    }
)
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

    def run(runner):
        model = runner.model
        limit = model.prefix_cache.limit_bytes
        model.prefix_cache.set_limit(0)
        model.kv.clear()
        try:
            return runner.answer(task)  # on the inference thread, on the model itself
        finally:
            model.prefix_cache.set_limit(limit)
            model.kv.clear()

    return engine.call_blocking(run)


def prefix_cache(engine):
    return engine.call_blocking(lambda runner: runner.model.prefix_cache)


def test_alternating_contracts_reuse_their_prefixes_and_answer_the_same(engine):
    expected = {}
    for c, spec in enumerate(CONTRACTS):
        for i, text in enumerate(INPUTS):
            expected[c, i] = uncached(engine, Task(content=text, spec=spec, max_tokens=96))
    # Two rounds over four contracts, alternating: every contract's fixed part is
    # computed once, then comes back from the cache.
    for round_ in range(2):
        for i, text in enumerate(INPUTS):
            for c, spec in enumerate(CONTRACTS):
                answer = engine.answer_blocking(Task(content=text, spec=spec, max_tokens=96))
                assert answer.output == expected[c, i].output, (round_, c, i)
                if (round_, i) != (0, 0):
                    assert answer.cached_prompt_tokens > answer.prompt_tokens // 2
    stats = prefix_cache(engine).stats()
    assert stats["entries"] >= len(CONTRACTS)
    assert stats["hits"] >= len(CONTRACTS) * (2 * len(INPUTS) - 1) - 1


def test_cached_prefix_bytes_are_bounded(engine):
    def shrink(runner):
        cache = runner.model.prefix_cache
        cache.set_limit(cache.bytes // 2)
        return cache.stats()

    stats = engine.call_blocking(shrink)
    assert stats["bytes"] <= stats["limit_bytes"]
    # Evicted prefixes are computed again: the answers do not change.
    task = Task(content=INPUTS[0], spec=CONTRACTS[1], max_tokens=96)
    assert engine.answer_blocking(task).output == uncached(engine, task).output


SECRET_SYSTEM = "You work for Fenwick Farms. The greenhouse door code is 4711."
WRONG_GUESS = "You work for Fenwick Farms. The greenhouse door code is 1234."


def cached_after(engine, victim, guess):
    """cached_prompt_tokens of the guess, right after the victim's task."""
    engine.answer_blocking(victim)
    return engine.answer_blocking(guess).cached_prompt_tokens


def chat(system, text):
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


@pytest.mark.parametrize("spec", [CONTRACTS[0], EVENT], ids=["catalog", "schema"])
def test_a_guessed_system_message_cannot_be_told_from_a_wrong_one(engine, spec):
    """Caller A's system text must not be served to caller B from the cache: B's
    right guess gets exactly the cached tokens of a wrong one (the device's prefix)."""
    victim = Task(content=chat(SECRET_SYSTEM, INPUTS[0]), spec=spec, max_tokens=96)
    right = Task(content=chat(SECRET_SYSTEM, INPUTS[1]), spec=spec, max_tokens=96)
    wrong = Task(content=chat(WRONG_GUESS, INPUTS[1]), spec=spec, max_tokens=96)
    on_right = cached_after(engine, victim, right)
    on_wrong = cached_after(engine, victim, wrong)
    assert on_right == on_wrong
    # What is reused is at most the device's own prefix (still cached for catalogs).
    device = engine.call_blocking(lambda runner: runner.prompt(spec, INPUTS[1]))
    assert on_right <= device.keep
    if spec.kind == "action":
        assert on_right >= 32


def test_a_guessed_schema_cannot_be_told_from_a_wrong_one(engine):
    guessed = schema_spec(
        {"type": "object", "properties": {"door_code": {"enum": ["4711"]}}, "required": []}
    )
    other = schema_spec(
        {"type": "object", "properties": {"door_code": {"enum": ["1234"]}}, "required": []}
    )
    victim = Task(content=INPUTS[0], spec=guessed, max_tokens=32)
    on_right = cached_after(engine, victim, Task(content=INPUTS[1], spec=guessed, max_tokens=32))
    on_wrong = cached_after(engine, victim, Task(content=INPUTS[1], spec=other, max_tokens=32))
    assert on_right == on_wrong
