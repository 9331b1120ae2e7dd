"""Confidence of action answers: the probability of the chosen name among the allowed ones."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from llguidance import LLMatcher
from support.scripted_model import LLTOKENIZER, ScriptedFactory, ScriptedModel, detokenize, tokenize

from edgeagent.config import ActionConfig, ModelConfig, SchemaLimits
from edgeagent.inference.act_prior import ActPriors
from edgeagent.inference.confidence import ConfidenceTracker, allowed_probability, tracker_for
from edgeagent.inference.contract import compile_contract, schema_spec
from edgeagent.inference.decoding import Sampler, StepControl, generate_constrained
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Answer, Task

PROMPT = tokenize("<|im_start|>user\nwhat now?<|im_end|>\n", special=True)
E = math.e
EMPTY_ARGS = {"type": "object", "properties": {}}


def actions(*names: str, reason: bool = False) -> dict:
    branches = []
    for name in names:
        args = {"type": "object", "properties": {}, "additionalProperties": False}
        properties: dict = {"action": {"const": name}, "args": args}
        required = ["action", "args"]
        if reason:
            properties = {"reason": {"type": "string", "maxLength": 20}, **properties}
            required = ["reason", *required]
        branches.append(
            {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            }
        )
    return {"anyOf": branches}


def run(model, schema, *, tracker=None, temperature=0.0):
    grammar = LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    tracker = tracker or ConfidenceTracker()
    generation = generate_constrained(
        model,
        LLMatcher(LLTOKENIZER, grammar),
        PROMPT,
        max_tokens=80,
        sampler=Sampler(temperature, seed=3),
        control=StepControl(),
        confidence=tracker,
    )
    return detokenize(generation.tokens), generation, tracker


def test_allowed_probability_is_the_softmax_over_the_allowed_tokens():
    logits = np.array([2.0, 1.0, 5.0, 0.0], dtype=np.float32)
    allowed = np.array([True, True, False, True])
    expected = E**2 / (E**2 + E + 1)
    assert allowed_probability(logits, allowed, 0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("names", "chosen", "steps", "expected"),
    [
        # After '{"action":"' the grammar allows "o", "ok", "a", "ab"; the model prefers
        # "ok" (logit 1, the rest 0). The closing quote and the arguments are forced.
        (("ok", "ab"), "ok", 1, E / (E + 3)),
        # Names sharing a first token are followed to where they differ: "a" or "ab"
        # first (both lead to "abx" and "aby"), then "x" or "y".
        (("abx", "aby", "a_z"), "aby", 2, (E / (E + 1)) ** 2),
        # A name that is the prefix of another: "ok" is forced, then the closing quote
        # (the end of "ok") competes with "a" and "ab".
        (("ok", "okab"), "ok", 1, E / (E + 2)),
    ],
)
def test_the_name_steps_weigh_the_chosen_token_among_the_allowed_ones(
    names, chosen, steps, expected
):
    answer = f'{{"action":"{chosen}","args":{{}}}}'
    text, generation, tracker = run(ScriptedModel(text=answer), actions(*names))
    assert text == answer
    assert tracker.steps == steps
    assert generation.confidence == pytest.approx(expected)


def test_a_reason_written_before_the_action_does_not_count():
    text, generation, tracker = run(
        ScriptedModel(text='{"reason":"ok ab \\"action\\":","action":"ok","args":{}}'),
        actions("ok", "ab", reason=True),
    )
    assert text.startswith('{"reason":"ok ab \\"action\\":","action":"ok"')
    assert tracker.steps == 1
    assert generation.confidence == pytest.approx(E / (E + 3))


def test_a_forced_name_is_certain_and_sampling_weighs_the_same_way():
    _, generation, tracker = run(ScriptedModel(text='{"action":"ok","args":{}}'), actions("ok"))
    assert tracker.steps == 0
    assert generation.confidence == 1.0
    _, generation, _ = run(
        ScriptedModel(text='{"action":"ab","args":{}}'), actions("ok", "ab"), temperature=1.0
    )
    assert generation.confidence is not None
    assert 0.0 < generation.confidence < 1.0


def test_schema_answers_have_no_confidence_and_action_answers_carry_it():
    cfg = ModelConfig(path=Path("/nonexistent/model.gguf"), threads=1, n_ctx=1024, n_batch=64)
    engine = Engine(cfg, factory=ScriptedFactory(text='{"ok":true}'))
    engine.load()
    try:
        spec = schema_spec({"type": "object", "properties": {"ok": {"type": "boolean"}}})
        answer = engine.answer_blocking(Task(content="fine?", spec=spec, max_tokens=20))
        assert answer.output == {"ok": True}
        assert answer.confidence is None
        assert answer.cut_short is False
    finally:
        engine.close(timeout=5)


GATE_CATALOG = [
    ActionConfig(name="water", description="Water.", dispatch=True, schema=EMPTY_ARGS),
    ActionConfig(name="idle", description="Idle.", nothing_to_do=True, schema=EMPTY_ARGS),
]


def gate_answer(names: list[str] | None) -> Answer:
    """The scripted model wants "idle" (nothing to do); `names` restricts the request."""
    cfg = ModelConfig(path=Path("/nonexistent/model.gguf"), threads=1, n_ctx=1024, n_batch=64)
    # ScriptedKv answers the calls the engine makes of KvContext without being one.
    scripted = ScriptedFactory(text='{"action":"idle","args":{}}')
    engine = Engine(cfg, factory=scripted)  # type: ignore[arg-type]
    engine.load()
    try:
        spec = compile_contract(GATE_CATALOG, action_names=names, limits=SchemaLimits())
        return engine.answer_blocking(Task(content="all fine", spec=spec, max_tokens=40))
    finally:
        engine.close()


def test_narrowing_the_allowed_actions_does_not_raise_the_confidence():
    # After '"' the whole catalog allows "w" (water) and "i" (idle); the model prefers
    # "i" (logit 1, the rest 0): P(water) = 1 / (1 + e).
    free = gate_answer(None)
    assert free.output == {"action": "idle", "args": {}}
    narrowed = gate_answer(["water"])
    assert narrowed.output == {"action": "water", "args": {}}
    # Forced by the request's own grammar, the name is still weighed against the
    # whole catalog: the confidence is the one the unrestricted request gives "water".
    assert narrowed.confidence == pytest.approx(1 / (1 + E))
    assert free.confidence == pytest.approx(1 - narrowed.confidence)
    # The act-or-not score is the same whatever the request allows.
    assert narrowed.act == pytest.approx(1 / (1 + E))
    assert free.act == pytest.approx(narrowed.act)
    # The scripted model answers the content-free input the same way: calibrated 0.5.
    assert narrowed.act_prior == pytest.approx(narrowed.act)


def test_a_forced_name_is_fed_alone_only_where_the_catalog_leaves_a_choice():
    model = ScriptedModel(text='{"action":"idle","args":{}}')
    spec = compile_contract(GATE_CATALOG, action_names=["water"], limits=SchemaLimits())
    tracker = tracker_for(spec, model)
    assert tracker is not None
    generation = generate_constrained(
        model,
        LLMatcher(LLTOKENIZER, spec.grammar),
        PROMPT,
        max_tokens=40,
        sampler=Sampler(),
        control=StepControl(),
        confidence=tracker,
    )
    assert detokenize(generation.tokens) == '{"action":"water","args":{}}'
    assert tracker.steps == 1  # "w": the rest of the name is forced in the catalog too
    assert [detokenize(batch) for batch in model.fed][:2] == ['{"action":"', "w"]


def test_the_content_free_prior_is_computed_once_per_catalog_prompt():
    priors = ActPriors(size=1)
    water = compile_contract(GATE_CATALOG, action_names=["water"], limits=SchemaLimits())
    free = compile_contract(GATE_CATALOG, limits=SchemaLimits())
    calls: list[str] = []

    def compute(name: str) -> float:
        calls.append(name)
        return 0.25

    # A restricted request has the whole catalog's prompt: the same prior.
    assert priors.get(free, lambda: compute("free")) == 0.25
    assert priors.get(water, lambda: compute("water")) == 0.25
    assert calls == ["free"]
    schema = schema_spec({"type": "object"})
    assert priors.get(schema, lambda: compute("schema")) is None
    assert calls == ["free"]
