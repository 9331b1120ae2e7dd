"""Broker-side security: the role's ACL and per-device passwords, in a real mosquitto.

`ansible/broker.yml` renders the ACL, the password file and the listener snippet for an
inventory of two devices (per-device passwords generated on the controller by the
role's edgeagent_mqtt_password_dir) plus a "controller" client and an operator; a real
mosquitto runs with exactly those files (support/acl_broker.py). Then, with real MQTT v5
clients and a real daemon (the holds' confirm and reject topics: test_broker_acl_holds.py):

- every device logs in with its own password only (no anonymous, no shared password);
- a device receives its own tasks and fleet tasks, never another device's tasks;
- a device may publish under its own prefix, replies that name it
  (replies/<sender>/<its id>/...), its own branch of replies and its own discovery
  sensors, and nothing else: under another device's prefix, on the fleet task topic, a
  reply in another device's name, a discovery config of another component or object id,
  anywhere else the broker answers PUBACK "not authorized" (135) and delivers nothing;
- a device id that is one of the fleet's own topic levels ("fleet") is refused by the
  playbook before it writes anything;
- the listener refuses a packet larger than the devices' Maximum Packet Size at its
  sender (DISCONNECT 0x95) instead of acknowledging it and dropping it, and the real
  daemon answers everything smaller;
- the real daemon, with its device's credentials, answers a task under that ACL;
- a second run of the playbook changes nothing (the password hashes are kept).

Negative checks never wait for a timeout: after the message that must not arrive, the
same sender publishes one that must, and mosquitto delivers in order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.acl_broker import (
    CONTROLLER,
    DEVICES,
    MAX_PACKET,
    MAX_PAYLOAD,
    NOT_AUTHORIZED,
    OBSERVER,
    OPERATOR,
    PACKET_TOO_LARGE,
    refused_play,
)
from support.daemon import DaemonProcess, write_config

pytestmark = pytest.mark.mqtt


def test_rendered_files(acl_broker: Any) -> None:
    acl = (acl_broker["conf_dir"] / "edgeagent.acl").read_text()
    assert "user greenhouse-01\ntopic read edgeagent/greenhouse-01/tasks\n" in acl
    # Below its own base, a device writes each topic its daemon publishes, by name.
    assert "edgeagent/greenhouse-02/#" not in acl
    assert "topic readwrite edgeagent/greenhouse-02/held/+\n" in acl
    assert "topic read edgeagent/greenhouse-02/held/+/confirm\n" in acl
    assert f"user {OPERATOR}\ntopic write edgeagent/+/held/+/confirm\n" in acl
    assert "topic write replies/+/greenhouse-01/#\ntopic readwrite replies/greenhouse-01/#\n" in acl
    assert "topic write replies/#\n" not in acl
    assert "homeassistant/+/" not in acl
    passwd = (acl_broker["workdir"] / "passwd" / "edgeagent.passwd").read_text()
    users = [line.split(":", 1)[0] for line in passwd.splitlines()]
    assert users == [*DEVICES, CONTROLLER, OBSERVER, OPERATOR]
    assert all(line.split(":", 1)[1].startswith("$7$") for line in passwd.splitlines())
    for secret in acl_broker["passwords"].values():
        assert secret not in passwd
        assert secret not in acl_broker["first"].stdout
    # One password per device, generated on the controller, only readable by its owner.
    device_passwords = {acl_broker["passwords"][d] for d in DEVICES}
    assert len(device_passwords) == len(DEVICES)
    for device in DEVICES:
        assert (acl_broker["credentials"] / device).stat().st_mode & 0o077 == 0
    conf = (acl_broker["conf_dir"] / "edgeagent.conf").read_text()
    assert "allow_anonymous false\n" in conf
    assert f"listener {acl_broker['port']} 127.0.0.1\n" in conf
    assert f"max_packet_size {MAX_PACKET}\n" in conf


def test_second_run_changes_nothing(acl_broker: Any) -> None:
    passwd = acl_broker["workdir"] / "passwd" / "edgeagent.passwd"
    before = passwd.read_text()
    run = acl_broker["playbook"]()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "changed=0" in run.stdout, run.stdout[-2000:]
    assert passwd.read_text() == before


def test_only_each_devices_own_password_logs_in(acl_broker: Any, clients: Any) -> None:
    assert clients("greenhouse-01").rc == 0
    wrong = clients("greenhouse-01", acl_broker["passwords"]["greenhouse-02"])
    assert wrong.rc != 0  # 134/135: bad user name or password / not authorized
    assert clients(None).rc != 0  # anonymous


def test_a_device_receives_its_own_and_fleet_tasks_only(clients: Any) -> None:
    device = clients("greenhouse-01")
    snoop = clients("greenhouse-01")  # the same credentials, trying a wildcard
    controller = clients(CONTROLLER)
    device.subscribe(
        "edgeagent/greenhouse-01/tasks",
        "$share/edgeagent/edgeagent/fleet/tasks",
        "edgeagent/greenhouse-02/tasks",  # someone else's: must stay silent
    )
    snoop.subscribe("edgeagent/+/tasks")
    assert controller.publish("edgeagent/greenhouse-02/tasks", "not for you") == 0
    assert controller.publish("edgeagent/fleet/tasks", "fleet task") == 0
    assert controller.publish("edgeagent/greenhouse-01/tasks", "yours") == 0
    expected = [
        ("edgeagent/fleet/tasks", b"fleet task"),
        ("edgeagent/greenhouse-01/tasks", b"yours"),
    ]
    assert [device.next_message()[:2] for _ in expected] == expected
    assert [snoop.next_message()[:2] for _ in expected] == expected


def test_a_device_publishes_only_under_its_prefix_and_reply_prefixes(clients: Any) -> None:
    device = clients("greenhouse-01")
    observer = clients(OBSERVER)
    observer.subscribe("#")
    allowed = [
        "edgeagent/greenhouse-01/results/t1",
        "edgeagent/greenhouse-01/status",
        "edgeagent/greenhouse-01/actions/set_irrigation",
        "replies/someone/greenhouse-01",  # a reply to "someone", naming the device
        "replies/homeassistant/greenhouse-01/t1",
        "replies/greenhouse-01/cli-1",  # its own branch: its own CLI's replies
        "homeassistant/sensor/edgeagent_greenhouse-01/state/config",
        "homeassistant/binary_sensor/edgeagent_greenhouse-01/memory_pressure/config",
    ]
    refused = [
        # Replies in another device's name, or naming none, in a sender's branch.
        "replies/homeassistant/greenhouse-02",
        "replies/homeassistant/greenhouse-02/t1",
        "replies/homeassistant/t1",
        "replies/someone/1",
        "replies/greenhouse-02/cli-1",
        # Discovery: another device's node, another component (a switch or button has a
        # command_topic), an object id the daemon does not publish.
        "homeassistant/sensor/edgeagent_greenhouse-02/state/config",
        "homeassistant/switch/edgeagent_greenhouse-01/valve/config",
        "homeassistant/button/edgeagent_greenhouse-01/state/config",
        "homeassistant/sensor/edgeagent_greenhouse-01/made_up/config",
        "homeassistant/sensor/edgeagent_greenhouse-01/state/other",
        "edgeagent/greenhouse-02/results/t1",
        "edgeagent/greenhouse-02/actions/set_irrigation",
        "edgeagent/greenhouse-02/status",
        "edgeagent/greenhouse-02/tasks",
        "edgeagent/fleet/tasks",
        "homeassistant/switch/valve/set",
        "valves/zone3/set",
    ]
    for topic in refused:
        assert device.publish(topic, "forged") == NOT_AUTHORIZED, topic
    for topic in allowed:
        assert device.publish(topic, "fine") == 0, topic
    seen = [observer.next_message()[0] for _ in allowed]
    assert seen == allowed  # and none of the refused ones before them


def test_the_daemon_answers_under_the_acl(
    acl_broker: Any, clients: Any, model_path: Path, tmp_path: Path
) -> None:
    password_file = tmp_path / "mqtt_password"
    password_file.write_text(acl_broker["passwords"]["greenhouse-01"])
    config = write_config(
        tmp_path / "config.toml",
        model=model_path,
        port=acl_broker["port"],
        device="greenhouse-01",
        sections={
            "mqtt": {"username": "greenhouse-01", "protocol": "5", "max_payload_bytes": MAX_PAYLOAD}
        },
    )
    daemon = DaemonProcess(
        config, tmp_path / "daemon.log", env={"EDGEAGENT_MQTT__PASSWORD_FILE": str(password_file)}
    )
    controller = clients(CONTROLLER)
    controller.subscribe(
        "replies/controller/#", "edgeagent/greenhouse-01/status", "edgeagent/+/results/#"
    )
    log_before = len(acl_broker["broker"].log())
    daemon.start()
    try:
        topic, payload, _ = controller.next_message(timeout=120)
        assert (topic, payload.decode()) == ("edgeagent/greenhouse-01/status", "online")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "replies/controller/greenhouse-01/1"
        props.CorrelationData = b"acl-1"
        task = {"id": "acl-1", "input": "Zone 3 soil moisture is 12 %.", "max_tokens": 48}
        task["schema"] = {"type": "object", "properties": {"dry": {"type": "boolean"}}}
        assert controller.publish("edgeagent/greenhouse-01/tasks", json.dumps(task), props) == 0
        topic, payload, properties = controller.next_message(timeout=120)
        assert topic == "replies/controller/greenhouse-01/1"
        assert properties.CorrelationData == b"acl-1"
        reply = json.loads(payload)
        assert reply["status"] == "ok", reply
        assert reply["device"] == "greenhouse-01"
        # The largest packet the broker takes still reaches the daemon, which answers it.
        props.CorrelationData = b"acl-2"
        big = json.dumps({"id": "acl-2", "input": "x" * (MAX_PACKET - 600)})
        assert controller.publish("edgeagent/greenhouse-01/tasks", big, props) == 0
        topic, payload, properties = controller.next_message(timeout=120)
        assert (topic, properties.CorrelationData) == (
            "replies/controller/greenhouse-01/1",
            b"acl-2",
        )
        assert json.loads(payload)["error"]["code"] == "PAYLOAD_TOO_LARGE"
        # A fleet task: the answering device is not known in advance, so its reply goes
        # to that device's results topic, which names it.
        fleet = {"id": "acl-3", "input": "Zone 3 soil moisture is 12 %.", "max_tokens": 48}
        fleet["schema"] = task["schema"]
        assert controller.publish("edgeagent/fleet/tasks", json.dumps(fleet)) == 0
        topic, payload, _ = controller.next_message(timeout=120)
        assert topic == "edgeagent/greenhouse-01/results/acl-3"
        assert json.loads(payload)["status"] == "ok"
        # An operator's CLI with the task sender's credentials, to the device and to the fleet.
        for target in (["--device", "greenhouse-01"], ["--fleet"]):
            reply = _submit_as_controller(acl_broker, model_path, tmp_path, target)
            assert (reply["status"], reply["device"]) == ("ok", "greenhouse-01")
    finally:
        daemon.stop()
    # The daemon never needed anything the ACL does not grant.
    since = acl_broker["broker"].log()[log_before:].splitlines()
    assert [line for line in since if "Denied" in line] == []


def _submit_as_controller(
    acl_broker: Any, model_path: Path, tmp_path: Path, target: list[str]
) -> dict[str, Any]:
    """`edgeagent submit` as an operator runs it, with the controller user's password."""
    password_file = tmp_path / "controller_password"
    password_file.write_text(acl_broker["passwords"][CONTROLLER])
    config = write_config(
        tmp_path / "controller.toml",
        model=model_path,
        port=acl_broker["port"],
        device="controller-cli",
        sections={"mqtt": {"username": CONTROLLER, "protocol": "5"}},
    )
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"dry": {"type": "boolean"}}}))
    task = ["--schema", str(schema), "--max-tokens", "48", "--timeout", "120", "Zone 3: 12 %."]
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", "submit", "--config", str(config), *target, *task],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "EDGEAGENT_MQTT__PASSWORD_FILE": str(password_file)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def test_a_packet_larger_than_a_device_takes_is_refused_at_its_sender(clients: Any) -> None:
    """Without the listener's max_packet_size the broker acknowledged such a task (PUBACK
    0) and then dropped it on its way to the device: an answer that never comes."""
    controller = clients(CONTROLLER)
    observer = clients(OBSERVER)
    observer.subscribe("edgeagent/+/tasks")
    info = controller.client.publish("edgeagent/greenhouse-01/tasks", "x" * MAX_PACKET, qos=1)
    assert controller.disconnects.get(timeout=10) == PACKET_TOO_LARGE
    assert info.mid not in controller.pubacks
    controller.client.loop_stop()  # paho would send it again on every reconnect
    controller.client.disconnect()
    # Delivered in order: the one that fits arrives, the oversized one never did.
    assert clients(CONTROLLER).publish("edgeagent/greenhouse-01/tasks", "fits") == 0
    assert observer.next_message()[:2] == ("edgeagent/greenhouse-01/tasks", b"fits")


def test_a_device_id_of_the_fleets_own_topics_is_refused(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path
) -> None:
    """A device "fleet" would be granted readwrite edgeagent/fleet/#: tasks to every device."""
    pis = ["[pis]", "greenhouse-01", "pi-x edgeagent_device_id=fleet", "", "[pis:vars]"]
    pis += [f"edgeagent_mqtt_password_dir={tmp_path / 'credentials'}"]
    run = refused_play(acl_broker, ansible_bin, tmp_path, pis)
    assert "device id 'fleet' is reserved" in run.stdout, run.stdout[-3000:]


def test_one_shared_user_for_the_fleet_is_refused(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path
) -> None:
    pis = ["[pis]"] + [f"{d} edgeagent_device_id={d}" for d in DEVICES]
    pis += ["", "[pis:vars]", "edgeagent_mqtt_username=edgeagent"]
    pis += ["edgeagent_mqtt_password=one-for-all"]
    run = refused_play(acl_broker, ansible_bin, tmp_path, pis)
    assert "The broker needs one user per device with its own password" in run.stdout
    assert "one-for-all" not in run.stdout + run.stderr
