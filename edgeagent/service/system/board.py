# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""Heat and power of the board: SoC temperature and the Raspberry Pi firmware's throttling flags.

A Raspberry Pi slows its CPU down when it gets hot (soft limit 60-80 °C, hard limit 85 °C)
or when its supply sags (under-voltage), and a slowed-down Pi answers tasks several times
slower. Both are visible without root:

- the SoC temperature: ``/sys/class/thermal/thermal_zone*/temp`` (millidegrees) of the zone
  whose ``type`` is ``cpu-thermal`` on a Pi (other SoC/CPU zone names are taken as well);
- the firmware's flags: ``/sys/devices/platform/soc*/*firmware/get_throttled`` (a hex
  bit field, Raspberry Pi kernels), or ``vcgencmd get_throttled`` where that file is missing
  and the command works (it needs ``/dev/vcio``, which the hardened unit hides).

On other machines some or all of it is absent: the reading then says "unknown" for that
part and is never an error. ``root`` lets tests point everything at a fake tree.

`ThrottleWatch` turns consecutive readings into transitions ("throttling started"), so the
daemon logs a warning once per episode instead of on every heartbeat.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["FLAG_BITS", "BoardReading", "ThrottleWatch", "Transition", "read_board"]

# SoC/CPU thermal zone types, best first ("cpu-thermal": Raspberry Pi 4 and 5).
THERMAL_TYPES: tuple[str, ...] = ("cpu-thermal", "cpu_thermal", "soc-thermal", "soc_thermal")
# The firmware's get_throttled bits (Raspberry Pi documentation, "vcgencmd get_throttled"):
# bit n is the condition now, bit n + 16 "has occurred since boot".
Flag = Literal["under_voltage", "freq_capped", "throttled", "soft_temp_limit"]
FLAG_BITS: dict[Flag, int] = {
    "under_voltage": 0,
    "freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
SINCE_BOOT_SHIFT = 16
VCGENCMD_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class BoardReading:
    """One reading; None means "this board does not tell"."""

    temp_c: float | None = None
    throttled_bits: int | None = None

    @classmethod
    def from_dict(cls, board: Mapping[str, Any]) -> BoardReading:
        """Back from `as_dict()` (the heartbeat's form); a malformed part is unknown."""
        temp = board.get("temp_c")
        temp_c = None
        if isinstance(temp, int | float) and not isinstance(temp, bool):
            temp_c = float(temp)
        raw = board.get("get_throttled")
        bits = _parse_throttled(raw) if isinstance(raw, str) else None
        return cls(temp_c=temp_c, throttled_bits=bits)

    @property
    def known(self) -> bool:
        return self.temp_c is not None or self.throttled_bits is not None

    def flag(self, name: Flag, *, since_boot: bool = False) -> bool | None:
        if self.throttled_bits is None:
            return None
        bit = FLAG_BITS[name] + (SINCE_BOOT_SHIFT if since_boot else 0)
        return bool(self.throttled_bits >> bit & 1)

    @property
    def throttled(self) -> bool | None:
        return self.flag("throttled")

    @property
    def under_voltage(self) -> bool | None:
        return self.flag("under_voltage")

    def as_dict(self) -> dict[str, Any]:
        """The heartbeat's ``board`` field: only what is known (empty on other machines)."""
        out: dict[str, Any] = {}
        if self.temp_c is not None:
            out["temp_c"] = self.temp_c
        if self.throttled_bits is not None:
            for name in FLAG_BITS:
                out[name] = self.flag(name)
            out["throttled_since_boot"] = self.flag("throttled", since_boot=True)
            out["under_voltage_since_boot"] = self.flag("under_voltage", since_boot=True)
            out["get_throttled"] = f"{self.throttled_bits:#x}"
        return out

    def status_suffix(self) -> str:
        """A STATUS= addition like ``SoC 71.5 C, THROTTLED, under-voltage``; "" when unknown."""
        parts: list[str] = []
        if self.temp_c is not None:
            parts.append(f"SoC {self.temp_c:.1f} C")
        if self.throttled:
            parts.append("THROTTLED")
        elif self.flag("freq_capped") or self.flag("soft_temp_limit"):
            parts.append("frequency capped")
        if self.under_voltage:
            parts.append("under-voltage")
        return ", ".join(parts)


def read_board(root: Path = Path("/"), *, vcgencmd: Sequence[str] | None = None) -> BoardReading:
    """Read temperature and throttling flags; anything missing or unreadable is None.

    `vcgencmd` is the command used when the firmware's sysfs file is missing; by default
    ``vcgencmd get_throttled`` when ``root`` is ``/`` and the command is installed.
    """
    return BoardReading(temp_c=_soc_temperature(root), throttled_bits=_throttled(root, vcgencmd))


def _soc_temperature(root: Path) -> float | None:
    zones: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
            with contextlib.suppress(OSError):
                zones.setdefault((zone / "type").read_text().strip(), zone)
    for kind in THERMAL_TYPES:
        if kind in zones:
            try:
                return round(int((zones[kind] / "temp").read_text().strip()) / 1000, 1)
            except (OSError, ValueError):
                return None  # e.g. EAGAIN/EINVAL while the sensor is not ready
    return None


def _parse_throttled(text: str) -> int | None:
    value = text.strip().removeprefix("throttled=")
    try:
        bits = int(value, 16)
    except ValueError:
        return None
    return bits if bits >= 0 else None


def _throttled(root: Path, vcgencmd: Sequence[str] | None) -> int | None:
    with contextlib.suppress(OSError):
        for path in sorted((root / "sys/devices/platform").glob("*/*firmware/get_throttled")):
            with contextlib.suppress(OSError):
                return _parse_throttled(path.read_text())
    command = list(vcgencmd) if vcgencmd is not None else _default_vcgencmd(root)
    if not command:
        return None
    try:
        proc = subprocess.run(
            [*command, "get_throttled"],
            capture_output=True,
            text=True,
            timeout=VCGENCMD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return _parse_throttled(proc.stdout) if proc.returncode == 0 else None


def _default_vcgencmd(root: Path) -> list[str]:
    if root != Path("/"):
        return []
    found = shutil.which("vcgencmd")
    return [found] if found else []


@dataclass(frozen=True)
class Transition:
    """A flag that switched on (`started`) or off between two readings."""

    flag: Flag
    started: bool
    reading: BoardReading

    def message(self) -> str:
        what = {
            "throttled": "throttling",
            "under_voltage": "under-voltage",
            "freq_capped": "CPU frequency capping",
            "soft_temp_limit": "the soft temperature limit",
        }[self.flag]
        temp = f" (SoC {self.reading.temp_c:.1f} C)" if self.reading.temp_c is not None else ""
        return f"{what} {'started' if self.started else 'ended'}{temp}"


class ThrottleWatch:
    """Remembers the last flags and reports which switched; unknown flags never switch."""

    def __init__(self) -> None:
        self._last: int | None = None

    def update(self, reading: BoardReading) -> list[Transition]:
        bits = reading.throttled_bits
        if bits is None:
            return []
        previous = self._last if self._last is not None else 0
        self._last = bits
        transitions = []
        for name, bit in FLAG_BITS.items():
            now, before = bool(bits >> bit & 1), bool(previous >> bit & 1)
            if now != before:
                transitions.append(Transition(name, now, reading))
        return transitions
