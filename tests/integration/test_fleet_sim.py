"""`edgeagent bench --fleet N`: N real daemons (scripted engine) against a real mosquitto.

The short run is part of the suite: 5 devices, a few tasks, one broker restart, the
command as an operator runs it (a subprocess, `--json -`). The large runs (50, 200 and
500 devices; minutes each, docs/scale.md) run only when selected: `pytest -m scale`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.daemon import EDGEAGENT, ROOT

pytestmark = [pytest.mark.mqtt]

KINDS = {"heartbeat", "status", "discovery", "tasks", "replies", "other"}
# Per device: status, heartbeat and ten Home Assistant configs (no SoC temperature here).
RETAINED_PER_DEVICE = 12


def bench_fleet(
    devices: int, *extra: str, json_path: Path, timeout: float
) -> tuple[dict[str, Any], str]:
    """The report (written to json_path) and the table printed on stdout."""
    result = subprocess.run(
        [*EDGEAGENT, "bench", "--fleet", str(devices), "--json", str(json_path), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    return report, result.stdout


def check_report(report: dict[str, Any], devices: int, fleet_tasks: int, per_device: int) -> None:
    """What every run must show: everything answered once, everyone back after the
    restart, traffic counted by kind."""
    assert report["devices"] == devices
    assert report["crashed"] == []
    tasks = report["tasks"]
    assert tasks["sent"] == {"device": devices * per_device, "fleet": fleet_tasks}
    assert tasks["answered"] == devices * per_device + fleet_tasks
    assert (tasks["unanswered"], tasks["duplicates"], tasks["errors"]) == (0, 0, 0)
    assert tasks["stray_replies"] == 0
    share = tasks["fleet_share"]
    assert share["sum"] == fleet_tasks
    assert 0 <= share["min"] <= share["max"] <= fleet_tasks
    latency = tasks["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    for phase in ("start", "restart"):
        assert report[phase]["online"] == devices
        assert report[phase]["all_online_s"] is not None
    for phase in ("start", "steady", "tasks", "restart"):
        assert set(report[phase]["traffic"]["by_kind"]) == KINDS
        assert report[phase]["cpu"]["simulator_pct"] > 0
    assert report["retained"] >= devices * RETAINED_PER_DEVICE
    memory = report["memory"]
    assert memory["rss_mb_after"] > memory["rss_mb_before"]
    assert memory["threads"] >= 2 * devices  # paho's network thread, the store's thread


def test_five_devices_a_short_workload_and_a_broker_restart(tmp_path):
    started = time.monotonic()
    report, table = bench_fleet(
        5,
        "--steady-s", "3",
        "--fleet-tasks", "10",
        "--device-tasks", "2",
        "--latency-ms", "20",
        "--down-s", "1",
        "--set", "mqtt.heartbeat_s=1",
        json_path=tmp_path / "report.json",
        timeout=120,
    )  # fmt: skip
    check_report(report, devices=5, fleet_tasks=10, per_device=2)
    assert report["tasks"]["fleet_share"]["devices"] >= 2  # shared, not all to one
    # A heartbeat a second from each device while idle (periods jittered by 10 %).
    assert 2.5 <= report["steady"]["traffic"]["by_kind"]["heartbeat"]["messages_per_s"] <= 8
    assert report["steady"]["traffic"]["by_kind"]["tasks"]["messages_per_s"] == 0
    # Home Assistant discovery: published at the first start; after the restart the
    # broker had kept the devices' sessions and the configs had not changed.
    assert report["start"]["traffic"]["by_kind"]["discovery"]["messages_per_s"] > 0
    assert report["restart"]["traffic"]["by_kind"]["discovery"]["messages_per_s"] == 0
    assert report["restart"]["traffic"]["by_kind"]["status"]["messages_per_s"] > 0
    for heading in ("PHASE", "HEARTBEAT", "DISCOVERY", "latency ms", "broker restart",
                    "retained messages", "per device"):  # fmt: skip
        assert heading in table, table
    assert "answered 20, unanswered 0, duplicates 0, errors 0" in table, table
    assert time.monotonic() - started < 60


def _selected(config: pytest.Config) -> bool:
    return bool(re.search(r"(?<!not )\bscale\b", config.getoption("markexpr") or ""))


@pytest.mark.scale
@pytest.mark.parametrize("devices", [50, 200, 500])
def test_fleet_at_scale(request, tmp_path, devices, record_property):
    if not _selected(request.config):
        pytest.skip("the fleet at scale runs only when selected: pytest -m scale")
    report, _ = bench_fleet(devices, json_path=tmp_path / "report.json", timeout=1800)
    record_property("fleet", report)
    print(f"fleet {devices}:", json.dumps(report))
    check_report(report, devices=devices, fleet_tasks=2 * devices, per_device=1)
