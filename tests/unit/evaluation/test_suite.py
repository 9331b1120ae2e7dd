"""Suites and catalogs: loading, the no-op designation, checks of cases against the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeagent.evaluation.cases import CaseError, parse_cases
from edgeagent.evaluation.suite import load_catalog, load_suite, make_set, select

ROOT = Path(__file__).resolve().parents[3]

CATALOG = """
[[actions]]
name = "set_fan"
description = "Fan speed."
schema = { type = "object", properties = { fan = { enum = ["north", "roof"] }, speed = { type = "integer" } }, required = ["fan", "speed"] }

[[actions]]
name = "idle"
description = "Nothing to do."
schema = "idle.json"
"""


@pytest.fixture
def suite_dir(tmp_path):
    (tmp_path / "cat.toml").write_text(CATALOG)
    (tmp_path / "idle.json").write_text('{"type": "object", "properties": {}}')
    (tmp_path / "fan.jsonl").write_text(
        '{"id": "f1", "input": "roof fan to 80", "expect": {"action": "set_fan", "args": {"fan": "roof", "speed": 80}}}\n'
        '{"id": "f2", "input": "all fine", "expect": {"action": "idle"}}\n'
    )
    (tmp_path / "ev.json").write_text(
        '{"type": "object", "properties": {"n": {"type": "integer"}}}'
    )
    (tmp_path / "ev.jsonl").write_text(
        '{"id": "e1", "input": "n is 3", "expect": {"output": {"n": 3}}}\n'
    )
    (tmp_path / "suite.toml").write_text(
        '[[sets]]\nname = "fans"\ncatalog = "cat.toml"\nno_action = "idle"\ncases = "fan.jsonl"\n\n'
        '[[sets]]\nname = "events"\nschema = "ev.json"\ncases = "ev.jsonl"\n'
    )
    return tmp_path


def test_load_suite(suite_dir):
    fans, events = load_suite(suite_dir / "suite.toml")
    assert (fans.name, fans.no_action, [a.name for a in fans.catalog]) == (
        "fans",
        "idle",
        ["set_fan", "idle"],
    )
    assert fans.catalog[1].schema_ == {
        "type": "object",
        "properties": {},
    }  # path relative to the catalog
    assert (events.name, events.schema, events.catalog) == (
        "events",
        {"type": "object", "properties": {"n": {"type": "integer"}}},
        [],
    )
    assert len(select([fans, events], ["events"], None)) == 1
    assert [len(s.cases) for s in select([fans, events], None, 1)] == [1, 1]
    with pytest.raises(CaseError, match="unknown set"):
        select([fans, events], ["nope"], None)


def test_a_catalog_can_be_a_full_config(tmp_path):
    (tmp_path / "config.toml").write_text(
        '[model]\npath = "/m.gguf"\n' + CATALOG.replace('"idle.json"', '{ type = "object" }')
    )
    assert [a.name for a in load_catalog(tmp_path / "config.toml")] == ["set_fan", "idle"]


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (
            lambda d: (d / "suite.toml").write_text(
                '[[sets]]\nname = "x"\ncases = "fan.jsonl"\nextra = 1\n'
            ),
            "extra",
        ),
        (
            lambda d: (d / "suite.toml").write_text(
                '[[sets]]\nname = "x"\ncatalog = "cat.toml"\ncases = "fan.jsonl"\nno_action = "nothing"\n'
            ),
            "no_action 'nothing' is not in the catalog",
        ),
        (
            lambda d: (d / "suite.toml").write_text('[[sets]]\nname = "x"\ncases = "fan.jsonl"\n'),
            "action cases need a catalog",
        ),
        (
            lambda d: (d / "suite.toml").write_text('[[sets]]\nname = "x"\ncases = "ev.jsonl"\n'),
            "expect.output needs a schema",
        ),
        (
            lambda d: (d / "suite.toml").write_text(
                '[[sets]]\nname = "x"\ncatalog = "cat.toml"\ncases = "missing.jsonl"\n'
            ),
            "cannot read",
        ),
        (lambda d: (d / "cat.toml").write_text('[[actions]]\nname = "a"\n'), "actions[0]"),
        (lambda d: (d / "cat.toml").write_text("x = 1\n"), "no [[actions]]"),
        (
            lambda d: (d / "fan.jsonl").write_text(
                '{"id": "f", "input": "x", "expect": {"action": "set_fans"}}\n'
            ),
            "not in the catalog: ['set_fans']",
        ),
        (
            lambda d: (d / "fan.jsonl").write_text(
                '{"id": "f", "input": "x", "expect": {"action": "set_fan", "args": {"rpm": 3}}}\n'
            ),
            "set_fan has no argument(s) ['rpm']",
        ),
    ],
)
def test_problems_are_reported_before_any_model_runs(suite_dir, edit, why):
    edit(suite_dir)
    with pytest.raises(CaseError) as info:
        load_suite(suite_dir / "suite.toml")
    assert why in str(info.value)


def test_default_no_action_designation():
    catalog = load_catalog(ROOT / "eval" / "dev" / "catalogs" / "greenhouse.toml")
    case = parse_cases(
        [json.dumps({"id": "a", "input": "x", "expect": {"action": "no_action"}})], "f"
    )
    assert make_set("gh", case, catalog).no_action == "no_action"


def test_the_development_set_loads_and_keeps_its_promises():
    """eval/dev is the issue's development set: its size and mix are requirements."""
    sets = load_suite(ROOT / "eval" / "dev" / "suite.toml")
    every = [(s, c) for s in sets for c in s.cases]
    assert len(every) >= 150
    assert len([s for s in sets if s.catalog]) >= 4
    langs = {c.lang for _, c in every}
    assert {"en", "de", "fr", "es", "zh"} <= langs
    noop = [
        c
        for s, c in every
        if c.expect.kind == "action"
        and all(a.action == s.no_action for a in c.expect.alternatives())
    ]
    assert len(noop) / len(every) >= 0.2
    tags = [t for _, c in every for t in c.tags]
    assert tags.count("injection") >= 8
    assert tags.count("number-words") >= 20
    assert len({c.id for _, c in every}) == len(every)


def test_the_held_out_set_is_apart_from_the_development_set():
    """eval/heldout checks tuned changes: the dev catalogs, other cases, the same mix."""
    dev = load_suite(ROOT / "eval" / "dev" / "suite.toml")
    held_out = load_suite(ROOT / "eval" / "heldout" / "suite.toml")
    assert {s.name for s in held_out} == {s.name for s in dev}
    for ours in held_out:
        (theirs,) = [s for s in dev if s.name == ours.name]
        assert ours.catalog == theirs.catalog  # the same catalogs, so the figures compare
        assert ours.settings == theirs.settings
    inputs = {
        c.content if isinstance(c.content, str) else str(c.content) for s in dev for c in s.cases
    }
    cases = [c for s in held_out for c in s.cases]
    assert len(cases) >= 80
    assert not [
        c.id
        for c in cases
        if (c.content if isinstance(c.content, str) else str(c.content)) in inputs
    ]
    tags = [t for c in cases for t in c.tags]
    assert tags.count("injection") >= 16
    assert tags.count("urgent") >= 4  # forceful requests that are no injection
    assert {"en", "de", "fr", "es", "it", "zh"} <= {c.lang for c in cases}


DESIGNATED = """
[catalog]
min_confidence = 0.7

[[actions]]
name = "set_fan"
description = "Fan speed."
min_confidence = 0.9
schema = { type = "object", properties = { fan = { enum = ["north", "roof"] }, speed = { type = "integer" } }, required = ["fan", "speed"] }

[[actions]]
name = "alarm"
description = "Alarm."
schema = { type = "object", properties = {} }

[[actions]]
name = "idle"
description = "Nothing to do."
nothing_to_do = true
schema = { type = "object", properties = {} }
"""


def test_the_catalogs_nothing_to_do_and_floors(tmp_path):
    (tmp_path / "cat.toml").write_text(DESIGNATED)
    (tmp_path / "c.jsonl").write_text(
        '{"id": "f2", "input": "all fine", "expect": {"action": "idle"}}\n'
    )
    (tmp_path / "suite.toml").write_text(
        '[[sets]]\nname = "s"\ncatalog = "cat.toml"\ncases = "c.jsonl"\n'
    )
    (s,) = load_suite(tmp_path / "suite.toml")
    assert s.no_action == "idle"  # from the catalog, not named in the suite
    assert s.min_confidence("set_fan") == 0.9
    assert s.min_confidence("alarm") == 0.7  # [catalog] min_confidence
    assert s.min_confidence("idle") is None
    assert s.min_confidence("unknown") is None
    # The suite may name it too, but must agree with the catalog.
    (tmp_path / "suite.toml").write_text(
        '[[sets]]\nname = "s"\ncatalog = "cat.toml"\nno_action = "alarm"\ncases = "c.jsonl"\n'
    )
    with pytest.raises(CaseError, match="not the catalog's nothing_to_do action 'idle'"):
        load_suite(tmp_path / "suite.toml")
    (tmp_path / "suite.toml").write_text(
        '[[sets]]\nname = "s"\ncatalog = "cat.toml"\nno_action = "idle"\ncases = "c.jsonl"\n'
    )
    assert load_suite(tmp_path / "suite.toml")[0].no_action == "idle"


def test_two_nothing_to_do_actions_are_refused(tmp_path):
    (tmp_path / "cat.toml").write_text(
        DESIGNATED.replace('name = "alarm"', 'name = "alarm"\nnothing_to_do = true')
    )
    with pytest.raises(CaseError, match="at most one"):
        load_catalog(tmp_path / "cat.toml")


def test_the_dev_catalogs_designate_their_nothing_to_do_action():
    sets = {s.name: s for s in load_suite(ROOT / "eval" / "dev" / "suite.toml")}
    assert sets["home"].no_action == "do_nothing"
    assert sets["logtriage"].no_action == "ignore"
    assert sets["greenhouse"].no_action == "no_action"
