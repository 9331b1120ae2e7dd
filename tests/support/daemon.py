"""Config files for tests and `edgeagent run` as a real child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support.catalogs import CATALOG_TOML

ROOT = Path(__file__).resolve().parents[2]
EDGEAGENT = [sys.executable, "-m", "edgeagent"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))


def write_config(
    path: Path,
    *,
    model: Path,
    port: int = 1883,
    device: str = "dev1",
    state_dir: Path | None = None,
    catalog: bool = True,
    n_ctx: int = 2048,
    log_level: str = "info",
    sections: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A config for tests; `sections` adds or overrides keys, e.g. {"queue": {"size": 1}}."""
    data: dict[str, dict[str, Any]] = {
        "device": {"id": device},
        # One thread: tests often run several daemons on two cores, and llama.cpp's
        # spinning threads collapse when oversubscribed.
        "model": {"path": model, "threads": 1, "n_ctx": n_ctx, "max_tokens": 256},
        "mqtt": {"host": "127.0.0.1", "port": port, "heartbeat_s": 1},
        "state": {"dir": state_dir or path.parent / f"state-{device}"},
        "log": {"format": "json", "level": log_level},
    }
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines) + (CATALOG_TOML if catalog else ""), encoding="utf-8")
    return path


class DaemonProcess:
    """`edgeagent run` as a real child process (so SIGKILL/SIGTERM are real)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with self.log_path.open("ab") as handle:
            self.proc = subprocess.Popen(
                [*EDGEAGENT, "run", "--config", str(self.config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )

    def wait_event(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """Wait for a JSON log line with this event and these field values."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.events(event):
                if all(record.get(k) == v for k, v in fields.items()):
                    return record
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        pytest.fail(f"no {event!r} {fields} in the daemon log within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )

    def events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == event:
                found.append(record)
        return found

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
