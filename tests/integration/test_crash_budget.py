"""The task store and the crash budget with the real daemon process, killed under tasks.

systemd starts the unit at most StartLimitBurst=5 times in StartLimitIntervalSec=600,
then leaves it failed. A poison task costs at most `[queue] max_task_aborts` (2)
restarts, but several of them used to add up past that: three tasks crashing it twice
each left the unit failed. After CRASH_BUDGET (3) deaths during runs the daemon runs
nothing (BUSY) until the oldest death leaves the window, so any number of such tasks
costs at most 1 + 3 starts per window (docs/operations.md, "Crash budget").

And a task store that cannot be opened, whatever the reason, is moved aside instead of
stopping the daemon at every start.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, write_config
from support.store_files import write_v3_store

from edgeagent.service.pipeline.crash_budget import CRASH_BUDGET

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

RESULTS = "edgeagent/dev1/results"
SLOW_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 600, "maxLength": 700}},
    "required": ["story"],
}


def slow_task(task_id: str) -> dict:
    return {"id": task_id, "input": "Tell a story.", "schema": SLOW_SCHEMA, "max_tokens": 400}


@pytest.fixture
def config(tmp_path, model_path, mosquitto) -> Path:
    return write_config(
        tmp_path / "dev1.toml",
        model=model_path,
        port=mosquitto.port,
        state_dir=tmp_path / "state",
        log_level="debug",
    )


def test_tasks_that_kill_the_daemon_cost_at_most_the_crash_budget(config, tmp_path, probe):
    probe.subscribe(f"{RESULTS}/#")
    starts: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path / f"start-{len(starts) + 1}.log")
        starts.append(daemon)
        daemon.start()
        daemon.wait_event("mqtt connected")
        return daemon

    def killed_during(daemon: DaemonProcess, task_id: str) -> None:
        daemon.wait_event("task started", task_id=task_id)
        daemon.signal(signal.SIGKILL)
        daemon.wait()

    try:
        # p1 kills the daemon twice (its redelivery runs again once), then is answered.
        daemon = start()
        probe.publish("edgeagent/dev1/tasks", slow_task("p1"))
        killed_during(daemon, "p1")
        killed_during(start(), "p1")
        daemon = start()
        poison = json.loads(probe.wait_for(f"{RESULTS}/p1", timeout=120)[0].payload)
        assert poison["error"]["message"] == "task aborted the daemon 2 times"
        # A second poison task: the third death, and the budget is spent.
        probe.publish("edgeagent/dev1/tasks", slow_task("p2"))
        killed_during(daemon, "p2")
        assert CRASH_BUDGET == 3
        daemon = start()
        busy = json.loads(probe.wait_for(f"{RESULTS}/p2", timeout=120)[0].payload)
        assert busy["error"]["code"] == "BUSY"
        assert "died during a task 3 times" in busy["error"]["message"]
        assert busy["error"]["details"]["retry_after_s"] > 0
        probe.publish("edgeagent/dev1/tasks", slow_task("p3"))  # a third one: not run
        assert (
            json.loads(probe.wait_for(f"{RESULTS}/p3", timeout=60)[0].payload)["error"]["code"]
            == "BUSY"
        )
        assert not daemon.events("task started")
        # Four starts for three deaths: within StartLimitBurst=5 (one to spare), and the
        # daemon serves on, answering, instead of being restarted into failure.
        assert len(starts) == 4
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
    finally:
        for daemon in starts:
            daemon.stop()


def test_a_store_that_fails_to_open_is_moved_aside_and_the_daemon_serves(config, tmp_path, probe):
    """A store that passes quick_check but whose `updated_at` is not a number raised
    ValueError at open: exit 1 at every start. Now it is moved aside."""
    state = tmp_path / "state"
    state.mkdir()
    write_v3_store(state / "journal.sqlite3", updated_at="tomorrow")
    probe.subscribe(f"{RESULTS}/#")
    daemon = DaemonProcess(config, tmp_path / "dev1.log")
    try:
        daemon.start()
        moved = daemon.wait_event(
            "task store was unreadable; moved it aside and started a fresh one", timeout=120
        )
        assert "ValueError" in moved["error"]
        daemon.wait_event("mqtt connected")
        probe.publish("edgeagent/dev1/tasks", {"id": "a1", "input": "x", "action": "notify"})
        reply = json.loads(probe.wait_for(f"{RESULTS}/a1", timeout=120)[0].payload)
        assert reply["status"] == "ok"
        assert reply.get("exactly_once", True) is True  # a fresh file, not degraded
        assert [p.name for p in state.iterdir() if ".corrupt-" in p.name]
    finally:
        daemon.stop()
