"""Answers that always finish: the shortest valid completion near max_tokens."""

from __future__ import annotations

import json

import pytest
from llguidance import LLMatcher
from support.scripted_model import LLTOKENIZER, VOCAB, ScriptedModel, detokenize, tokenize

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.decoding import Sampler, StepControl, generate_constrained
from edgeagent.inference.finish import Completer, Finisher, JsonStringState

PROMPT = tokenize("<|im_start|>user\nlist the events<|im_end|>\n", special=True)
COMPLETER = Completer(LLTOKENIZER, lambda t: detokenize([t]))
EVENT = {
    "type": "object",
    "properties": {"msg": {"type": "string"}, "zone": {"type": "integer"}},
    "required": ["msg", "zone"],
    "additionalProperties": False,
}
EVENTS = {
    "type": "object",
    "properties": {"events": {"type": "array", "items": EVENT}, "ok": {"type": "boolean"}},
    "required": ["events", "ok"],
    "additionalProperties": False,
}
LOOPING = '{"events":[{"msg":"' + "ab" * 200


def matcher(schema):
    grammar = LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    return LLMatcher(LLTOKENIZER, grammar)


def generate(text, schema, max_tokens, *, finish=True):
    return generate_constrained(
        ScriptedModel(text=text),
        matcher(schema),
        PROMPT,
        max_tokens=max_tokens,
        sampler=Sampler(),
        control=StepControl(),
        finisher=Finisher(COMPLETER, max_tokens) if finish else None,
    )


def completes(schema, text):
    """The completion found after text, as text (None: none)."""
    m = matcher(schema)
    assert m.consume_tokens(tokenize(text))
    state = JsonStringState()
    state.add(text)
    found = COMPLETER.shortest(m, state, 100)
    return None if found is None else detokenize(found)


def test_the_shortest_completion_closes_strings_arrays_and_objects():
    assert completes(EVENTS, '{"events":[{"msg":"disk full') == '","zone":0}],"ok":false}'
    assert completes(EVENTS, '{"events":[{"msg":"a","zone":12') == '}],"ok":false}'
    assert completes(EVENTS, '{"events":[],"ok":true') == "}"
    # A number that may end is ended (not made longer) when a required key follows.
    zone_first = {**EVENT, "properties": {"zone": {"type": "integer"}, "msg": {"type": "string"}}}
    assert completes(zone_first, '{"zone":2') == ',"msg":""}'
    # A "}" or "]" inside a string is text: the string is closed first.
    assert completes(EVENTS, '{"events":[{"msg":"a}]') == '","zone":0}],"ok":false}'
    # An escape started must be finished.
    assert completes(EVENTS, '{"events":[{"msg":"a\\') is not None
    assert completes({"type": "string", "minLength": 3}, '"a') == 'aa"'


def test_a_character_a_token_left_unfinished_is_finished_first():
    m = matcher(EVENTS)
    written = [*tokenize('{"events":[{"msg":"a'), "\u00e9".encode()[0]]  # half of "é"
    assert m.consume_tokens(written)
    state = JsonStringState()
    state.add(detokenize(written))
    found = COMPLETER.shortest(m, state, 100)
    assert found is not None
    value = json.loads(b"".join(VOCAB[t] for t in [*written, *found]))
    assert value["events"][0]["msg"][0] == "a"
    assert len(value["events"][0]["msg"]) == 2


def test_a_looping_answer_is_cut_short_and_still_validates():
    for max_tokens in (30, 40, 64):
        generation = generate(LOOPING, EVENTS, max_tokens)
        text = detokenize(generation.tokens)
        assert generation.cut_short
        assert len(generation.tokens) <= max_tokens
        value = json.loads(text)
        assert set(value) == {"events", "ok"}
        assert value["events"][0]["msg"].startswith("abab")
        assert value["events"][0]["zone"] == 0


def test_without_the_finisher_the_same_answer_is_output_invalid():
    with pytest.raises(EdgeAgentError) as info:
        generate(LOOPING, EVENTS, 40, finish=False)
    assert info.value.code is ErrorCode.OUTPUT_INVALID


def test_what_cannot_be_completed_in_max_tokens_stays_output_invalid():
    # '{"events":[],"ok":false}' alone takes 15 tokens of this vocabulary.
    with pytest.raises(EdgeAgentError) as info:
        generate(LOOPING, EVENTS, 12)
    assert info.value.code is ErrorCode.OUTPUT_INVALID


def test_answers_that_end_on_their_own_are_unchanged_token_for_token():
    text = '{"events":[{"msg":"ab ab","zone":3},{"msg":"ok","zone":12}],"ok":true}'
    plain = generate(text, EVENTS, 200, finish=False)
    needed = len(plain.tokens)
    for max_tokens in (needed, needed + 1, needed + 5, 200):
        generation = generate(text, EVENTS, max_tokens)
        assert generation.tokens == plain.tokens
        assert not generation.cut_short
    assert detokenize(plain.tokens) == text
