"""Prompt-lookup speculation on the scripted model: same answers, fewer model passes."""

from __future__ import annotations

import pytest
from llguidance import LLMatcher
from support.scripted_model import LLTOKENIZER, ScriptedModel, detokenize, tokenize

from edgeagent.inference.contract import schema_spec
from edgeagent.inference.decoding import Sampler, StepControl, generate_constrained
from edgeagent.inference.speculative import (
    MEASURE_EVERY,
    WARM_UP,
    DraftCosts,
    NgramLookup,
    SpeculativeDecoder,
)

MESSAGE = schema_spec(
    {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
)
LEVEL = schema_spec(
    {
        "type": "object",
        "properties": {"level": {"enum": ["low", "high"]}, "note": {"type": "string"}},
        "required": ["level", "note"],
    }
)


def run(model, spec, prompt, *, speculate, max_draft=8, max_tokens=80):
    matcher = LLMatcher(LLTOKENIZER, spec.grammar)
    decoder = (
        SpeculativeDecoder(model, matcher, max_tokens=max_tokens, max_draft=max_draft)
        if speculate
        else model
    )
    generation = generate_constrained(
        decoder,
        matcher,
        prompt,
        max_tokens=max_tokens,
        sampler=Sampler(),
        control=StepControl(),
    )
    return detokenize(generation.tokens), generation, decoder


def test_lookup_proposes_what_followed_the_longest_earlier_match():
    lookup = NgramLookup(min_n=2, max_n=4)
    lookup.reset([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    lookup.extend([2, 3])
    # [2, 3] last ended at index 7 (followed by 7, 8); [9, 2, 3] does not end the history.
    assert lookup.propose(4) == [7, 8, 2, 3]
    lookup.extend([4])
    # [2, 3, 4] occurred at 1..3: followed by 5, 9, ...
    assert lookup.propose(2) == [5, 9]


def test_lookup_proposes_nothing_without_a_match_of_two_tokens():
    lookup = NgramLookup()
    lookup.reset([1, 2, 3])
    lookup.extend([3])  # [3, 3] never occurred; a one-token match does not count
    assert lookup.propose(4) == []
    assert lookup.propose(0) == []


def test_copied_span_is_verified_in_batches_and_the_answer_is_unchanged():
    text = '{"message":"device descriptor read error"}'
    prompt = tokenize("Log: usb 1-1.3: device descriptor read error, port 3. Answer:")
    plain_model = ScriptedModel(text=text)
    plain, plain_gen, _ = run(plain_model, MESSAGE, prompt, speculate=False)
    model = ScriptedModel(text=text)
    fast, gen, decoder = run(model, MESSAGE, prompt, speculate=True)
    assert fast == plain == text
    assert gen.tokens == plain_gen.tokens
    assert decoder.stats.accepted > 0
    assert model.verified
    # Fewer model passes than tokens: accepted draft tokens needed none.
    assert len(model.fed) < len(plain_model.fed)


def test_a_draft_the_model_does_not_follow_is_rewound():
    # The prompt continues "read" with " timeout"; the model writes " error".
    text = '{"message":"device descriptor read error"}'
    prompt = tokenize("Log: device descriptor read timeout. Answer:")
    plain, _, _ = run(ScriptedModel(text=text), MESSAGE, prompt, speculate=False)
    model = ScriptedModel(text=text)
    fast, _, decoder = run(model, MESSAGE, prompt, speculate=True)
    assert fast == plain == text
    assert model.rewound
    assert decoder.stats.accepted < decoder.stats.drafted


def test_drafts_are_cut_to_what_the_grammar_accepts():
    # The prompt has 'level":"medium' but the enum allows only low/high: the draft after
    # 'level":"' must not propose "medium".
    text = '{"level":"high","note":"ok"}'
    prompt = tokenize('Example: {"level":"medium","note":"ok"} Answer:')
    model = ScriptedModel(text=text)
    fast, _, _ = run(model, LEVEL, prompt, speculate=True)
    assert fast == text
    assert all("medium" not in detokenize(batch) for batch in model.verified)


@pytest.mark.parametrize("max_draft", [0, 1, 3])
def test_draft_length_is_bounded(max_draft):
    text = '{"message":"device descriptor read error"}'
    prompt = tokenize("Log: device descriptor read error. Answer:")
    model = ScriptedModel(text=text)
    fast, _, decoder = run(model, MESSAGE, prompt, speculate=True, max_draft=max_draft)
    assert fast == text
    assert all(len(batch) <= max_draft + 1 for batch in model.verified)
    if max_draft == 0:
        assert decoder.stats.drafts == 0


def test_drafts_stay_within_max_tokens():
    text = '{"message":"device descriptor read error"}'
    prompt = tokenize("Log: device descriptor read error. Answer:")
    model = ScriptedModel(text=text)
    max_tokens = len(tokenize(text))
    peak = []
    feed = model.feed

    def feed_and_measure(tokens):
        feed(tokens)
        peak.append(len(model._kv))

    model.feed = feed_and_measure
    fast, _, decoder = run(model, MESSAGE, prompt, speculate=True, max_tokens=max_tokens)
    assert fast == text
    assert decoder.stats.drafts
    # The KV cache never holds more than the prompt and max_tokens (what was reserved).
    assert max(peak) <= len(prompt) + max_tokens


def test_where_a_verification_row_costs_a_step_drafts_are_only_tried_now_and_then():
    costs = DraftCosts()
    costs.stepped(40.0)
    for _ in range(WARM_UP):
        assert costs.worth_drafting()
        costs.verified(5 * 40.0, rows=5)  # 5 rows cost 5 steps: row_cost 1
        costs.resolved(used=3, drafted=4)  # 3 of 4 taken: below what a row costs
    tried = [costs.worth_drafting() for _ in range(4 * MEASURE_EVERY)]
    assert sum(tried) == 4  # one in MEASURE_EVERY, to measure again


def test_where_rows_are_cheap_drafts_go_on():
    costs = DraftCosts()
    costs.stepped(80.0)
    for _ in range(3 * WARM_UP):
        costs.verified(1.2 * 80.0, rows=5)  # bandwidth-bound: 5 rows cost 1.2 steps
        costs.resolved(used=2, drafted=4)
        assert costs.worth_drafting()


def test_costs_learnt_on_the_model_are_shared_and_answers_do_not_change():
    text = '{"message":"device descriptor read error"}'
    prompt = tokenize("Log: usb 1-1.3: device descriptor read error, port 3. Answer:")
    plain, _, _ = run(ScriptedModel(text=text), MESSAGE, prompt, speculate=False)
    model = ScriptedModel(text=text)
    model.draft_costs = DraftCosts(row_cost=2.0, accepted=0.5, verifications=WARM_UP)
    fast, _, decoder = run(model, MESSAGE, prompt, speculate=True)
    assert fast == plain == text
    assert decoder.costs is model.draft_costs
    assert decoder.stats.drafts <= 1 + decoder.costs.skipped // MEASURE_EVERY
