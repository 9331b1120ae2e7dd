"""`edgeagent eval` end to end with the real SmolLM2 model: cases in, report out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]
GREENHOUSE = ROOT / "eval" / "dev" / "catalogs" / "greenhouse.toml"
CASES = [
    {
        "id": "water",
        "lang": "en",
        "input": "Water zone 3 for 20 minutes.",
        "expect": {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}},
    },
    {
        "id": "calm",
        "lang": "de",
        "input": "Alle Werte im Normalbereich.",
        "expect": {"action": "no_action"},
    },
    {
        "id": "event",
        "lang": "en",
        "input": "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: error -71",
        "schema": {
            "type": "object",
            "properties": {
                "host": {"type": "string", "maxLength": 20},
                "code": {"type": "integer"},
            },
            "required": ["host", "code"],
        },
        "expect": {"output": {"host": "pi-07"}},
    },
]


def run_eval(tmp_path, model_path, *extra):
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join(json.dumps(c) for c in CASES) + "\n", encoding="utf-8")
    details = tmp_path / "details.jsonl"
    command = [sys.executable, "-m", "edgeagent", "eval", str(cases), "--catalog", str(GREENHOUSE),
               "--model", str(model_path), "--threads", "1", "--n-ctx", "2048", "--max-tokens", "96",
               "--json", "--details", str(details), *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # no progress line when stderr is not a terminal
    report = json.loads(done.stdout)
    records = [json.loads(line) for line in details.read_text(encoding="utf-8").splitlines()]
    return report, records


def test_eval_runs_cases_through_the_engine(tmp_path, model_path):
    report, records = run_eval(tmp_path, model_path)
    [system] = report["systems"]
    assert system["label"] == "SmolLM2-135M edgeagent"
    assert system["cases"] == 3
    # Constrained decoding: every answer is valid, whatever the model chose.
    assert system["schema_valid"] == {"hits": 3, "total": 3, "rate": 1.0}
    assert system["false_actuation"]["total"] == 1
    assert system["schema_right"]["total"] == 1
    assert system["latency"]["median_ms"] > 0
    # Both action answers carry the model's confidence in the chosen action.
    assert system["calibration"]["n"] == 2
    assert system["calibration"]["without_confidence"] == 0
    assert [r["id"] for r in records] == ["water", "calm", "event"]
    actions = {"set_irrigation", "set_fan", "set_heater", "notify", "no_action"}
    assert {r["predicted"] for r in records[:2]} <= actions
    assert set(records[2]["output"]) == {"host", "code"}
    # The scores agree with the answers they were computed from.
    water = records[0]
    assert water["right"] == (
        water["output"] == {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}
    )


@pytest.mark.slow
def test_eval_with_the_llama_cpp_baseline(tmp_path, model_path):
    report, records = run_eval(tmp_path, model_path, "--baseline", "llama-cpp", "--limit", "1")
    assert [s["label"] for s in report["systems"]] == [
        "SmolLM2-135M edgeagent",
        "SmolLM2-135M llama-cpp",
    ]
    baseline = [r for r in records if r["system"].endswith("llama-cpp")]
    assert len(baseline) == 1
    assert baseline[0]["error"] is not None or baseline[0]["predicted"] in {
        "set_irrigation",
        "set_fan",
        "set_heater",
        "notify",
        "no_action",
    }
