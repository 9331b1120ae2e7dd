"""Operators resolve held actions end to end: the role's ACL in a real mosquitto, the real
daemon with its device's credentials and SmolLM2, an operator's own credentials.

Every set_irrigation answer is held (`[catalog] min_confidence = 0.999` and an input the
model would not water for). Then:

* `edgeagent held` lists the hold and `edgeagent confirm` (as the operator "alice", a
  subprocess with a config file) confirms it: the device answers on the CLI's response
  topic, the action goes out once, the requester gets the follow-up naming the local
  user, the retained hold is emptied; the same CLI with the task sender's credentials is
  refused by the broker (exit 2) and nothing happens;
* Home Assistant's Confirm button: its discovery config read back from the broker, its
  command template rendered as Home Assistant renders a press (the Latest hold sensor's
  attributes from the daemon's real retained heartbeat), and exactly that payload
  published on the button's command topic with the operator's credentials: the newest hold
  is confirmed; a press that names an older hold (a stale view) is refused and nothing is
  dispatched; the Reject button rejects.

The daemon needs nothing the ACL does not grant: no denial in the broker's log.
"""

from __future__ import annotations

import getpass
import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import homeassistant_schema as ha
from support.acl_broker import CONTROLLER, MAX_PAYLOAD, OBSERVER, OPERATOR, Client
from support.daemon import ROOT, DaemonProcess, write_config
from support.homeassistant_commands import Hass, press

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

DEVICE = "greenhouse-01"
BASE = f"edgeagent/{DEVICE}"


def _body(payload: bytes) -> Any:
    """JSON, a text (the status), or None for an empty payload."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")


class Run:
    """The daemon under the ACL, a task sender, an observer of everything."""

    def __init__(self, acl_broker: Any, clients: Any, daemon: DaemonProcess) -> None:
        self.acl = acl_broker
        self.daemon = daemon
        self.controller: Client = clients(CONTROLLER)
        self.observer: Client = clients(OBSERVER)
        self.operator: Client = clients(OPERATOR)
        self.seen: list[tuple[str, bytes, Any]] = []
        self._taken: set[int] = set()
        self.reply_topic = f"replies/{CONTROLLER}/{DEVICE}/holds"
        self.controller.subscribe(self.reply_topic)
        self.observer.subscribe("#")

    def send_held_task(self, task_id: str) -> dict[str, Any]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = task_id.encode()
        task = {"id": task_id, "input": "The weather is nice today.", "action": "set_irrigation"}
        assert self.controller.publish(f"{BASE}/tasks", json.dumps(task), props) == 0
        reply = self.reply(task_id)
        assert reply["dispatched"] is False, reply
        assert reply["held"]["reason"] in ("confidence", "unsupported_argument"), reply
        self.wait(f"{BASE}/held/{task_id}", lambda body: body is not None)
        return reply

    def reply(self, task_id: str, timeout: float = 180) -> dict[str, Any]:
        topic, payload, props = self.controller.next_message(timeout)
        assert (topic, props.CorrelationData) == (self.reply_topic, task_id.encode())
        body: dict[str, Any] = json.loads(payload)
        return body

    def _pump(self, timeout: float) -> bool:
        """Take the observer's next message into `seen`; False when none came."""
        try:
            self.seen.append(self.observer.messages.get(timeout=timeout))
        except queue.Empty:
            return False
        return True

    def wait(self, topic: str, check: Any, timeout: float = 60) -> Any:
        """The first message on `topic` not taken before whose body (_body) passes
        `check`; every message stays in `seen`."""
        end = time.monotonic() + timeout
        start = 0
        while True:
            for index in range(start, len(self.seen)):
                seen_topic, payload, _ = self.seen[index]
                if seen_topic != topic or index in self._taken:
                    continue
                if check(_body(payload)):
                    self._taken.add(index)
                    return _body(payload)
            start = len(self.seen)
            if not self._pump(max(end - time.monotonic(), 0.0)) and time.monotonic() >= end:
                pytest.fail(f"no matching message on {topic} within {timeout} s")

    def actions(self) -> list[str]:
        """Every action message published so far (the observer's queue drained)."""
        while self._pump(0.5):
            pass
        return [t for t, _, _ in self.seen if t.startswith(f"{BASE}/actions/")]


@pytest.fixture
def run(acl_broker: Any, clients: Any, model_path: Path, tmp_path: Path) -> Iterator[Run]:
    password_file = tmp_path / "mqtt_password"
    password_file.write_text(acl_broker["passwords"][DEVICE])
    config = write_config(
        tmp_path / "daemon.toml",
        model=model_path,
        port=acl_broker["port"],
        device=DEVICE,
        sections={
            "mqtt": {"username": DEVICE, "protocol": "5", "max_payload_bytes": MAX_PAYLOAD},
            "catalog": {"min_confidence": 0.999},
            "homeassistant": {"discovery": True, "prefix": "homeassistant"},
        },
    )
    daemon = DaemonProcess(
        config, tmp_path / "daemon.log", env={"EDGEAGENT_MQTT__PASSWORD_FILE": str(password_file)}
    )
    log_before = len(acl_broker["broker"].log())
    daemon.start()
    try:
        running = Run(acl_broker, clients, daemon)
        running.wait(f"{BASE}/status", lambda body: body == "online" or body is None, 120)
        yield running
    finally:
        daemon.stop()
    since = acl_broker["broker"].log()[log_before:].splitlines()
    # The daemon's own client (the refused task sender's attempt is someone else's).
    assert [line for line in since if f"Denied PUBLISH from edgeagent-{DEVICE} " in line] == []


def _cli(acl_broker: Any, tmp_path: Path, user: str, *args: str) -> tuple[int, Any]:
    """The edgeagent CLI with `user`'s credentials, as an operator runs it."""
    password_file = tmp_path / f"{user}_password"
    password_file.write_text(acl_broker["passwords"][user])
    config = write_config(
        tmp_path / f"{user}.toml",
        model=tmp_path / "unused.gguf",
        port=acl_broker["port"],
        device=f"{user}-laptop",
        sections={"mqtt": {"username": user}},
    )
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "EDGEAGENT_MQTT__PASSWORD_FILE": str(password_file)},
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else done.stderr


def test_a_hold_confirmed_with_edgeagent_confirm(run, acl_broker, tmp_path):
    run.send_held_task("cli-1")
    code, holds = _cli(acl_broker, tmp_path, OPERATOR, "held", "--json", "--device", DEVICE)
    assert code == 0
    assert [(h["task_id"], h["action"], h["problem"]) for h in holds] == [
        ("cli-1", "set_irrigation", None)
    ]
    # A task sender cannot: the broker refuses its message, the device never sees it.
    code, out = _cli(
        acl_broker, tmp_path, CONTROLLER, "confirm", DEVICE, "cli-1", "--timeout", "10"
    )
    assert code == 2
    assert "not authorized" in out["error"]["message"].lower(), out
    # The operator can.
    code, answer = _cli(acl_broker, tmp_path, OPERATOR, "confirm", DEVICE, "cli-1")
    assert code == 0, answer
    assert answer == {"ok": True, "task_id": "cli-1", "decision": "confirmed", "dispatched": True}
    follow_up = run.reply("cli-1")
    assert follow_up["dispatched"] is True
    assert follow_up["resolution"]["decision"] == "confirmed"
    assert follow_up["resolution"]["by"] == getpass.getuser()
    run.wait(f"{BASE}/held/cli-1", lambda body: body is None)
    assert run.actions() == [f"{BASE}/actions/set_irrigation"]
    # Resolved: a second confirm is the device's typed error (exit 1), nothing dispatched.
    code, answer = _cli(acl_broker, tmp_path, OPERATOR, "confirm", DEVICE, "cli-1")
    assert code == 1
    assert answer["error"]["code"] == "HOLD_RESOLVED", answer


def _config(run: Run, component: str, key: str) -> dict[str, Any]:
    """An entity's retained discovery config, as Home Assistant receives it."""
    topic = f"homeassistant/{component}/edgeagent_greenhouse-01/{key}/config"
    config: dict[str, Any] = run.wait(topic, lambda body: body is not None, timeout=30)
    ha.validate("homeassistant", topic, json.dumps(config))
    return config


def _hass_showing(run: Run, sensor: dict[str, Any], task_id: str) -> Hass:
    """Home Assistant's state once the heartbeat's latest hold is `task_id`: the Latest
    hold sensor's attributes rendered by its own discovery config."""
    beat = run.wait(
        f"{BASE}/heartbeat",
        lambda body: (body.get("latest_hold") or {}).get("task_id") == task_id,
    )
    attributes = json.loads(ha.render(sensor, "json_attributes_template", json.dumps(beat)))
    hass = Hass()
    for key in ("confirm_hold", "reject_hold"):
        hass.add(f"button.edgeagent_greenhouse_01_{key}", "dev-1")
    hass.add("sensor.edgeagent_greenhouse_01_latest_hold", "dev-1", attributes)
    return hass


def test_holds_resolved_with_the_home_assistant_buttons(run):
    confirm = _config(run, "button", "confirm_hold")
    reject = _config(run, "button", "reject_hold")
    sensor = _config(run, "sensor", "latest_hold")
    run.send_held_task("ha-1")
    hass = _hass_showing(run, sensor, "ha-1")
    stale = press(confirm, entity_id="button.edgeagent_greenhouse_01_confirm_hold", hass=hass)
    assert json.loads(stale) == {"by": "homeassistant", "task_id": "ha-1"}

    # A newer hold arrives before the press: the press names ha-1, which is not the newest.
    run.send_held_task("ha-2")
    assert run.operator.publish(confirm["command_topic"], stale) == 0
    error = run.wait(f"{BASE}/errors", lambda body: body is not None)
    assert error["error"]["code"] == "INVALID_REQUEST", error  # not the newest pending hold
    assert run.actions() == []

    # Home Assistant now shows ha-2: the press confirms it, exactly that payload.
    hass = _hass_showing(run, sensor, "ha-2")
    payload = press(confirm, entity_id="button.edgeagent_greenhouse_01_confirm_hold", hass=hass)
    assert run.operator.publish(confirm["command_topic"], payload) == 0
    follow_up = run.reply("ha-2")
    assert follow_up["resolution"]["decision"] == "confirmed"
    assert follow_up["resolution"]["by"] == "homeassistant"
    run.wait(f"{BASE}/held/ha-2", lambda body: body is None)
    assert run.actions() == [f"{BASE}/actions/set_irrigation"]

    # ha-1 is the newest again: Reject.
    hass = _hass_showing(run, sensor, "ha-1")
    payload = press(reject, entity_id="button.edgeagent_greenhouse_01_reject_hold", hass=hass)
    assert run.operator.publish(reject["command_topic"], payload) == 0
    follow_up = run.reply("ha-1")
    assert (follow_up["dispatched"], follow_up["resolution"]["decision"]) == (False, "rejected")
    run.wait(f"{BASE}/held/ha-1", lambda body: body is None)
    run.wait(f"{BASE}/heartbeat", lambda body: body.get("held") == 0 and not body["latest_hold"])
    assert run.actions() == [f"{BASE}/actions/set_irrigation"]  # ha-2's, and only that
