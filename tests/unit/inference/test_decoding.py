"""The constrained token loop against a scripted model: no llama.cpp, milliseconds."""

from __future__ import annotations

import threading
import time

import pytest
from llguidance import LLMatcher
from support.scripted_model import END, LLTOKENIZER, ScriptedModel, detokenize, token, tokenize

from edgeagent.errors import EdgeAgentError, ErrorCode, TaskHandedBack
from edgeagent.inference.decoding import Sampler, StepControl, generate_constrained
from edgeagent.inference.repetition import MIN_REPEATS

ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "integer"}},
    "required": ["zone"],
    "additionalProperties": False,
}
PROMPT = tokenize("<|im_start|>user\nwhich zone?<|im_end|>\n", special=True)


def matcher(schema):
    grammar = LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    return LLMatcher(LLTOKENIZER, grammar)


def generate(model, schema, *, max_tokens=32, control=None, temperature=0.0):
    return generate_constrained(
        model,
        matcher(schema),
        PROMPT,
        max_tokens=max_tokens,
        sampler=Sampler(temperature, seed=1),
        control=control or StepControl(),
    )


def test_forced_tokens_are_fed_in_one_batch_without_asking_the_model():
    model = ScriptedModel(steps=[["7"], ["}"]])
    generation = generate(model, ZONE)
    assert detokenize(generation.tokens) == '{"zone":7}'
    # '{"zone":' is forced by the grammar: one batch of 3 words, before any logits.
    assert model.fed[0] == [token('{"'), token("zone"), token('":')]
    assert generation.forced_tokens >= 3
    assert model.logits_calls == 2  # only where the model had a choice: "7" and "}"
    assert model.prefills == [PROMPT]
    assert generation.prompt_tokens == len(PROMPT)


def test_refused_argmax_falls_back_to_the_best_allowed_token():
    # The model's favourite is "x" (not JSON); its second choice "7" is allowed.
    model = ScriptedModel(steps=[["x", "7"], ["}"]])
    generation = generate(model, ZONE)
    assert detokenize(generation.tokens) == '{"zone":7}'
    assert generation.masked_steps == 1


def test_end_token_is_taken_only_where_the_grammar_may_end():
    # Mid-object the end token is refused (the answer would not be JSON) ...
    model = ScriptedModel(steps=[[END, "3"], [END, "}"]])
    generation = generate(model, ZONE)
    assert detokenize(generation.tokens) == '{"zone":3}'
    assert generation.masked_steps == 2
    # ... after a complete integer it ends the answer, and is not part of it.
    model = ScriptedModel(steps=[["4"], ["2"], [END]])
    generation = generate(model, {"type": "integer"})
    assert detokenize(generation.tokens) == "42"
    assert token(END) not in generation.tokens


def test_max_tokens_cutting_the_answer_is_output_invalid():
    model = ScriptedModel(text='"a long story that does not end in time"')
    with pytest.raises(EdgeAgentError) as info:
        generate(model, {"type": "string", "minLength": 30}, max_tokens=5)
    assert info.value.code is ErrorCode.OUTPUT_INVALID
    assert info.value.details["completion_tokens"] == 5
    assert info.value.details["partial"] == '"a lo'


def test_a_passed_deadline_stops_before_the_prompt_is_read():
    model = ScriptedModel(text='{"zone":1}')
    with pytest.raises(EdgeAgentError) as info:
        generate(model, ZONE, control=StepControl(deadline=time.monotonic() - 1))
    assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert model.prefills == []


def test_deadline_passing_during_generation():
    control = StepControl()
    steps = 0

    def expire_after_two_steps():
        nonlocal steps
        steps += 1
        if steps == 3:
            control.deadline = time.monotonic() - 1

    control.on_step = expire_after_two_steps
    model = ScriptedModel(text='"' + "x" * 40 + '"')
    with pytest.raises(EdgeAgentError) as info:
        generate(model, {"type": "string"}, control=control)
    assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert len(model.fed) == 1  # one token fed after the prompt, then the deadline


def test_cancel_hands_the_task_back():
    cancel = threading.Event()
    control = StepControl(cancel=cancel, on_step=lambda: cancel.set() if model.fed else None)
    model = ScriptedModel(text='"' + "x" * 40 + '"')
    with pytest.raises(TaskHandedBack):
        generate(model, {"type": "string"}, control=control)
    assert len(model.fed) == 1


def test_repetition_guard_narrows_a_looping_string():
    # Inside a string the model wants "ab" forever; the guard lets the cycle repeat
    # MIN_REPEATS times, then takes the model's second choice, closing the string.
    model = ScriptedModel(steps=[["ab", '"']] * 20)
    generation = generate(model, {"type": "string", "maxLength": 100})
    assert detokenize(generation.tokens) == '"' + "ab" * MIN_REPEATS + '"'


def test_repetition_guard_stops_a_runaway_number():
    model = ScriptedModel(steps=[["1"]] + [["0", "}"]] * 40)
    generation = generate(model, ZONE, max_tokens=64)
    text = detokenize(generation.tokens)
    assert text.startswith('{"zone":10000')
    assert text.endswith("}")
    assert len(text) < 40  # cut at 16 integer digits, long before max_tokens


def test_temperature_sampling_only_picks_allowed_tokens():
    for seed in range(5):
        model = ScriptedModel(text='{"zone":12}')
        generation = generate_constrained(
            model,
            matcher(ZONE),
            PROMPT,
            max_tokens=32,
            sampler=Sampler(1.5, seed=seed),
            control=StepControl(),
        )
        text = detokenize(generation.tokens)
        assert text.startswith('{"zone":')
        assert text.endswith("}")
        int(text[len('{"zone":') : -1])  # an integer, whatever was sampled


class _GappedForcedTokens:
    """A matcher whose forced tokens miss one byte, as llguidance's are when the model's
    tokenizer drops a byte no token of its vocabulary holds (SmolLM2 and 0xF1)."""

    def __init__(self, inner, dropped):
        self._inner = inner
        self._dropped = dropped

    def compute_ff_tokens(self):
        return [t for t in self._inner.compute_ff_tokens() if t != self._dropped]

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_forced_tokens_after_a_byte_the_vocabulary_lacks_are_output_invalid_not_internal():
    schema = {
        "type": "object",
        "properties": {"z\u00e9": {"type": "integer"}},
        "required": ["z\u00e9"],
    }
    gapped = _GappedForcedTokens(matcher(schema), dropped="\u00e9".encode()[0])
    with pytest.raises(EdgeAgentError) as info:
        generate_constrained(
            ScriptedModel(text='{"z\u00e9":7}'),
            gapped,
            PROMPT,
            max_tokens=32,
            sampler=Sampler(),
            control=StepControl(),
        )
    assert info.value.code is ErrorCode.OUTPUT_INVALID
    assert "no token of this model can write" in info.value.message
    # The tokens before the gap were taken.
    assert info.value.details["partial"] == '{"z'
