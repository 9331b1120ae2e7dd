"""Prompt-lookup speculation with the real SmolLM2 model: the answers of plain greedy."""

from __future__ import annotations

import pytest

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError
from edgeagent.inference import runner as runner_module
from edgeagent.inference.contract import schema_spec
from edgeagent.inference.engine import Engine
from edgeagent.inference.speculative import DraftCosts, SpeculativeDecoder
from edgeagent.inference.task import Task

pytestmark = pytest.mark.model

EXTRACT = schema_spec(
    {
        "type": "object",
        "properties": {
            "service": {"type": "string", "maxLength": 40},
            "message": {"type": "string", "maxLength": 160},
            "fields": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                    "required": ["key", "value"],
                },
                "maxItems": 4,
            },
        },
        "required": ["service", "message", "fields"],
    }
)
SUMMARY = schema_spec(
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "points": {
                "type": "array",
                "items": {"type": "string", "maxLength": 120},
                "maxItems": 3,
            },
        },
        "required": ["title", "points"],
    }
)
INPUTS = [
    (
        EXTRACT,
        "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: device descriptor read/64, error -71; retrying in 500 ms (port 3, hub 1-1)",
    ),
    (
        EXTRACT,
        "2026-11-30T08:15:02Z mosquitto[812]: Client greenhouse-02 has exceeded timeout, disconnecting.",
    ),
    (
        EXTRACT,
        "sshd[2201]: Failed password for invalid user admin from 203.0.113.7 port 52144 ssh2",
    ),
    (
        SUMMARY,
        "Maintenance note: the irrigation pump in row B was replaced on Monday. The new pump needs priming after every power cut. Filters should be cleaned weekly.",
    ),
    (
        SUMMARY,
        "Zone 4 report at 14:05: air temperature 38.2 C, relative humidity 21 %, soil dry, fans running at full speed since noon.",
    ),
]


CFG = {"threads": 1, "n_ctx": 2048, "n_batch": 256, "max_tokens": 160}


@pytest.fixture(scope="module")
def engine(model_path):
    eng = Engine(ModelConfig(path=model_path, **CFG))
    eng.load()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain_engine(model_path):
    """The same model without speculation: the plain greedy token loop."""
    eng = Engine(ModelConfig(path=model_path, **CFG), speculate=False)
    eng.load()
    yield eng
    eng.close()


def answer(engine, spec, text):
    """The answer, or the error (SmolLM2 sometimes writes in circles until max_tokens:
    then both must fail the same way, with the same partial answer)."""
    try:
        got = engine.answer_blocking(Task(content=text, spec=spec, max_tokens=160))
    except EdgeAgentError as exc:
        return exc.code, exc.details.get("partial")
    else:
        return got.output, got.completion_tokens


def test_the_model_verifies_drafts_exactly(engine):
    # Measured when the model loads: batches of this many tokens give the logits of
    # single steps bit for bit (SmolLM2 Q4_1 on x86-64: 63; see invariance.py).
    assert engine.call_blocking(lambda runner: runner.model.invariant_rows) > 1


@pytest.mark.parametrize(("spec", "text"), INPUTS, ids=[t[:20] for _, t in INPUTS])
def test_speculative_answers_are_the_plain_greedy_answers(engine, plain_engine, spec, text):
    plain = answer(plain_engine, spec, text)
    fast = answer(engine, spec, text)
    assert fast == plain


def test_speculation_takes_tokens_from_the_input(engine, monkeypatch):
    spec, text = INPUTS[0]
    made = []

    def recorded(*args, **kwargs):
        made.append(SpeculativeDecoder(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(runner_module, "SpeculativeDecoder", recorded)

    def fresh_costs(runner):
        runner.model.draft_costs = DraftCosts()

    # Fresh costs: the answers before may have learnt that drafts do not pay on this
    # machine (then they are tried only now and then); a first answer always drafts.
    engine.call_blocking(fresh_costs)
    answer(engine, spec, text)
    (decoder,) = made
    assert decoder.stats.accepted > 0
