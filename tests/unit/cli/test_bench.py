"""`edgeagent bench`: figures beside their baselines, and what is written as it goes."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import pytest

from edgeagent.cli.bench import _save
from edgeagent.cli.bench_mqtt import summary
from edgeagent.cli.bench_report import figure, figures_markdown


def test_a_figure_takes_the_ratio_round_by_round():
    fig = figure("tok/s", "tok/s", [20.0, 10.0, 30.0], "plain", [10.0, 10.0, 10.0], target="≥ 2x")
    assert fig["value"] == {"median": 20.0, "min": 10.0, "max": 30.0}
    assert fig["baseline"] == {"median": 10.0, "min": 10.0, "max": 10.0}
    # Per round, not median over median: round 2 was slow on both sides or on one.
    assert fig["ratio"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert fig["rounds"] == 3


def test_a_baseline_of_zero_gives_no_ratio():
    assert figure("x", "ms", [1.0], "y", [0.0])["ratio"] is None


def test_unequal_rounds_are_refused():
    with pytest.raises(ValueError, match=r"shorter|longer"):
        figure("x", "ms", [1.0, 2.0], "y", [1.0])


@pytest.mark.parametrize(("met", "mark"), [(True, "✓"), (False, "✗"), (None, "")])
def test_the_table_shows_value_baseline_ratio_and_verdict(met, mark):
    fig = figure("ttft", "ms", [50.0], "uncached", [500.0], target="≤ 0.2x", met=met)
    fig["notes"] = {"identical answers": "4/4"}
    table = figures_markdown([{"model": "m.gguf", "figures": [fig]}])
    row = table.splitlines()[-1]
    assert "| m.gguf | ttft | 50.0 (50.0-50.0) ms | uncached: 500.0 (500.0-500.0) ms |" in row
    assert "**0.10 (0.10-0.10)**" in row
    assert f"| ≤ 0.2x{' ' + mark if mark else ''} |" in row
    assert row.endswith("| identical answers 4/4 |")


def test_mqtt_overhead_is_the_round_trip_beyond_the_engine_time():
    rtts = [110.0 + i for i in range(10)]
    engine = [100.0] * 10
    stats = summary(rtts, engine)
    assert stats["tasks"] == 10
    assert stats["overhead_ms_median"] == 14.5
    assert stats["overhead_ms_p90"] == 19.0
    assert stats["engine_ms_median"] == 100.0


def test_results_are_written_after_each_group_with_the_minutes_so_far(tmp_path):
    out = tmp_path / "bench.json"
    args = argparse.Namespace(json=out)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results = [{"model": "m.gguf", "started_utc": started, "figures": [{"figure": "a"}]}]
    _save(args, results)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written[0]["figures"] == [{"figure": "a"}]
    assert written[0]["minutes"] >= 0
    results[0]["figures"].append({"figure": "b"})
    _save(args, results)
    assert len(json.loads(out.read_text(encoding="utf-8"))[0]["figures"]) == 2
