"""Schema compile threads under a real pid limit: the daemon in a v1 pids cgroup.

The unit's TasksMax caps the daemon's threads; once it is reached, a compile thread
cannot start. Such a task is answered BUSY, and nothing is lost: when threads can
start again, new contracts compile (before the fix the count of busy threads grew with
every failed start and never came down: INTERNAL twice, then BUSY for good, even for
plain catalog tasks after a SIGHUP).

Needs root and a writable cgroup v1 pids controller; skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support.daemon import EDGEAGENT, ROOT, DaemonProcess, write_config
from support.mosquitto import MqttProbe

pytestmark = [pytest.mark.cgroup, pytest.mark.model, pytest.mark.mqtt]

V1_PIDS = Path("/sys/fs/cgroup/pids")
RESULTS = "edgeagent/dev1/results"


def schema(title: str) -> dict:
    """A schema not compiled before (the title makes it a new cache key)."""
    return {
        "title": title,
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    }


class PidsCgroup:
    def __init__(self, path: Path) -> None:
        self.path = path

    def current(self) -> int:
        return int((self.path / "pids.current").read_text(encoding="utf-8"))

    def limit(self, value: str) -> None:
        (self.path / "pids.max").write_text(value, encoding="utf-8")

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]


@pytest.fixture
def pids_cgroup():
    if not (V1_PIDS / "cgroup.procs").is_file():
        pytest.skip(f"no cgroup v1 pids controller at {V1_PIDS}")
    path = V1_PIDS / f"edgeagent-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
        (path / "pids.max").write_text("max", encoding="utf-8")
    except OSError as exc:
        pytest.skip(f"cannot create a v1 pids cgroup (needs root): {exc.strerror}")
    cgroup = PidsCgroup(path)
    try:
        yield cgroup
    finally:
        cgroup.limit("max")
        for _ in range(100):
            for pid in cgroup.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


class PidsDaemon(DaemonProcess):
    """`edgeagent run` started inside the cgroup (the shell joins it, then execs)."""

    def __init__(self, config: Path, log_path: Path, cgroup: PidsCgroup) -> None:
        super().__init__(config, log_path)
        self.cgroup = cgroup

    def start(self) -> None:
        script = 'echo $$ > "$0" && exec "$@"'
        procs = str(self.cgroup.path / "cgroup.procs")
        run = [*EDGEAGENT, "run", "--config", str(self.config)]
        with self.log_path.open("ab") as handle:
            self.proc = subprocess.Popen(
                ["sh", "-c", script, procs, *run],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )


def answer(probe: MqttProbe, task_id: str, **task) -> dict:
    probe.publish("edgeagent/dev1/tasks", {"id": task_id, "input": "Porto, 21 C.", **task})
    return json.loads(probe.wait_for(f"{RESULTS}/{task_id}", timeout=120)[0].payload)


def test_compile_threads_that_cannot_start_are_busy_and_come_back(
    tmp_path, model_path, mosquitto, pids_cgroup, probe
):
    config = write_config(tmp_path / "dev1.toml", model=model_path, port=mosquitto.port)
    daemon = PidsDaemon(config, tmp_path / "dev1.log", pids_cgroup)
    probe.subscribe(f"{RESULTS}/#")
    try:
        daemon.start()
        daemon.wait_event("mqtt connected")
        # Every long-lived thread started (the store's, the inference thread...).
        assert answer(probe, "warm", schema=schema("warm"))["status"] == "ok"
        time.sleep(0.5)  # the compile thread has ended
        threads = pids_cgroup.current()
        pids_cgroup.limit(str(threads))  # TasksMax reached: no thread can start
        for n in range(4):
            refused = answer(probe, f"full{n}", schema=schema(f"full{n}"))
            assert refused["status"] == "error", refused
            assert refused["error"]["code"] == "BUSY", refused
            assert "cannot start a schema compile thread" in refused["error"]["message"]
        pids_cgroup.limit("max")
        print(f"\n{threads} threads in the daemon; 4 compiles refused BUSY at that limit")
        assert answer(probe, "after", schema=schema("after"))["status"] == "ok"
        daemon.signal(signal.SIGHUP)  # clears the contract cache: the catalog compiles anew
        daemon.wait_event("configuration reloaded")
        assert answer(probe, "catalog", action="notify")["status"] == "ok"
        assert answer(probe, "again", schema=schema("full0"))["status"] == "ok"
    finally:
        pids_cgroup.limit("max")
        daemon.stop()
