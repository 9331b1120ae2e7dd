"""The runner with a fake answerer: tasks built like the daemon's, outcomes, validation."""

from __future__ import annotations

import json
from dataclasses import dataclass

from support.catalogs import GREENHOUSE_ACTIONS

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.evaluation.cases import parse_cases
from edgeagent.evaluation.runner import confidence_of, run_sets
from edgeagent.evaluation.suite import make_set
from edgeagent.inference.task import Answer


def cases(*items):
    return parse_cases([json.dumps(i) for i in items], "f")


def answer(output, **extra):
    return Answer(output=output, prompt_tokens=100, cached_prompt_tokens=80, completion_tokens=12,
                  prompt_ms=5.0, decode_ms=20.0, n_ctx=2048, **extra)  # fmt: skip


class FakeEngine:
    """Answers from a table keyed by input text; records the tasks it was given."""

    def __init__(self, answers):
        self.answers = answers
        self.tasks = []

    def answer_blocking(self, task):
        self.tasks.append(task)
        result = self.answers[
            task.content if isinstance(task.content, str) else task.content[-1]["content"]
        ]
        if isinstance(result, Exception):
            raise result
        return result


VENT = {"action": "open_vent", "args": {"percent": 40}}
SET = make_set(
    "gh",
    cases(
        {"id": "a", "input": "vent 40", "expect": VENT},
        {
            "id": "b",
            "input": "heat",
            "expect": {"action": "start_heater"},
            "actions": ["start_heater", "notify"],
            "max_tokens": 7,
        },
        {"id": "c", "input": "bad", "expect": VENT},
        {"id": "d", "input": "slow", "expect": VENT},
        {"id": "e", "messages": [{"role": "user", "content": "chat"}], "expect": VENT},
    ),
    GREENHOUSE_ACTIONS,
)


def test_tasks_are_built_like_the_daemons_and_outcomes_recorded():
    engine = FakeEngine({
        "vent 40": answer({"action": "open_vent", "args": {"percent": 40}}),
        "heat": answer({"action": "start_heater", "args": {}}),
        # An answer that does not validate (no such action): the runner checks again.
        "bad": answer({"action": "open_all_valves", "args": {}}),
        "slow": EdgeAgentError(ErrorCode.OUTPUT_INVALID, "not complete after max_tokens=64"),
        "chat": answer({"action": "open_vent", "args": {"percent": 10}}),
    })  # fmt: skip
    seen = []
    results = list(run_sets(engine, [SET], max_tokens=64, progress=lambda *a: seen.append(a[2].id)))
    assert seen == ["a", "b", "c", "d", "e"]
    by_id = {case.id: outcome for _, case, outcome in results}

    assert by_id["a"].error is None
    assert (
        by_id["a"].prompt_tokens,
        by_id["a"].cached_prompt_tokens,
        by_id["a"].completion_tokens,
    ) == (100, 80, 12)
    assert by_id["a"].latency_ms >= 0
    assert by_id["a"].confidence is None
    assert by_id["c"].error == "OUTPUT_INVALID"
    assert by_id["c"].output == {"action": "open_all_valves", "args": {}}
    assert by_id["d"].error == "OUTPUT_INVALID"
    assert by_id["d"].output is None

    tasks = {t.content if isinstance(t.content, str) else "chat": t for t in engine.tasks}
    assert tasks["vent 40"].spec.allowed_actions == ("open_vent", "notify", "start_heater")
    assert tasks["heat"].spec.allowed_actions == ("notify", "start_heater")  # catalog order
    assert tasks["heat"].max_tokens == 7
    assert tasks["vent 40"].max_tokens == 64
    assert tasks["chat"].content == [{"role": "user", "content": "chat"}]
    # One compiled contract per allowed set, shared by the cases that use it.
    assert tasks["vent 40"].spec is tasks["bad"].spec


def test_schema_cases_use_the_case_or_set_schema():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    eval_set = make_set("ev", cases(
        {"id": "s1", "input": "one", "expect": {"output": {"n": 1}}},
        {"id": "s2", "input": "two", "schema": {"type": "object", "properties": {"t": {"type": "string"}}}, "expect": {"output": {"t": "2"}}},
    ), [], schema=schema)  # fmt: skip
    engine = FakeEngine({"one": answer({"n": 1}), "two": answer({"t": "2", "extra": 1})})
    results = list(run_sets(engine, [eval_set], max_tokens=10))
    assert engine.tasks[0].spec.kind == "schema"
    assert results[0][2].error is None
    # The closed schema (additionalProperties: false) refuses the extra key.
    assert results[1][2].error == "OUTPUT_INVALID"


def test_a_schema_that_cannot_compile_fails_its_case_only():
    eval_set = make_set("ev", cases(
        {"id": "s1", "input": "one", "schema": {"type": "object", "uniqueItems": True, "not": {}}, "expect": {"output": {}}},
    ), [])  # fmt: skip
    engine = FakeEngine({})
    [(_, _, outcome)] = list(run_sets(engine, [eval_set], max_tokens=10))
    assert outcome.error in {"SCHEMA_UNSUPPORTED", "INVALID_REQUEST"}
    assert engine.tasks == []


@dataclass
class WithConfidence:
    output: object
    prompt_tokens: int = 1
    cached_prompt_tokens: int = 0
    completion_tokens: int = 1
    confidence: object = 0.875


def test_confidence_is_read_when_answers_carry_it():
    assert confidence_of(WithConfidence({})) == 0.875
    assert confidence_of(WithConfidence({}, confidence=None)) is None
    assert confidence_of(WithConfidence({}, confidence=True)) is None
    assert confidence_of(answer({})) is None
    engine = FakeEngine(
        {"vent 40": WithConfidence({"action": "open_vent", "args": {"percent": 40}})}
    )
    one = make_set("gh", cases({"id": "a", "input": "vent 40", "expect": VENT}), GREENHOUSE_ACTIONS)
    [(_, _, outcome)] = list(run_sets(engine, [one], max_tokens=10))
    assert outcome.confidence == 0.875


def test_the_eval_holds_what_the_daemon_would_hold():
    from edgeagent.config import ActionConfig  # noqa: PLC0415
    from edgeagent.config.catalog import CatalogConfig  # noqa: PLC0415

    floor = [
        a.model_copy(update={"min_confidence": 0.9}) if a.name == "open_vent" else a
        for a in GREENHOUSE_ACTIONS
    ]
    idle = ActionConfig(
        name="idle",
        description="Idle.",
        nothing_to_do=True,
        schema={"type": "object", "properties": {}},
    )
    catalog = [*floor, idle]
    heat = {"action": "start_heater", "args": {}}
    engine = FakeEngine({
        "low": WithConfidence(VENT, confidence=0.5),
        "high": WithConfidence(VENT, confidence=0.95),
        "unknown": answer(VENT),
        "cut": answer(heat, cut_short=True),
        "idle": WithConfidence({"action": "idle", "args": {}}, confidence=0.1),
        "heat": WithConfidence(heat, confidence=0.5),
    })  # fmt: skip
    items = [
        {"id": k, "input": k, "expect": VENT}
        for k in ("low", "high", "unknown", "cut", "idle", "heat")
    ]
    settings = CatalogConfig(min_confidence=0.4, unsupported_arguments="allow")
    one = make_set("gh", cases(*items), catalog, settings=settings)
    held = {case.id: outcome.held for _, case, outcome in run_sets(engine, [one], max_tokens=10)}
    assert held == {
        "low": "confidence",
        "high": None,
        "unknown": "confidence_unknown",
        "cut": "cut_short",
        "idle": None,  # the nothing-to-do action is never held
        "heat": None,  # 0.5 reaches the catalog's 0.4
    }


def test_the_eval_builds_reason_contracts_for_an_answerer_with_reason_on():
    from edgeagent.config import ModelConfig  # noqa: PLC0415

    class Reasoning(FakeEngine):
        cfg = ModelConfig(path="/m.gguf", reason=True)

    engine = Reasoning({"vent 40": answer({"reason": "hot", **VENT})})
    one = make_set("gh", cases({"id": "a", "input": "vent 40", "expect": VENT}), GREENHOUSE_ACTIONS)
    [(_, _, outcome)] = list(run_sets(engine, [one], max_tokens=10))
    assert outcome.error is None
    assert "reason" in engine.tasks[0].spec.json_schema["anyOf"][0]["properties"]


def test_learned_examples_reach_the_task_of_each_action_case():
    from edgeagent.evaluation.learned import LearnedPicker  # noqa: PLC0415
    from edgeagent.inference.shots import Shot  # noqa: PLC0415

    learned = Shot("vent 60 please", "open_vent", {"percent": 60})
    unrelated = Shot("all quiet", "open_vent", {"percent": 0})
    wrong = Shot("vent 40 now", "open_vent", {"percent": "forty"})  # the catalog refuses it
    engine = FakeEngine({"vent 40": answer(VENT), "heat": answer(VENT)})
    picked = make_set("gh", SET.cases[:2], GREENHOUSE_ACTIONS)
    list(
        run_sets(
            engine, [picked], max_tokens=64, shots=LearnedPicker([wrong, unrelated, learned], 3)
        )
    )
    assert engine.tasks[0].shots == (learned,)
    assert (
        engine.tasks[1].shots == ()
    )  # `heat`: no example shares a word (and open_vent is not allowed)
    plain = FakeEngine({"vent 40": answer(VENT), "heat": answer(VENT)})
    list(run_sets(plain, [picked], max_tokens=64))
    assert [t.shots for t in plain.tasks] == [(), ()]
