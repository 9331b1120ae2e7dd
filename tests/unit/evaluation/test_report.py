"""The text and JSON reports, and the `edgeagent eval` command with fake systems."""

from __future__ import annotations

import io
import json

import pytest

from edgeagent.cli import eval as eval_command
from edgeagent.cli.main import main
from edgeagent.evaluation.calibration import calibrate
from edgeagent.evaluation.cases import parse_cases
from edgeagent.evaluation.metrics import Rate
from edgeagent.evaluation.report import _calibration, fmt_rate, table
from edgeagent.evaluation.runner import Outcome
from edgeagent.evaluation.scoring import score
from edgeagent.inference.task import Answer

CATALOG = """
[[actions]]
name = "set_irrigation"
description = "Water a zone."
schema = { type = "object", properties = { zone = { type = "integer" }, minutes = { type = "integer" } }, required = ["zone", "minutes"] }

[[actions]]
name = "no_action"
description = "Nothing to do."
schema = { type = "object", properties = {} }
"""
CASES = [
    {
        "id": "w1",
        "lang": "en",
        "input": "water zone 3 for 20 minutes",
        "expect": {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}},
    },
    {
        "id": "w2",
        "lang": "de",
        "tags": ["number-words"],
        "input": "Zone 2 eine Stunde",
        "expect": {"action": "set_irrigation", "args": {"zone": 2, "minutes": 60}},
    },
    {"id": "n1", "lang": "zh", "input": "一切正常", "expect": {"action": "no_action"}},
]
GOOD = {
    "water zone 3 for 20 minutes": {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}},
    "Zone 2 eine Stunde": {"action": "set_irrigation", "args": {"zone": 2, "minutes": 1}},
    "一切正常": {"action": "set_irrigation", "args": {"zone": 1, "minutes": 5}},
}


class FakeSystem:
    def __init__(self, answers, confidence=None):
        self.answers, self.confidence, self.loaded, self.closed = answers, confidence, False, False

    def load(self):
        self.loaded = True

    def close(self):
        self.closed = True

    def answer_blocking(self, task):
        assert self.loaded
        assert not self.closed
        return Answer(self.answers[task.content], 50, 40, 9, 1.0, 2.0, 2048)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "catalog.toml").write_text(CATALOG)
    (tmp_path / "cases.jsonl").write_text(
        "\n".join(json.dumps(c, ensure_ascii=False) for c in CASES) + "\n"
    )
    return tmp_path


@pytest.fixture
def systems(monkeypatch):
    made = []

    def fake(args, models):
        pairs = []
        for cfg in models:
            for kind in ["edgeagent"] + (["llama-cpp"] if args.baseline else []):
                system = FakeSystem(GOOD)
                made.append(system)
                pairs.append((f"{cfg.path.stem} {kind}", lambda s=system: s))
        return pairs

    monkeypatch.setattr(eval_command, "_systems", fake)
    return made


def run_cli(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_report_side_by_side(files, systems, capsys):
    code, out, err = run_cli(capsys, files / "cases.jsonl", "--catalog", files / "catalog.toml",
                             "--model", files / "a.gguf", "--model", files / "b.gguf", "--baseline", "llama-cpp", "--failures")  # fmt: skip
    assert code == 0
    assert err == ""  # progress only on a terminal
    assert len(systems) == 4
    assert all(s.closed for s in systems)
    header = out.splitlines()[0]
    assert "a edgeagent" in header
    assert "a llama-cpp" in header
    assert "b edgeagent" in header
    assert "action cases: right action + args" in out
    assert "1/3  33.3%" in out  # right
    assert "false actuation (no-op cases)" in out
    assert "1/1 100.0%" in out
    assert "confidence: n/a" in out
    assert "cases/n1 [zh] expected no_action, answered set_irrigation" in out
    assert "args.minutes: expected 60, got 1" in out


def test_json_report_and_details(files, systems, capsys, tmp_path):
    details = tmp_path / "details.jsonl"
    code, out, _ = run_cli(capsys, files / "cases.jsonl", "--catalog", files / "catalog.toml",
                           "--model", files / "a.gguf", "--json", "--details", details)  # fmt: skip
    assert code == 0
    report = json.loads(out)
    [system] = report["systems"]
    assert system["label"] == "a edgeagent"
    assert system["action_and_args"] == {"hits": 1, "total": 3, "rate": 0.3333}
    assert system["false_actuation"] == {"hits": 1, "total": 1, "rate": 1.0}
    assert system["by_lang"]["de"] == {"hits": 0, "total": 1, "rate": 0.0}
    assert system["confusion"]["cases"]["no_action"] == {"set_irrigation": 1}
    assert system["calibration"] is None
    assert report["meta"]["sets"] == {"cases": 3}
    records = [json.loads(line) for line in details.read_text().splitlines()]
    assert [r["id"] for r in records] == ["w1", "w2", "n1"]
    assert records[1]["mismatches"] == ["args.minutes: expected 60, got 1"]


def test_fail_under(files, systems, capsys):
    args = [files / "cases.jsonl", "--catalog", files / "catalog.toml", "--model", files / "a.gguf"]
    assert run_cli(capsys, *args, "--fail-under", "0.5")[0] == 1
    assert run_cli(capsys, *args, "--fail-under", "0.3")[0] == 0


def test_bad_cases_stop_before_any_model_loads(files, systems, capsys):
    (files / "cases.jsonl").write_text(
        '{"id": "x", "input": "y", "expect": {"action": "open_valves"}}\n'
    )
    code, out, _ = run_cli(
        capsys,
        files / "cases.jsonl",
        "--catalog",
        files / "catalog.toml",
        "--model",
        files / "a.gguf",
    )
    assert code == 2
    assert "not in the catalog: ['open_valves']" in json.loads(out)["error"]["message"]
    assert systems == []


def test_model_settings_come_from_the_config(files, systems, capsys):
    config = files / "config.toml"
    config.write_text(
        f'[model]\npath = "{files / "m.gguf"}"\nthreads = 3\nmax_tokens = 77\n' + CATALOG
    )
    code, out, _ = run_cli(
        capsys, files / "cases.jsonl", "--config", config, "--threads", "2", "--json"
    )
    assert code == 0
    assert json.loads(out)["meta"]["threads"] == 2
    assert json.loads(out)["systems"][0]["label"] == "m edgeagent"


def test_progress_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = eval_command._Progress("m edgeagent", 2, stream)
    assert progress.enabled
    case = CASES[0] | {"id": "c1"}
    outcome = Outcome({"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}})
    s = score(parse_cases([json.dumps(case)], "f")[0], outcome, "gh", "no_action")
    progress.update(s)
    progress.finish()
    assert stream.getvalue() == "\rm edgeagent: 1/2 (1 right) gh/c1\x1b[K\n"
    quiet = io.StringIO()
    eval_command._Progress("m", 1, quiet).update(s)
    assert quiet.getvalue() == ""


def test_table_and_rate_formatting():
    assert fmt_rate(Rate(0, 0)) == "n/a"
    assert fmt_rate(Rate(41, 45)) == "41/45  91.1%"
    assert table(["x", "n"], [["a", "1"], ["bbb", "22"]]).splitlines() == [
        "x     n",
        "---  --",
        "a     1",
        "bbb  22",
    ]


def test_calibration_section_when_answers_carry_confidence():

    text = _calibration(calibrate([(0.99, True), (0.6, False), (0.95, True)]))
    assert "confidence over 3 answers" in text
    assert "AUROC 1.000" in text
    assert "≥0.95" in text
