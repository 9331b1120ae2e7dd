"""Progress lines: drawn on a terminal, nothing at all when piped."""

from __future__ import annotations

import io
import subprocess
import sys

from support.daemon import ROOT

from edgeagent.cli.progress import Progress, format_bytes, format_duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_piped_output_stays_empty():
    out = io.StringIO()  # isatty() is False, like a pipe or a file
    with Progress("fetch", total=10, stream=out) as progress:
        progress.advance(5)
        progress.write("a result line\n")
        progress.stage("verify", total=3)
        progress.advance(3)
    assert out.getvalue() == "a result line\n"


def test_terminal_gets_a_bar_redrawn_in_place_and_cleared_at_the_end():
    out, clock = Terminal(), Clock()
    with Progress("bench m.gguf", total=4, unit="runs", stream=out, clock=clock) as progress:
        clock.now += 10
        progress.advance()
        assert progress.line() == (
            "bench m.gguf  [######..................]  25%  1/4 runs  ETA 0:30"
        )
        clock.now += 10
        progress.advance(3)
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3  # every draw starts by clearing the line
    assert "100%  4/4 runs" in text
    assert text.endswith("\r\x1b[K")  # nothing of the bar is left behind


def test_redraws_are_rate_limited():
    out, clock = Terminal(), Clock()
    progress = Progress("x", total=1000, stream=out, clock=clock, min_interval=0.5)
    for _ in range(100):
        progress.advance()
    assert out.getvalue().count("\r") == 1  # only the first draw: no time has passed
    clock.now += 1
    progress.advance()
    assert out.getvalue().count("\r") == 2


def test_messages_do_not_tear_the_bar():
    out = Terminal()
    with Progress("eval", total=2, stream=out) as progress:
        progress.write('{"row": 1}\n')
    lines = out.getvalue().split("\n")
    assert lines[0].endswith('\r\x1b[K{"row": 1}')  # the bar was cleared before the message


def test_bytes_without_a_total():
    out, clock = Terminal(), Clock()
    progress = Progress("download", byte_counts=True, stream=out, clock=clock)
    clock.now += 75
    progress.update(3 * 2**20)
    assert progress.line() == "download  3.0 MiB  1:15"


def test_formats():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(98 * 2**20) == "98.0 MiB"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(59) == "0:59"


def test_fetch_model_is_quiet_when_piped():
    """The model fetch prints only the path on stdout and nothing on a piped stderr."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_model.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stderr == ""
    assert "smollm2" in result.stdout
