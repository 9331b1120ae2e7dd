"""`edgeagent held | confirm | reject` against a real mosquitto and a scripted device.

The device here is a paho client that answers decisions on their MQTT v5 response topic
as docs/protocol.md says a daemon does (the real daemon: test_holds_operators.py); the
CLI runs as the operator runs it, a subprocess with a config file. Checked: what is
published (topic, body, response topic in the operator's branch naming the device,
correlation data), the exit codes (0 done, 1 the device's typed error, 2 a bad command
line, 3 no answer), and `held` listing retained holds, hostile ones included.
"""

from __future__ import annotations

import getpass
import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.daemon import ROOT, write_config
from support.mosquitto import Mosquitto, MqttProbe, property_of

pytestmark = pytest.mark.mqtt

DEVICE = "greenhouse-01"
BASE = f"edgeagent/{DEVICE}"
HOLD = {
    "task_id": "t-7",
    "device": DEVICE,
    "action": "set_irrigation",
    "args": {"zone": 3, "minutes": 20},
    "confidence": 0.62,
    "act_confidence": None,
    "why": "confidence",
    "input": "Zone 3 soil moisture 12 %",
    "held_at": "2026-12-07T04:10:00Z",
    "expires_at": "2099-12-07T05:10:00Z",
}


class ScriptedDevice:
    """Answers decisions on their response topic: `answers[task_id]` (None: silence)."""

    def __init__(self, port: int, answers: dict[str, dict[str, Any] | None]) -> None:
        self.answers = answers
        self.requests: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"{BASE}/held/+/confirm", 1), (f"{BASE}/held/+/reject", 1)])

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.requests.append(msg)
        task_id = msg.topic.split("/")[3]
        answer = self.answers.get(task_id)
        if answer is None or not getattr(msg.properties, "ResponseTopic", None):
            return
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = property_of(msg, "CorrelationData")
        self.client.publish(
            property_of(msg, "ResponseTopic"), json.dumps(answer), 1, properties=props
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def config(tmp_path: Path, mosquitto: Mosquitto) -> Path:
    return write_config(
        tmp_path / "operator.toml",
        model=tmp_path / "unused.gguf",
        port=mosquitto.port,
        device="operator-laptop",
        sections={"mqtt": {"username": "alice"}},
    )


def _cli(config: Path, *args: str, timeout: float = 30) -> tuple[int, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else done.stderr


def test_confirm_publishes_the_decision_and_prints_the_devices_answer(config, mosquitto):
    ok = {"ok": True, "task_id": "t-7", "decision": "edited", "dispatched": True}
    device = ScriptedDevice(mosquitto.port, {"t-7": ok})
    try:
        code, answer = _cli(config, "confirm", DEVICE, "t-7", "--args", '{"zone": 3, "minutes": 5}')
        assert (code, answer) == (0, ok)
        (request,) = device.requests
        assert request.topic == f"{BASE}/held/t-7/confirm"
        assert json.loads(request.payload) == {
            "by": getpass.getuser(),
            "args": {"zone": 3, "minutes": 5},
        }
        # In the operator's own branch, naming the device: only that device may answer.
        assert request.properties.ResponseTopic.startswith(f"replies/alice/{DEVICE}/cli-")
        assert len(request.properties.CorrelationData) == 16
    finally:
        device.close()


def test_reject_with_a_name_and_a_note(config, mosquitto):
    ok = {"ok": True, "task_id": "latest", "decision": "rejected", "dispatched": False}
    device = ScriptedDevice(mosquitto.port, {"latest": ok})
    try:
        code, _ = _cli(config, "reject", DEVICE, "latest", "--by", "Alice B.", "--note", "rain")
        assert code == 0
        (request,) = device.requests
        assert request.topic == f"{BASE}/held/latest/reject"
        assert json.loads(request.payload) == {"by": "Alice B.", "note": "rain"}
    finally:
        device.close()


def test_a_typed_error_from_the_device_exits_1(config, mosquitto):
    error = {
        "status": "error",
        "error": {"code": "HOLD_RESOLVED", "message": "already rejected by bob"},
    }
    device = ScriptedDevice(mosquitto.port, {"t-7": error})
    try:
        assert _cli(config, "confirm", DEVICE, "t-7", "--by", "alice") == (1, error)
    finally:
        device.close()


def test_no_answer_exits_3(config, mosquitto):
    device = ScriptedDevice(mosquitto.port, {"t-7": None})
    try:
        code, out = _cli(config, "confirm", DEVICE, "t-7", "--timeout", "1")
        assert code == 3
        assert out["error"]["code"] == "TIMEOUT"
        assert len(device.requests) == 1
    finally:
        device.close()


@pytest.mark.parametrize(
    "args",
    [
        ["confirm", DEVICE, "t/7"],  # not one topic level
        ["confirm", "+", "t-7"],
        ["confirm", DEVICE, "t-7", "--args", "[1, 2]"],  # not an object
        ["confirm", DEVICE, "t-7", "--args", "{nope"],
        ["confirm", DEVICE, "t-7", "--by", "x" * 65],
        ["confirm", DEVICE, "t-7", "--by", "\x1b[2J"],
        ["reject", DEVICE, "t-7", "--note", "n" * 201],
    ],
)
def test_a_bad_command_line_exits_2_and_publishes_nothing(config, mosquitto, args):
    device = ScriptedDevice(mosquitto.port, {})
    try:
        code, out = _cli(config, *args)
        assert code == 2
        assert out["error"]["code"] == "INVALID_REQUEST"
        assert device.requests == []
    finally:
        device.close()


def test_held_lists_the_retained_holds_of_every_device_defensively(config, mosquitto):
    probe = MqttProbe(mosquitto.port)
    try:
        probe.publish(f"{BASE}/held/t-7", HOLD, retain=True)
        other = {**HOLD, "task_id": "t-9", "device": "greenhouse-02", "action": "notify"}
        probe.publish("edgeagent/greenhouse-02/held/t-9", other, retain=True)
        hostile = {"task_id": "t-1", "action": "\x1b[2Jvalve\u202e", "confidence": "high"}
        probe.publish("edgeagent/evil/held/t-1", hostile, retain=True)
        probe.publish("edgeagent/deep/held/t-2", b"[" * 10_000, retain=True)
        probe.publish(f"{BASE}/held/t-gone", HOLD, retain=True)
        probe.publish(f"{BASE}/held/t-gone", b"", retain=True)  # resolved: cleared
        code, rows = _cli(config, "held", "--json")
        assert code == 0
        by_task = {row["task_id"]: row for row in rows}
        assert list(by_task) == ["t-2", "t-1", "t-7", "t-9"]  # by device, then held_at
        assert by_task["t-7"]["action"] == "set_irrigation"
        assert by_task["t-7"]["args"] == '{"zone":3,"minutes":20}'
        assert by_task["t-1"]["action"] == "\\x1b[2Jvalve\\u202e"
        assert by_task["t-1"]["problem"] == "bad hold field: confidence"
        assert by_task["t-2"]["problem"] == "hold nested deeper than 8 levels"
        code, rows = _cli(config, "held", "--json", "--device", "greenhouse-02")
        assert (code, [row["task_id"] for row in rows]) == (0, ["t-9"])
        table = subprocess.run(
            [sys.executable, "-m", "edgeagent", "held", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=ROOT,
        ).stdout
        assert "\x1b" not in table
        assert "greenhouse-01  t-7   set_irrigation" in table
    finally:
        probe.close()


def test_held_watch_follows_new_and_resolved_holds(config, mosquitto):
    """`held --watch --json` prints the list again on every change, until interrupted."""
    probe = MqttProbe(mosquitto.port)
    watch = subprocess.Popen(
        [sys.executable, "-m", "edgeagent", "held", "--watch", "--json", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert watch.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in watch.stdout], daemon=True)
    reader.start()

    def printed() -> Any:
        return json.loads(lines.get(timeout=30))  # queue.Empty: the view did not follow

    try:
        assert printed() == []
        probe.publish(f"{BASE}/held/t-7", HOLD, retain=True)
        (row,) = printed()
        assert (row["device"], row["task_id"], row["action"]) == (DEVICE, "t-7", "set_irrigation")
        probe.publish(f"{BASE}/held/t-7", b"", retain=True)  # resolved: the notice emptied
        assert printed() == []
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
        reader.join(10)
        watch.stdout.close()
        probe.close()
