"""Copies of a running task id on a real mosquitto: they must not make the device deaf.

Each copy used to wait unacknowledged for the running task's reply; enough of them fill
the window of unacknowledged messages the daemon grants the broker (its Receive
Maximum: queue size + running tasks + margin, 40 by default), and the broker sends the
device nothing else until the task ends. Now a copy for an address already waiting is
acknowledged at once: a refusal sent after 45 copies is answered while the task runs.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from support.daemon import DaemonProcess, write_config

from edgeagent.config import QueueConfig
from edgeagent.service.pipeline.admission import RECEIVE_MARGIN, RUNNING_TASKS

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

COPIES = 45
# Long enough to be generating still when the copies and the refusal are sent: a small
# model writes 1500 characters in tens of seconds on one thread.
LONG_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 1500, "maxLength": 1600}},
    "required": ["story"],
}
TASK = {
    "id": "long1",
    "input": "Tell a long story about a greenhouse.",
    "schema": LONG_SCHEMA,
    "max_tokens": 1000,
    "deadline_s": 300,
}
RESULTS = "edgeagent/dev1/results"


def test_a_refusal_after_45_copies_of_a_running_task_is_answered_while_it_runs(
    tmp_path, model_path, mosquitto, probe
):
    window = QueueConfig().size + RUNNING_TASKS + RECEIVE_MARGIN
    assert window < COPIES + 1  # enough copies to fill the window the old way
    config = write_config(
        tmp_path / "dev1.toml",
        model=model_path,
        port=mosquitto.port,
        state_dir=tmp_path / "state",
        log_level="debug",
    )
    probe.subscribe(f"{RESULTS}/#")
    daemon = DaemonProcess(config, tmp_path / "dev1.log")
    restarted = DaemonProcess(config, tmp_path / "dev1-restarted.log")
    try:
        daemon.start()
        daemon.wait_event("mqtt connected")
        probe.publish("edgeagent/dev1/tasks", TASK)
        daemon.wait_event("task started", task_id="long1")
        for _ in range(COPIES):
            probe.publish("edgeagent/dev1/tasks", TASK)
        sent = time.monotonic()
        probe.publish("edgeagent/dev1/tasks", {"id": "bad", "input": 5})
        refusal = json.loads(probe.wait_for(f"{RESULTS}/bad", timeout=120)[0].payload)
        waited = time.monotonic() - sent
        print(f"\nrefusal after {COPIES} copies of a running task answered in {waited:.2f} s")
        assert refusal["error"]["code"] == "INVALID_REQUEST"
        # It did not wait for the running task: no reply of it yet, and it still runs.
        assert not [m for m in probe.messages if m.topic == f"{RESULTS}/long1"]
        assert not [e for e in daemon.events("task") if e.get("task_id") == "long1"]
        # Exactly once still holds with the copies acknowledged: the first delivery is
        # not, so after a crash the broker delivers it again, and it is answered once.
        daemon.signal(signal.SIGKILL)
        daemon.wait()
        restarted.start()
        answer = json.loads(probe.wait_for(f"{RESULTS}/long1", timeout=300)[0].payload)
        assert answer["id"] == "long1"
        time.sleep(1)  # a second reply (from a copy brought back) would come right after
        assert len([m for m in probe.messages if m.topic == f"{RESULTS}/long1"]) == 1
        assert len(restarted.events("task started")) == 1
    finally:
        daemon.stop()
        restarted.stop()
