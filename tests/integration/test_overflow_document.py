"""Inputs longer than the context budget: truncate, chunk (map-reduce), reject.

Real SmolLM2, budget 2,048 tokens, a ~14,000-token document: seven budgets, so the map
runs and their combine go as for any longer one, in half the time 28,000 tokens took.
"""

from __future__ import annotations

import random

import pytest

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import schema_spec
from edgeagent.inference.engine import Engine
from edgeagent.inference.task import Task

pytestmark = [pytest.mark.model, pytest.mark.slow]

BUDGET = 2048
SUMMARY = schema_spec(
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "summary": {"type": "string", "maxLength": 160},
        },
        "required": ["title", "summary"],
    }
)


def logbook(target_words: int, seed: int = 7) -> str:
    """A deterministic greenhouse logbook: varied sentences, no copy-paste repetition."""
    rng = random.Random(seed)
    zones = [f"zone {i}" for i in range(1, 9)]
    crops = ["tomatoes", "peppers", "basil", "lettuce", "cucumbers", "strawberries"]
    events = [
        "the drip line was flushed and the filter cleaned",
        "humidity climbed above eighty percent before the vents opened",
        "a fan bearing started to squeal and was greased",
        "aphids were found on the lower leaves and ladybirds released",
        "the pH of the nutrient tank drifted to {ph} and was corrected",
        "soil moisture dropped to {m} percent by the afternoon",
        "the heater ran for {h} minutes during the night",
        "a sensor reported {t} degrees, which looked wrong and was recalibrated",
    ]
    words = 0
    day = 0
    paragraphs = []
    while words < target_words:
        day += 1
        sentences = [f"Day {day}."]
        for _ in range(rng.randint(4, 8)):
            event = rng.choice(events).format(
                ph=round(rng.uniform(5.2, 7.4), 1),
                m=rng.randint(8, 45),
                h=rng.randint(5, 240),
                t=round(rng.uniform(-3, 48), 1),
            )
            sentences.append(f"In {rng.choice(zones)} with the {rng.choice(crops)}, {event}.")
        paragraph = " ".join(sentences)
        words += len(paragraph.split())
        paragraphs.append(paragraph)
    return "\n".join(paragraphs)


@pytest.fixture(scope="module")
def engine(model_path):
    # One thread: two spin-waiting threads collapse when the other tests share the cores.
    eng = Engine(ModelConfig(path=model_path, threads=1, n_ctx=BUDGET, n_batch=256, max_tokens=128))
    eng.load()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def document(engine):
    text = logbook(10_300)
    n_tokens = len(engine.call_blocking(lambda runner: runner.tokenize(text)))
    assert 13_000 <= n_tokens <= 15_500, n_tokens
    return text


def test_reject_is_context_budget(engine, document):
    with pytest.raises(EdgeAgentError) as info:
        engine.answer_blocking(
            Task(content=document, spec=SUMMARY, max_tokens=128, overflow="reject")
        )
    assert info.value.code is ErrorCode.CONTEXT_BUDGET
    assert info.value.details["budget"] == BUDGET


def test_truncate_keeps_head_and_tail(engine, document):
    answer = engine.answer_blocking(
        Task(content=document, spec=SUMMARY, max_tokens=128, overflow="truncate")
    )
    SUMMARY.validate(answer.output)
    assert answer.n_ctx == BUDGET
    assert answer.chunks == 1
    assert answer.truncated > 11_000
    assert answer.prompt_tokens + 128 <= BUDGET


def test_chunk_summarises_a_14k_token_document(engine, document):
    answer = engine.answer_blocking(
        Task(content=document, spec=SUMMARY, max_tokens=128, overflow="chunk")
    )
    SUMMARY.validate(answer.output)
    assert answer.n_ctx == BUDGET
    assert answer.truncated == 0
    # ~14,000 tokens in chunks of at most ~1,800: at least 7 map runs, plus the combine.
    assert answer.chunks >= 7
    assert answer.prompt_tokens > 14_000  # every input token was read (plus prompts)
    print(
        f"chunk: {answer.chunks} chunks, {answer.prompt_tokens} prompt tokens, "
        f"{answer.completion_tokens} completion tokens, "
        f"{(answer.prompt_ms + answer.decode_ms) / 1000:.1f} s"
    )


def test_messages_overflow_cuts_only_the_last_user_message(engine, document):
    messages = [
        {"role": "system", "content": "Logbook of greenhouse 7."},
        {"role": "user", "content": document},
    ]
    answer = engine.answer_blocking(
        Task(content=messages, spec=SUMMARY, max_tokens=128, overflow="truncate")
    )
    SUMMARY.validate(answer.output)
    assert answer.truncated > 11_000
