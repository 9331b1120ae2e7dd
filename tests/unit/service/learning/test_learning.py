"""The learned-examples store and the learner: bounds, decisions, never failing the caller."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from edgeagent.config import ActionConfig
from edgeagent.config.catalog import CatalogConfig
from edgeagent.evaluation.cases import parse_cases
from edgeagent.evaluation.learned import LearnedPicker, load_learned
from edgeagent.evaluation.runner import SpecCache
from edgeagent.evaluation.suite import make_set
from edgeagent.inference.shots import Shot
from edgeagent.service.holds.resolution import HoldResolution
from edgeagent.service.learning import learner as learner_module
from edgeagent.service.learning.export import case_lines
from edgeagent.service.learning.learner import Learner
from edgeagent.service.learning.store import LearnedExample, LearnedStore

IRRIGATION = ActionConfig(
    name="set_irrigation",
    description="Water a zone.",
    dispatch=True,
    schema={
        "type": "object",
        "properties": {
            "zone": {"type": "integer", "minimum": 1, "maximum": 8},
            "minutes": {"type": "integer", "minimum": 0},
        },
        "required": ["zone", "minutes"],
    },
)
NOTHING = ActionConfig(
    name="no_action",
    description="Nothing to do.",
    schema={"type": "object", "properties": {}},
    nothing_to_do=True,
)
ACTIONS = [IRRIGATION, NOTHING]
ON = CatalogConfig(learn=True)


def example(text: str, **changes: Any) -> LearnedExample:
    fields: dict[str, Any] = {
        "text": text,
        "action": "set_irrigation",
        "args": {"zone": 1, "minutes": 5},
        "decision": "confirmed",
        "model_action": "set_irrigation",
        "model_args": {"zone": 1, "minutes": 5},
        "task_id": "t",
        "by": "ana",
        "at": 1_700_000_000.0,
    } | changes
    return LearnedExample(**fields)


def resolution(decision: str, **changes) -> HoldResolution:
    fields = {
        "task_id": "t1",
        "text": "Water zone 3 for 20 minutes.",
        "action": "set_irrigation",
        "args": {"zone": 3, "minutes": 20},
        "decision": decision,
        "final_args": {"zone": 3, "minutes": 20} if decision in {"confirmed", "edited"} else None,
        "by": "ana",
        "at": 1_700_000_000.0,
    } | changes
    return HoldResolution(**fields)


def learner_on(tmp_path, actions=ACTIONS, settings=ON) -> tuple[Learner, LearnedStore]:
    store = LearnedStore(tmp_path / "learned.sqlite3", max_rows=settings.max_learned_examples)
    return Learner(store, actions=actions, settings=settings), store


def learned(learner: Learner, store: LearnedStore, item: HoldResolution) -> list[LearnedExample]:
    future = learner.record(item)
    if future is not None:
        future.result(5)
    return store.recent()


# -- the store ------------------------------------------------------------------------


def test_store_keeps_the_newest_rows_and_drops_the_oldest(tmp_path):
    store = LearnedStore(tmp_path / "l.sqlite3", max_rows=3)
    for n in range(5):
        store.add(example(f"text {n}"))
    assert [e.text for e in store.recent()] == ["text 4", "text 3", "text 2"]
    assert store.count() == 3


def test_the_same_input_learned_again_replaces_the_older_ruling(tmp_path):
    store = LearnedStore(tmp_path / "l.sqlite3", max_rows=3)
    store.add(example("a"))
    store.add(example("b"))
    store.add(example("a", args={"zone": 2, "minutes": 1}, decision="edited"))
    rows = store.recent()
    assert [(e.text, e.decision) for e in rows] == [("a", "edited"), ("b", "confirmed")]
    assert rows[0].args == {"zone": 2, "minutes": 1}


def test_the_cli_reads_and_clears_while_the_daemon_holds_the_file(tmp_path):
    path = tmp_path / "l.sqlite3"
    daemon = LearnedStore(path, max_rows=10)
    daemon.add(example("a"))
    reader = LearnedStore(path, max_rows=10, read_only=True)
    assert [e.text for e in reader.recent()] == ["a"]
    with pytest.raises(sqlite3.OperationalError):
        reader.clear()  # read-only: list and export never write
    assert LearnedStore(path, max_rows=10).clear() == 1
    assert daemon.recent() == []
    daemon.add(example("b"))
    assert [e.text for e in reader.recent()] == ["b"]


def test_a_missing_file_is_not_created_by_a_reader(tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        LearnedStore(tmp_path / "none.sqlite3", max_rows=1, read_only=True)
    assert not (tmp_path / "none.sqlite3").exists()


# -- what a ruling teaches --------------------------------------------------------------


def test_confirmed_keeps_the_models_answer(tmp_path):
    learner, store = learner_on(tmp_path)
    (row,) = learned(learner, store, resolution("confirmed"))
    assert (row.action, row.args, row.decision, row.by) == (
        "set_irrigation",
        {"zone": 3, "minutes": 20},
        "confirmed",
        "ana",
    )
    assert row.text == "Water zone 3 for 20 minutes."


def test_edited_keeps_the_action_with_the_operators_arguments(tmp_path):
    learner, store = learner_on(tmp_path)
    (row,) = learned(learner, store, resolution("edited", final_args={"zone": 3, "minutes": 10}))
    assert (row.action, row.args) == ("set_irrigation", {"zone": 3, "minutes": 10})
    assert row.model_args == {"zone": 3, "minutes": 20}


def test_rejected_teaches_the_nothing_to_do_action(tmp_path):
    learner, store = learner_on(tmp_path)
    (row,) = learned(learner, store, resolution("rejected"))
    assert (row.action, row.args, row.decision) == ("no_action", {}, "rejected")
    assert row.model_action == "set_irrigation"


@pytest.mark.parametrize(
    ("item", "actions"),
    [
        (resolution("expired"), ACTIONS),
        (resolution("shrugged"), ACTIONS),
        (resolution("rejected"), [IRRIGATION]),  # no nothing-to-do action to learn
        (resolution("edited", final_args={"zone": 99, "minutes": 1}), ACTIONS),  # schema says no
        (resolution("edited", final_args=None), ACTIONS),
        (resolution("confirmed", action="set_fan"), ACTIONS),  # not in the catalog (any more)
        (resolution("confirmed", text="x" * 201), ACTIONS),  # longer than the operator saw
        (resolution("confirmed", text=""), ACTIONS),
    ],
)
def test_rulings_that_teach_nothing(tmp_path, item, actions):
    learner, store = learner_on(tmp_path, actions=actions)
    assert learner.record(item) is None
    assert store.count() == 0


def test_learning_off_writes_nothing(tmp_path):
    learner, store = learner_on(tmp_path, settings=CatalogConfig(learn=False))
    assert learner.record(resolution("confirmed")) is None
    assert store.count() == 0
    off = Learner(None, actions=ACTIONS, settings=ON)
    assert off.record(resolution("confirmed")) is None
    assert asyncio.run(off.shots("Water zone 3.", ["set_irrigation"])) == ()


def test_record_never_raises_into_the_caller(tmp_path):
    learner, _ = learner_on(tmp_path)
    strange = HoldResolution("t", None, "set_irrigation", None, "confirmed", None, None, 0.0)  # type: ignore[arg-type]
    assert learner.record(strange) is None

    class Broken(LearnedStore):
        def add(self, _example: LearnedExample) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    broken = Learner(Broken(tmp_path / "b.sqlite3", max_rows=5), actions=ACTIONS, settings=ON)
    with capture_logs() as logs:
        future = broken.record(resolution("confirmed"))
        assert future is not None
        future.result(5)  # the failure stays on the learner's thread
    assert broken.dropped == 1
    assert any(e["event"] == "writing a learned example failed" for e in logs)


def test_a_slow_store_never_queues_more_than_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(learner_module, "MAX_PENDING_WRITES", 2)
    gate = threading.Event()

    class Slow(LearnedStore):
        def add(self, example: LearnedExample) -> None:
            gate.wait(5)
            super().add(example)

    learner = Learner(Slow(tmp_path / "s.sqlite3", max_rows=5), actions=ACTIONS, settings=ON)
    futures = [learner.record(resolution("confirmed", text=f"zone {n}")) for n in range(4)]
    assert [f is not None for f in futures] == [True, True, False, False]
    assert learner.dropped == 2
    gate.set()
    for future in futures[:2]:
        assert future is not None
        future.result(5)


# -- examples for a task -------------------------------------------------------------


def test_shots_are_the_most_similar_that_the_catalog_still_accepts(tmp_path):
    learner, store = learner_on(
        tmp_path, settings=CatalogConfig(learn=True, learned_examples_per_task=2)
    )
    store.add(example("Water zone 2 for 5 minutes.", args={"zone": 2, "minutes": 5}))
    store.add(example("Water zone 9 for 5 minutes.", args={"zone": 9, "minutes": 5}))  # not now
    store.add(example("All is well in zone 1.", action="no_action", args={}))
    store.add(example("Fans idle.", action="no_action", args={}))
    shots = asyncio.run(
        learner.shots("Water zone 4 for 5 minutes.", ["set_irrigation", "no_action"])
    )
    assert shots[0] == Shot(
        "Water zone 2 for 5 minutes.", "set_irrigation", {"zone": 2, "minutes": 5}
    )
    assert len(shots) == 2
    assert all(s.args.get("zone") != 9 for s in shots)
    only = asyncio.run(learner.shots("Water zone 4 for 5 minutes.", ["no_action"]))
    assert [s.action for s in only] == ["no_action"]


def test_a_store_that_does_not_answer_in_time_gives_no_examples(tmp_path):
    gate = threading.Event()

    class Stuck(LearnedStore):
        def recent(self, limit=None):
            gate.wait(5)
            return super().recent(limit)

    store = Stuck(tmp_path / "s.sqlite3", max_rows=5)
    learner = Learner(store, actions=ACTIONS, settings=ON, timeout_s=0.05)
    assert asyncio.run(learner.shots("Water zone 4.", ["set_irrigation"])) == ()
    gate.set()


# -- export: the eval's case format ------------------------------------------------------


def test_export_is_read_by_the_eval_loader_and_feeds_the_eval_picker(tmp_path):
    store = LearnedStore(tmp_path / "l.sqlite3", max_rows=10)
    store.add(example("Water zone 2 for 5 minutes.", args={"zone": 2, "minutes": 5}))
    store.add(example("Zone 1 fine.", action="no_action", args={}, decision="rejected", by=None))
    store.add(example("odd", args={"zone": 1, "minutes": 1, "$approx": 1}))  # cannot be a case
    lines = list(case_lines(store.recent()))
    assert len(lines) == 2
    cases = parse_cases(lines, "export")
    assert [c.expect.action for c in cases] == ["no_action", "set_irrigation"]
    assert cases[0].tags == ["learned", "rejected"]
    assert "rejected by nobody" in (cases[0].note or "")
    eval_set = make_set("learned", cases, ACTIONS)  # the catalog check of `edgeagent eval`
    assert json.loads(lines[1])["expect"]["args"] == {"zone": 2, "minutes": 5}
    path = tmp_path / "learned.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    shots = load_learned(path)
    assert [s.text for s in shots] == ["Zone 1 fine.", "Water zone 2 for 5 minutes."]
    picker = LearnedPicker(shots, k=1)
    water = make_set(
        "gh",
        parse_cases(
            [
                '{"id": "x", "input": "Water zone 6 for 5 minutes.", "expect": {"action": "no_action"}}'
            ],
            "x",
        ),
        ACTIONS,
    )
    spec = SpecCache().for_case(water.cases[0], water)
    assert picker(water.cases[0], spec, water) == (shots[1],)
    assert eval_set.no_action == "no_action"


def test_open_follows_the_config_and_never_fails_the_daemon(tmp_path):
    from support.fake_engine import service_config  # noqa: PLC0415

    off = Learner.open(service_config(tmp_path / "off"))
    assert not off.enabled
    assert not (tmp_path / "off").exists()
    on = Learner.open(service_config(tmp_path / "on", catalog={"learn": True}))
    assert on.enabled
    assert (tmp_path / "on" / "learned.sqlite3").exists()
    on.close()
    (tmp_path / "file").write_text("not a directory")
    with capture_logs() as logs:
        broken = Learner.open(service_config(tmp_path / "file" / "state", catalog={"learn": True}))
    assert not broken.enabled
    assert any(e["event"] == "cannot open the learned examples; not learning" for e in logs)
