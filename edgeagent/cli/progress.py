"""Progress of long-running commands (eval, bench, model fetch): on a terminal only.

One line on stderr, redrawn in place (at most every `min_interval` seconds), with a bar
when the total is known. When stderr is not a terminal (piped, redirected, under CI or
systemd) nothing is drawn at all, so logs and captured output stay clean; results always
go to stdout and are never mixed with it.

Standard library only: scripts/fetch_model.py uses it before the venv exists.

    with Progress("bench smollm2", total=27, unit="runs") as progress:
        for run in runs:
            ...
            progress.advance()
            progress.write("a line that must not be torn by the bar\n")
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

_BAR_WIDTH = 24
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(value: float) -> str:
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover - the loop always returns


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """A one-line progress display; a no-op unless `stream` is a terminal."""

    def __init__(
        self,
        label: str,
        *,
        total: float | None = None,
        unit: str = "",
        byte_counts: bool = False,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self.stream) if enabled is None else enabled
        self.label = label
        self.total = total
        self.unit = unit
        self.byte_counts = byte_counts
        self.done = 0.0
        self._clock = clock
        self._started = clock()
        self._min_interval = min_interval
        self._last_draw: float | None = None
        self._drawn = False

    # -- what happened -------------------------------------------------------------------

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        self._draw()

    def update(self, done: float, *, total: float | None = None, label: str | None = None) -> None:
        """Set the absolute position (and optionally a new total or label)."""
        self.done = done
        if total is not None:
            self.total = total
        if label is not None:
            self.label = label
        self._draw(force=label is not None)

    def stage(self, label: str, *, total: float | None = None, byte_counts: bool = False) -> None:
        """Start a new step on the same line: new label, counting from zero."""
        self.label, self.total, self.done, self.byte_counts = label, total, 0.0, byte_counts
        self._started = self._clock()
        self._draw(force=True)

    def write(self, text: str) -> None:
        """Print a message without tearing the bar: clear it, write, draw it again."""
        self._clear()
        self.stream.write(text)
        self.stream.flush()
        self._draw(force=True)

    def close(self) -> None:
        """Remove the line: what stays on the terminal is the command's own output."""
        self._clear()

    def __enter__(self) -> Self:
        self._draw(force=True)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- drawing -------------------------------------------------------------------------

    def line(self) -> str:
        """The text of the progress line (without the carriage return)."""
        count = format_bytes if self.byte_counts else (lambda v: f"{v:g}")
        unit = f" {self.unit}" if self.unit and not self.byte_counts else ""
        elapsed = self._clock() - self._started
        if not self.total:
            done = f"  {count(self.done)}{unit}" if self.done else ""
            return f"{self.label}{done}  {format_duration(elapsed)}"
        fraction = min(max(self.done / self.total, 0.0), 1.0)
        filled = round(fraction * _BAR_WIDTH)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        eta = ""
        if 0 < fraction < 1:
            eta = f"  ETA {format_duration(elapsed / fraction - elapsed)}"
        return (
            f"{self.label}  [{bar}] {fraction * 100:3.0f}%  "
            f"{count(self.done)}/{count(self.total)}{unit}{eta}"
        )

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if not force and self._last_draw is not None and now - self._last_draw < self._min_interval:
            return
        self._last_draw = now
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r\x1b[K" + self.line()[:width])
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
