"""Other devices' retained status and heartbeats, well-formed and hostile, and the fleet
view run on them as an operator runs it (`edgeagent status --fleet`, a real subprocess).

Every other device is untrusted: what it retains under `<prefix>/<device>/` reaches the
operator's terminal through the fleet view. Shared by tests/integration/test_fleet_view.py
(a fixed hostile fleet) and the hostile-input run (support/hostile_devices.py publishes
these beside a live daemon's own heartbeat while tasks are fuzzed).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from support.daemon import EDGEAGENT, ROOT

# Clear the screen, set the window title, draw a fake row, reverse the text (bidi
# override), C1 CSI: what a heartbeat's state sent raw to a terminal.
ESCAPES = "\x1b[2J\x1b[H\x1b]0;owned\x07\u202e\x9b31m"
FAKE_ROW = "serving\r\npi-z  yes  serving"

# (topic, payload, retain): how a device publishes; a payload that is not str or bytes
# is sent as JSON.
Publish = Callable[[str, Any], None]


def beat(device: str, state: str = "serving", **extra: Any) -> dict[str, Any]:
    """A heartbeat as a daemon publishes it; `extra` adds or replaces fields."""
    return {
        "device": device,
        "state": state,
        "ts": round(time.time(), 3),
        "queue": {"depth": 0, "capacity": 16},
        "tasks": {"done": 1, "failed": 0, "busy": 0},
        "tokens_per_s": 12.5,
        "context": {"n_ctx": 2048, "budget": 2048, "available_mb": 900.0},
        "memory": {"rss_mb": 300.0, "host_available_mb": 1800.0},
        **extra,
    }


def retain(publish: Publish, device: str, status: Any, heartbeat: Any) -> None:
    """One device's retained status and heartbeat (publish retains)."""
    publish(f"edgeagent/{device}/status", status)
    publish(f"edgeagent/{device}/heartbeat", heartbeat)


# Too deep for any JSON parser's recursion, and over the view's heartbeat size limit.
DEEP = "[" * 100_000 + "]" * 100_000
NESTED = "[" * 5_000 + "]" * 5_000


def hostile_fleet(publish: Publish) -> None:
    """The fixed hostile fleet of test_fleet_view.py (with one well-behaved device, pi-ok)."""
    # Retained first, so that on a view that dies of it the devices after it vanish.
    retain(publish, "pi-0deep", "online", DEEP)
    retain(publish, "pi-1deep", "online", NESTED)
    retain(publish, "pi-esc", "online", beat("pi-esc", state=ESCAPES + FAKE_ROW))
    retain(publish, "pi-fast", "online", beat("pi-fast", tokens_per_s="fast"))
    retain(publish, "pi-\u202ebidi", "online", beat("pi-bidi"))
    retain(publish, "pi-ok", "online", beat("pi-ok"))


def hostile_beats(device: str, round_: int) -> Iterator[tuple[Any, Any]]:
    """(status, heartbeat) variants a hostile device cycles through, round after round:
    escapes and C1/bidi text, wrong types, deep or oversized JSON, non-JSON bytes, a
    heartbeat that claims to be another device, a status that is not one."""
    yield "online", beat(device, state=ESCAPES + FAKE_ROW)
    yield "online\x1b[31m\u202e", beat(device, tokens_per_s="fast", queue="full")
    yield "online", DEEP
    yield "online", NESTED
    yield "online", beat(device, ts="yesterday", memory=None, tasks=[1, 2], context=5)
    yield "online", b'{"device": "x", "ts": NaN, "tokens_per_s": Infinity}'
    yield "\x9b" + "o" * 10_000, b"\xff\xfe\xc0\xaf not JSON"
    yield "online", beat("dev1", state="stopped")  # claims to be the real device
    yield "online", beat(device, state=f"serving{round_}\u2028\x85\u061c", board={"temp_c": "hot"})
    yield "offline", beat(device, **{f"f{i}": "x" * 40 for i in range(500)})


def assert_printable(text: str) -> None:
    """No raw control or format character (but the newline) in what reaches a terminal."""
    shown = {c for c in text if not c.isprintable() and c != "\n"}
    assert shown == set(), f"raw control/format characters reached stdout: {shown}"


def run_fleet_view(
    config: Path, *extra: str, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`edgeagent status --fleet` as a real subprocess, as an operator runs it."""
    return subprocess.run(
        [*EDGEAGENT, "status", "--fleet", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=check,
    )
