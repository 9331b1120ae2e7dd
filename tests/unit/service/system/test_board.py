# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""board.py against fake /sys trees laid out like a Raspberry Pi 4, a Pi 5 and a PC."""

from __future__ import annotations

import json
import stat
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs
from support.fake_engine import FakeEngine, FakeMemory, FakeNotifier
from support.fake_link import FakeLink

from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.system.board import BoardReading, ThrottleWatch, read_board
from edgeagent.service.views.telemetry import Telemetry

if TYPE_CHECKING:
    from pathlib import Path

PI4_FIRMWARE = "sys/devices/platform/soc/soc:firmware"
PI5_FIRMWARE = "sys/devices/platform/soc@107c000000/soc@107c000000:firmware"


def _zone(root: Path, index: int, kind: str, millidegrees: str) -> None:
    zone = root / "sys/class/thermal" / f"thermal_zone{index}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millidegrees + "\n")


def _firmware(root: Path, where: str, value: str) -> None:
    directory = root / where
    directory.mkdir(parents=True)
    (directory / "get_throttled").write_text(value + "\n")


def _fake_vcgencmd(tmp_path: Path, output: str, code: int = 0) -> list[str]:
    script = tmp_path / "vcgencmd"
    script.write_text(
        f"#!/bin/sh\n[ \"$1\" = get_throttled ] || exit 9\necho '{output}'\nexit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def test_pi4_cool_and_fine(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "cpu-thermal", "47236")
    _firmware(tmp_path, PI4_FIRMWARE, "0")
    reading = read_board(tmp_path)
    assert reading.temp_c == 47.2
    assert reading.throttled is False
    assert reading.under_voltage is False
    assert reading.as_dict() == {
        "temp_c": 47.2,
        "under_voltage": False,
        "freq_capped": False,
        "throttled": False,
        "soft_temp_limit": False,
        "throttled_since_boot": False,
        "under_voltage_since_boot": False,
        "get_throttled": "0x0",
    }
    assert reading.status_suffix() == "SoC 47.2 C"


def test_pi5_hot_throttled_with_under_voltage_history(tmp_path: Path) -> None:
    # The Pi 5's firmware node has another name; bits: 0x50005 = under-voltage and
    # throttled now, and both have occurred since boot.
    _zone(tmp_path, 0, "cpu-thermal", "85900")
    _firmware(tmp_path, PI5_FIRMWARE, "50005")
    reading = read_board(tmp_path)
    assert reading.temp_c == 85.9
    assert reading.throttled is True
    assert reading.under_voltage is True
    board = reading.as_dict()
    assert board["throttled_since_boot"] is True
    assert board["under_voltage_since_boot"] is True
    assert board["freq_capped"] is False
    assert board["get_throttled"] == "0x50005"
    assert reading.status_suffix() == "SoC 85.9 C, THROTTLED, under-voltage"
    json.dumps(board)  # goes into the heartbeat as it is


def test_only_frequency_capped(tmp_path: Path) -> None:
    _firmware(tmp_path, PI4_FIRMWARE, "a")  # 0b1010: capped + soft limit, not throttled
    reading = read_board(tmp_path)
    assert reading.temp_c is None
    assert reading.throttled is False
    assert reading.status_suffix() == "frequency capped"
    assert "temp_c" not in reading.as_dict()


def test_pc_without_any_of_it_is_unknown_not_an_error(tmp_path: Path) -> None:
    # A PC: a thermal zone of another kind, no Raspberry Pi firmware, no vcgencmd.
    _zone(tmp_path, 0, "acpitz", "27800")
    reading = read_board(tmp_path)
    assert reading == BoardReading()
    assert not reading.known
    assert reading.throttled is None
    assert reading.as_dict() == {}
    assert reading.status_suffix() == ""


def test_empty_root(tmp_path: Path) -> None:
    assert read_board(tmp_path / "nothing-here") == BoardReading()


def test_cpu_zone_is_chosen_among_several(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "gpu-thermal", "39000")
    _zone(tmp_path, 1, "cpu-thermal", "52100")
    assert read_board(tmp_path).temp_c == 52.1


def test_unreadable_or_garbage_values_are_unknown(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "cpu-thermal", "not a number")
    _firmware(tmp_path, PI4_FIRMWARE, "zz")
    assert read_board(tmp_path) == BoardReading()


def test_a_directory_where_a_file_should_be_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "sys/class/thermal/thermal_zone0/type").mkdir(parents=True)
    (tmp_path / PI4_FIRMWARE / "get_throttled").mkdir(parents=True)
    assert read_board(tmp_path, vcgencmd=[]) == BoardReading()


def test_vcgencmd_when_the_sysfs_file_is_missing(tmp_path: Path) -> None:
    reading = read_board(tmp_path, vcgencmd=_fake_vcgencmd(tmp_path, "throttled=0x4"))
    assert reading.throttled is True
    assert reading.under_voltage is False


def test_sysfs_file_wins_over_vcgencmd(tmp_path: Path) -> None:
    _firmware(tmp_path, PI4_FIRMWARE, "0")
    reading = read_board(tmp_path, vcgencmd=_fake_vcgencmd(tmp_path, "throttled=0x4"))
    assert reading.throttled is False


@pytest.mark.parametrize(
    ("output", "code"),
    [
        ("VCHI initialization failed", 255),  # no /dev/vcio (e.g. the hardened unit)
        ("garbage", 0),
    ],
)
def test_failing_vcgencmd_is_unknown(tmp_path: Path, output: str, code: int) -> None:
    assert read_board(tmp_path, vcgencmd=_fake_vcgencmd(tmp_path, output, code)) == BoardReading()


def test_missing_vcgencmd_binary_is_unknown(tmp_path: Path) -> None:
    assert read_board(tmp_path, vcgencmd=[str(tmp_path / "no-such-binary")]) == BoardReading()


def test_this_machine_never_raises() -> None:
    reading = read_board()
    json.dumps(reading.as_dict())
    assert isinstance(reading.status_suffix(), str)


def test_throttle_watch_reports_each_episode_once() -> None:
    watch = ThrottleWatch()
    assert watch.update(BoardReading(temp_c=60.0, throttled_bits=0)) == []
    started = watch.update(BoardReading(temp_c=82.5, throttled_bits=0x4))
    assert [(t.flag, t.started) for t in started] == [("throttled", True)]
    assert started[0].message() == "throttling started (SoC 82.5 C)"
    # Still throttled (and now "has occurred" too): nothing new.
    assert watch.update(BoardReading(temp_c=83.0, throttled_bits=0x40004)) == []
    # An unknown reading (sysfs briefly unreadable) is not an end of the episode.
    assert watch.update(BoardReading()) == []
    ended = watch.update(BoardReading(temp_c=70.0, throttled_bits=0x40000))
    assert [(t.flag, t.started) for t in ended] == [("throttled", False)]
    assert ended[0].message() == "throttling ended (SoC 70.0 C)"


def test_throttle_watch_first_reading_already_throttled_and_under_voltage() -> None:
    watch = ThrottleWatch()
    transitions = watch.update(BoardReading(throttled_bits=0x5))
    assert {(t.flag, t.started) for t in transitions} == {
        ("throttled", True),
        ("under_voltage", True),
    }
    assert transitions[0].message() == "under-voltage started"


def test_throttle_watch_ignores_boards_without_flags() -> None:
    watch = ThrottleWatch()
    for _ in range(3):
        assert watch.update(BoardReading(temp_c=40.0)) == []


# --------------------------------------------------------------------------- telemetry wiring


class _Store:
    degraded: str | None = None


def _telemetry(board: dict[str, object]) -> Telemetry:
    engine = FakeEngine()
    engine.n_ctx = 1024
    telemetry = Telemetry(
        device="dev1",
        topics=Topics("edgeagent", "dev1", "edgeagent"),
        link=FakeLink(),
        notifier=FakeNotifier(),
        queue=TaskQueue(4),
        engine=engine,
        memory=FakeMemory(),
        store=_Store(),
        period_s=3600,
        memory_usage=lambda: {"rss_mb": 1.0, "host_available_mb": 2.0},
        board=lambda: board,
    )
    telemetry.state_changed("serving")
    return telemetry


def test_heartbeat_and_status_carry_the_board_only_when_known(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "cpu-thermal", "71500")
    _firmware(tmp_path, PI5_FIRMWARE, "50005")
    board = read_board(tmp_path).as_dict()
    telemetry = _telemetry(board)
    assert telemetry.heartbeat()["board"] == board
    assert telemetry.status_line().endswith("; SoC 71.5 C, THROTTLED, under-voltage")

    pc = _telemetry(read_board(tmp_path / "pc").as_dict())
    assert "board" not in pc.heartbeat()
    assert pc.status_line().endswith("tok/s")


def test_throttling_start_is_a_warning_once_and_its_end_is_noted(tmp_path: Path) -> None:
    board: dict[str, object] = {"temp_c": 62.0, "get_throttled": "0x0"}
    telemetry = _telemetry(board)
    with capture_logs() as logs:
        telemetry.heartbeat()
        board |= {"temp_c": 84.1, "get_throttled": "0x20004"}
        telemetry.heartbeat()
        telemetry.heartbeat()  # still throttled: no second warning
        board |= {"temp_c": 70.0, "get_throttled": "0x40000"}
        telemetry.heartbeat()
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "throttling started (SoC 84.1 C)"),
        ("info", "throttling ended (SoC 70.0 C)"),
    ]


def test_from_dict_round_trip_and_malformed_parts() -> None:
    reading = BoardReading(temp_c=55.5, throttled_bits=0x50005)
    assert BoardReading.from_dict(reading.as_dict()) == reading
    assert BoardReading.from_dict({}) == BoardReading()
    assert BoardReading.from_dict({"temp_c": True, "get_throttled": 5}) == BoardReading()
    assert BoardReading.from_dict({"temp_c": "hot", "get_throttled": "0xzz"}) == BoardReading()
