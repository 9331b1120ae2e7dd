"""Overflow handling (truncate, chunk map-reduce) over a fake Runner: one token per word."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import schema_spec
from edgeagent.inference.overflow import MARKER, answer_within_budget
from edgeagent.inference.task import Answer, Task
from edgeagent.protocol.overflow_policy import OverflowPolicy

SPEC = schema_spec({"type": "object", "properties": {"summary": {"type": "string"}}})
FIXED = 20  # prompt tokens around the input (system prompt, schema, template)


@dataclass
class WordRunner:
    """A runner whose tokens are words; `run` answers with `answer_words` words."""

    n_ctx: int
    answer_words: int = 2
    runs: list[str] = field(default_factory=list)  # the input text of every model run
    cut_short_runs: tuple[int, ...] = ()  # runs (1-based) whose answer was cut short
    screen_scores: dict[int, float] = field(default_factory=dict)  # run (1-based) -> score
    _words: list[str] = field(default_factory=list)

    def _id(self, word: str) -> int:
        if word not in self._words:
            self._words.append(word)
        return self._words.index(word)

    def tokenize(self, text: str) -> list[int]:
        return [self._id(w) for w in text.split(" ") if w]

    def detokenize(self, tokens) -> str:
        return " ".join(self._words[t] for t in tokens)

    def prompt(self, _spec, content) -> list[int]:
        text = content if isinstance(content, str) else content[-1]["content"]
        return [0] * FIXED + self.tokenize(text)

    def run(self, task: Task, content) -> Answer:
        prompt = len(self.prompt(task.spec, content))
        if prompt + task.max_tokens > self.n_ctx:
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "does not fit")
        text = content if isinstance(content, str) else content[-1]["content"]
        self.runs.append(text)
        n = len(self.runs)
        return Answer(
            output={"summary": " ".join([f"part{n}"] * self.answer_words)},
            prompt_tokens=prompt,
            cached_prompt_tokens=1,
            completion_tokens=10,
            prompt_ms=1.0,
            decode_ms=2.0,
            n_ctx=self.n_ctx,
            confidence=n / 10,
            cut_short=n in self.cut_short_runs,
            instruction_score=self.screen_scores.get(n),
            screen_ms=5.0 if n in self.screen_scores else 0.0,
        )


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def task(content, policy, max_tokens=30) -> Task:
    return Task(content=content, spec=SPEC, max_tokens=max_tokens, overflow=policy)


def test_input_that_fits_runs_once_unchanged():
    runner = WordRunner(n_ctx=200)
    answer = answer_within_budget(runner, task(words(100), OverflowPolicy.REJECT), runner.run)
    assert runner.runs == [words(100)]
    assert (answer.chunks, answer.truncated) == (1, 0)


def test_reject_refuses_what_does_not_fit():
    runner = WordRunner(n_ctx=100)
    with pytest.raises(EdgeAgentError) as info:
        answer_within_budget(runner, task(words(100), OverflowPolicy.REJECT), runner.run)
    assert info.value.code is ErrorCode.CONTEXT_BUDGET
    assert runner.runs == []


def test_truncate_keeps_head_and_tail_around_a_marker():
    runner = WordRunner(n_ctx=150)
    answer = answer_within_budget(runner, task(words(200), OverflowPolicy.TRUNCATE), runner.run)
    (run,) = runner.runs
    kept = run.split(" ")
    assert kept[0] == "w0"
    assert kept[-1] == "w199"
    assert MARKER.strip() in run
    assert answer.truncated == 200 - (len(kept) - len(MARKER.split()))
    assert answer.chunks == 1


def test_truncate_cuts_only_the_last_user_message():
    runner = WordRunner(n_ctx=150)
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": words(200)},
    ]
    answer = answer_within_budget(runner, task(messages, OverflowPolicy.TRUNCATE), runner.run)
    assert answer.truncated > 0
    assert runner.runs[0].startswith("w0 ")


def test_chunk_maps_over_parts_then_combines_them_in_order():
    # Room for 84 input words a run (150 - 20 fixed - 16 safety - 30 max_tokens), chunks
    # overlapping by 21: four parts.
    runner = WordRunner(n_ctx=150)
    answer = answer_within_budget(runner, task(words(250), OverflowPolicy.CHUNK), runner.run)
    *parts, combine = runner.runs
    assert [len(p.split(" ")) for p in parts] == [84, 84, 84, 61]
    assert parts[0].startswith("w0 ")
    assert parts[-1].endswith("w249")
    seen = {w for part in parts for w in part.split(" ")}
    assert seen == set(words(250).split(" "))  # every word was read
    assert combine.startswith("The input was too long")
    partials = [json.dumps({"summary": f"part{n} part{n}"}) for n in (1, 2, 3, 4)]
    assert combine.split("\n")[-4:] == partials
    assert answer.output == {"summary": "part5 part5"}
    assert answer.chunks == 4
    assert answer.completion_tokens == 5 * 10  # usage adds up every run
    assert answer.prompt_ms == 5 * 1.0


def test_chunk_keeps_the_final_runs_confidence_and_any_cut_short():
    runner = WordRunner(n_ctx=150, cut_short_runs=(2,))
    answer = answer_within_budget(runner, task(words(250), OverflowPolicy.CHUNK), runner.run)
    assert len(runner.runs) == 5
    assert answer.confidence == 0.5  # the combining run's
    assert answer.cut_short  # a partial answer was cut short
    runner = WordRunner(n_ctx=150)
    assert not answer_within_budget(
        runner, task(words(250), OverflowPolicy.CHUNK), runner.run
    ).cut_short


def test_an_injection_in_one_chunk_is_not_hidden_by_the_combining_run():
    # Run 2 read the injected chunk; the combining run (5) saw only the partial answers.
    runner = WordRunner(n_ctx=150, screen_scores={1: 0.1, 2: 0.97, 5: 0.2})
    answer = answer_within_budget(runner, task(words(250), OverflowPolicy.CHUNK), runner.run)
    assert len(runner.runs) == 5
    assert answer.instruction_score == 0.97
    assert answer.screen_ms == 15.0
    runner = WordRunner(n_ctx=150)
    unscreened = answer_within_budget(runner, task(words(250), OverflowPolicy.CHUNK), runner.run)
    assert unscreened.instruction_score is None


def test_chunk_combines_again_when_the_partial_answers_do_not_fit_together():
    # 12 parts, each answered with 11 tokens: the 12 partial answers and the combine
    # intro (172 tokens) are themselves split into 3 parts, whose 3 answers then fit.
    runner = WordRunner(n_ctx=150, answer_words=10)
    answer = answer_within_budget(runner, task(words(760), OverflowPolicy.CHUNK), runner.run)
    assert len(runner.runs) == 12 + 3 + 1
    level_one = runner.runs[12:15]
    assert level_one[0].startswith(
        "The input was too long to read at once, so it was split into 12"
    )
    final = runner.runs[-1]
    assert final.startswith("The input was too long to read at once, so it was split into 3")
    assert answer.output == {"summary": " ".join(["part16"] * 10)}
    assert answer.chunks == 12


def test_chunk_gives_up_when_partial_answers_never_fit():
    # Every partial answer is as long as the room for input: combining never shrinks.
    runner = WordRunner(n_ctx=150, answer_words=100)
    with pytest.raises(EdgeAgentError) as info:
        answer_within_budget(runner, task(words(300), OverflowPolicy.CHUNK), runner.run)
    assert info.value.code is ErrorCode.CONTEXT_BUDGET
