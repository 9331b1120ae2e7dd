"""Answers that always finish, and confidence, with the real SmolLM2 model.

SmolLM2 keeps writing the `message` of a log event (up to its maxLength of 160
characters) and more: at a small max_tokens the answer used to end in OUTPUT_INVALID.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.catalogs import GREENHOUSE_ACTIONS as CATALOG

from edgeagent.config import ModelConfig
from edgeagent.inference.contract import action_spec, schema_spec
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Task

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]
LOG_EVENT = json.loads((ROOT / "eval" / "dev" / "schemas" / "log_event.json").read_text())
LINE = "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: device descriptor read/64, error -71"


@pytest.fixture(scope="module")
def engine(model_path):
    eng = Engine(ModelConfig(path=model_path, threads=1, n_ctx=2048, n_batch=256, max_tokens=256))
    eng.load()
    yield eng
    eng.close()


def ask(engine, spec, text, max_tokens):
    answer = engine.answer_blocking(Task(content=text, spec=spec, max_tokens=max_tokens))
    spec.validate(answer.output)  # independent re-check
    return answer


def test_a_long_extraction_cut_by_max_tokens_still_validates(engine):
    spec = schema_spec(LOG_EVENT)
    answer = ask(engine, spec, LINE, max_tokens=48)
    assert answer.cut_short
    assert answer.completion_tokens <= 48
    assert set(answer.output) == {"host", "service", "severity", "code", "message"}
    assert answer.confidence is None  # schema answers carry none


def test_an_answer_that_ends_on_its_own_is_unchanged_at_its_exact_budget(engine):
    spec = schema_spec(LOG_EVENT)
    free = ask(engine, spec, LINE, max_tokens=256)
    assert not free.cut_short
    # Every token of this run is checked against the budget (the last 64 are), and
    # none may change: the model's own answer fits.
    tight = ask(engine, spec, LINE, max_tokens=free.completion_tokens)
    assert tight.output == free.output
    assert tight.completion_tokens == free.completion_tokens
    assert not tight.cut_short


def test_action_answers_carry_a_probability(engine):
    spec = action_spec(CATALOG)
    answer = ask(engine, spec, "Zone 3 is very dry, water it for 20 minutes", max_tokens=64)
    assert answer.confidence is not None
    assert 0.0 < answer.confidence <= 1.0
    assert not answer.cut_short
