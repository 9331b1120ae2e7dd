"""`edgeagent status --fleet` against a real mosquitto holding retained device messages.

The devices here are retained status/heartbeat messages published the way daemons publish
them (the real daemon's row is checked in test_integrations.py); the command runs as a
real subprocess, as an operator runs it.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from support.daemon import EDGEAGENT, ROOT, write_config
from support.heartbeats import (
    assert_printable,
    beat,
    hostile_beats,
    hostile_fleet,
    retain,
    run_fleet_view,
)
from support.mosquitto import Mosquitto, MqttProbe

from edgeagent.cli import fleet as fleet_view
from edgeagent.cli.fleet_heartbeat import MAX_HEARTBEAT_BYTES
from edgeagent.config import load_config
from edgeagent.errors import EdgeAgentError, ErrorCode

pytestmark = [pytest.mark.mqtt]


def _retain(probe: MqttProbe, device: str, status: str, heartbeat) -> None:
    retain(
        lambda topic, payload: probe.publish(topic, payload, retain=True), device, status, heartbeat
    )


@pytest.fixture
def fleet(mosquitto: Mosquitto, tmp_path: Path):
    config = write_config(
        tmp_path / "cli.toml", model=tmp_path / "unused.gguf", port=mosquitto.port
    )
    probe = MqttProbe(mosquitto.port)
    _retain(probe, "pi-b", "online", beat("pi-b", board={"temp_c": 55.5}))
    _retain(probe, "pi-a", "online", beat("pi-a", state="paused"))
    _retain(probe, "pi-c", "offline", beat("pi-c", state="stopped"))
    yield config, probe
    probe.close()


def _fleet(config: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_fleet_view(config, *extra, check=check)


def test_json_has_one_sorted_row_per_device(fleet):
    config, _ = fleet
    rows = json.loads(_fleet(config, "--json").stdout)
    assert [r["device"] for r in rows] == ["pi-a", "pi-b", "pi-c"]
    by = {r["device"]: r for r in rows}
    assert (by["pi-a"]["online"], by["pi-a"]["state"]) == (True, "paused")
    assert (by["pi-b"]["temp_c"], by["pi-b"]["tokens_per_s"], by["pi-b"]["queue"]) == (
        55.5,
        12.5,
        "0/16",
    )
    assert (by["pi-c"]["online"], by["pi-c"]["state"]) == (False, "offline")
    assert all(0 <= r["last_seen_s"] < 30 for r in rows)


def test_table_on_stdout(fleet):
    config, _ = fleet
    lines = _fleet(config).stdout.splitlines()
    assert lines[0].startswith("DEVICE")
    assert [line.split()[0] for line in lines[1:]] == ["pi-a", "pi-b", "pi-c"]
    assert "55.5°C" in lines[2]


def test_an_empty_fleet_exits_1(mosquitto, tmp_path):
    config = write_config(
        tmp_path / "cli.toml", model=tmp_path / "unused.gguf", port=mosquitto.port
    )
    result = _fleet(config, "--json", check=False)
    assert (result.returncode, json.loads(result.stdout)) == (1, [])


def test_watch_prints_again_when_a_device_appears_and_stops_on_ctrl_c(fleet):
    config, probe = fleet
    with subprocess.Popen(
        [*EDGEAGENT, "status", "--fleet", "--json", "--watch", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as watch:
        _watch(watch, probe)


def _watch(watch: subprocess.Popen[str], probe: MqttProbe) -> None:
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert [r["device"] for r in first] == ["pi-a", "pi-b", "pi-c"]
        _retain(probe, "pi-0", "online", beat("pi-0"))
        # Each change prints a new list; read until the new device shows up.
        while True:
            line = watch.stdout.readline()
            assert line, watch.stderr.read() if watch.stderr else ""
            rows = json.loads(line)
            if rows[0]["device"] == "pi-0":
                break
        assert [r["device"] for r in rows] == ["pi-0", "pi-a", "pi-b", "pi-c"]
        # A cleared retained status and heartbeat (a decommissioned device) disappears.
        probe.publish("edgeagent/pi-c/status", "", retain=True)
        probe.publish("edgeagent/pi-c/heartbeat", "", retain=True)
        while "pi-c" in [r["device"] for r in json.loads(watch.stdout.readline())]:
            pass
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()


# -- hostile devices: every other device is untrusted -------------------------------------


def test_hostile_heartbeats_are_shown_escaped_and_marked_and_never_crash_the_view(
    mosquitto: Mosquitto, tmp_path: Path
):
    config = write_config(
        tmp_path / "cli.toml", model=tmp_path / "unused.gguf", port=mosquitto.port
    )
    probe = MqttProbe(mosquitto.port)
    try:
        hostile_fleet(lambda topic, payload: probe.publish(topic, payload, retain=True))
        table = _fleet(config, check=False)
        listing = _fleet(config, "--json", check=False)
    finally:
        probe.close()
    for result in (table, listing):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert_printable(result.stdout)
    rows = {r["device"]: r for r in json.loads(listing.stdout)}
    assert sorted(rows) == [
        "pi-0deep", "pi-1deep", "pi-\\u202ebidi", "pi-esc", "pi-fast", "pi-ok",
    ]  # fmt: skip
    assert rows["pi-0deep"]["problem"] == "heartbeat of 200000 bytes, over 16384"
    assert rows["pi-1deep"]["problem"] == "heartbeat nested deeper than 8 levels"
    assert rows["pi-fast"]["problem"] == "bad heartbeat field: tokens_per_s"
    assert (rows["pi-fast"]["tokens_per_s"], rows["pi-fast"]["queue"]) == (None, "0/16")
    assert rows["pi-esc"]["state"].startswith("\\x1b[2J\\x1b[H")  # escaped, and cut
    assert (rows["pi-ok"]["problem"], rows["pi-ok"]["tokens_per_s"]) == (None, 12.5)
    lines = table.stdout.splitlines()
    assert len(lines) == 1 + len(rows)  # no injected row
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(rows)
    assert "bad heartbeat field: tokens_per_s" in lines[4]


def test_the_view_exits_non_zero_when_its_network_thread_dies(
    fleet, monkeypatch: pytest.MonkeyPatch
):
    """Whatever escapes a callback on paho's thread ends the view with an error instead
    of a fleet that silently stops updating (and a zero exit)."""

    def broken(_payload: bytes) -> None:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(fleet_view, "read_heartbeat", broken)
    config, _ = fleet
    with pytest.raises(EdgeAgentError) as info:
        fleet_view.run(load_config(config), as_json=True, watch=False, timeout=10)
    assert info.value.code is ErrorCode.INTERNAL
    assert "RuntimeError: a parser bug" in info.value.message


def _status(config: Path, device: str) -> subprocess.CompletedProcess[str]:
    """`edgeagent status --device DEVICE`, as an operator runs it."""
    return subprocess.run(
        [*EDGEAGENT, "status", "--device", device, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )


def test_status_of_one_device_reads_what_it_retained_defensively(mosquitto, tmp_path):
    """`edgeagent status --device D` shows a hostile device's retained status and
    heartbeat as JSON with every non-ASCII character escaped, names what is wrong with a
    heartbeat that is no JSON object, and never dies of it."""
    config = write_config(
        tmp_path / "cli.toml", model=tmp_path / "unused.gguf", port=mosquitto.port
    )
    probe = MqttProbe(mosquitto.port)
    try:
        for n, (status, heartbeat) in enumerate(hostile_beats("pi-h", 1)):
            _retain(probe, "pi-h", status, heartbeat)
            shown = _status(config, "pi-h")
            assert shown.returncode in (0, 1), (n, shown.stdout, shown.stderr)
            assert "Traceback" not in shown.stderr, (n, shown.stderr)
            assert shown.stdout.isascii(), n
            assert_printable(shown.stdout)
            result = json.loads(shown.stdout)
            assert result["device"] == "pi-h"
            if isinstance(heartbeat, dict) and len(json.dumps(heartbeat)) <= MAX_HEARTBEAT_BYTES:
                assert result["heartbeat"] == json.loads(json.dumps(heartbeat)), n
            else:
                assert result["heartbeat"] is None, n
                assert result["heartbeat_problem"], n
        # A cleared heartbeat (a decommissioned device): nothing to show, no problem.
        probe.publish("edgeagent/pi-h/heartbeat", "", retain=True)
        shown = _status(config, "pi-h")
        assert json.loads(shown.stdout)["heartbeat"] is None
        assert "heartbeat_problem" not in json.loads(shown.stdout)
    finally:
        probe.close()
