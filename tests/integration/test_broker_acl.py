"""Broker-side security: the role's ACL and per-device passwords, in a real mosquitto.

`ansible/broker.yml` renders the ACL, the password file and the listener snippet for an
inventory of two devices (per-device passwords generated on the controller by the
role's edgeagent_mqtt_password_dir) plus a "controller" client; a real mosquitto runs
with exactly those files. Then, with real MQTT v5 clients and a real daemon:

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
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from support.daemon import DaemonProcess, write_config
from support.fleet import ANSIBLE_DIR, ansible_env
from support.mosquitto import free_port

pytestmark = pytest.mark.mqtt

DEVICES = ("greenhouse-01", "greenhouse-02")
CONTROLLER = "controller"
OBSERVER = "observer"
NOT_AUTHORIZED = 135
PACKET_TOO_LARGE = 0x95
MAX_PAYLOAD = 65536  # the devices' [mqtt] max_payload_bytes in this inventory
# Their Maximum Packet Size: payload + the longest task topic
# ($share/edgeagent/edgeagent/fleet/tasks) + reply_topic_max_bytes + 8 KiB headroom.
MAX_PACKET = MAX_PAYLOAD + 38 + 256 + 8192


class Broker:
    def __init__(self, conf_dir: Path, workdir: Path, port: int) -> None:
        self.port = port
        self.log_path = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        # The role's snippet, included as a distribution's mosquitto.conf includes conf.d/.
        self.conf.write_text(
            f"include_dir {conf_dir}\npersistence false\n"
            f"log_dest file {self.log_path}\nlog_type all\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while "running" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Client:
    """A paho MQTT v5 client that records messages, SUBACKs and PUBACK reason codes."""

    def __init__(self, port: int, user: str | None, password: str | None) -> None:
        self.messages: queue.Queue[tuple[str, bytes, Any]] = queue.Queue()
        self.connack: queue.Queue[int] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.pubacks: dict[int, int] = {}
        self._acked = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc.value)
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            (m.topic, bytes(m.payload), m.properties)
        )
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.put(
            [rc.value for rc in rcs]
        )
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.put(rc.value)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rc = self.connack.get(timeout=10)

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._acked:
            self.pubacks[mid] = rc.value
            self._acked.notify_all()

    def subscribe(self, *topics: str) -> list[int]:
        self.client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        return self.subacks.get(timeout=10)

    def publish(self, topic: str, payload: str, properties: Properties | None = None) -> int:
        """Publish QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        with self._acked:
            if not self._acked.wait_for(lambda: info.mid in self.pubacks, timeout=10):
                pytest.fail(f"no PUBACK for {topic}")
            return self.pubacks[info.mid]

    def next_message(self, timeout: float = 10) -> tuple[str, bytes, Any]:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail("an expected message did not arrive")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def acl_broker(ansible_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (scripts/install-system-deps.sh)")
    workdir = tmp_path_factory.mktemp("broker-acl")
    port = free_port()
    credentials = workdir / "credentials"
    conf_dir = workdir / "conf.d"
    inventory = workdir / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    lines = ["[pis]"] + [f"{d} edgeagent_device_id={d}" for d in DEVICES]
    lines += ["", "[brokers]", "localhost ansible_connection=local"]
    (inventory / "hosts.ini").write_text("\n".join(lines) + "\n")
    (inventory / "group_vars" / "pis.yml").write_text(
        json.dumps(
            {
                "edgeagent_mqtt_password_dir": str(credentials),
                "edgeagent_config_overrides": {"mqtt": {"max_payload_bytes": MAX_PAYLOAD}},
            }
        )
    )
    secrets = {CONTROLLER: uuid.uuid4().hex, OBSERVER: uuid.uuid4().hex}
    extra = {
        "ansible_python_interpreter": str(Path(ansible_bin) / "python"),
        "edgeagent_broker_become": False,
        "edgeagent_broker_reload": False,
        "edgeagent_broker_file_group": "root",
        "edgeagent_broker_acl_path": str(conf_dir / "edgeagent.acl"),
        "edgeagent_broker_password_path": str(workdir / "passwd" / "edgeagent.passwd"),
        "edgeagent_broker_conf_path": str(conf_dir / "edgeagent.conf"),
        "edgeagent_broker_port": port,
        "edgeagent_broker_bind_address": "127.0.0.1",
        "edgeagent_broker_homeassistant_prefix": "homeassistant",
        "edgeagent_broker_clients": [
            {
                "name": CONTROLLER,
                "password": secrets[CONTROLLER],
                "description": "sends tasks, reads the replies sent to it",
                "write": ["edgeagent/+/tasks", "edgeagent/fleet/tasks"],
                "read": ["replies/controller/#", "edgeagent/+/status", "edgeagent/+/results/#"],
            },
            {"name": OBSERVER, "password": secrets[OBSERVER], "read": ["#"]},
        ],
    }
    (workdir / "extra.json").write_text(json.dumps(extra))

    def playbook() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(ansible_bin / "ansible-playbook"),
                "-i",
                str(inventory / "hosts.ini"),
                str(ANSIBLE_DIR / "broker.yml"),
                "-e",
                f"@{workdir / 'extra.json'}",
            ],
            env=ansible_env(ansible_bin, workdir),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    first = playbook()
    assert first.returncode == 0, first.stdout + first.stderr
    broker = Broker(conf_dir, workdir, port)
    try:
        passwords = {d: (credentials / d).read_text().strip() for d in DEVICES} | secrets
        yield {
            "port": port,
            "passwords": passwords,
            "broker": broker,
            "workdir": workdir,
            "conf_dir": conf_dir,
            "credentials": credentials,
            "playbook": playbook,
            "first": first,
        }
    finally:
        broker.stop()


@pytest.fixture
def clients(acl_broker: Any) -> Any:
    made: list[Client] = []

    def connect(user: str | None, password: str | None = None) -> Client:
        if user is not None and password is None:
            password = acl_broker["passwords"][user]
        client = Client(acl_broker["port"], user, password)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def test_rendered_files(acl_broker: Any) -> None:
    acl = (acl_broker["conf_dir"] / "edgeagent.acl").read_text()
    assert "user greenhouse-01\ntopic read edgeagent/greenhouse-01/tasks\n" in acl
    assert "topic readwrite edgeagent/greenhouse-02/#\n" in acl
    assert "topic write replies/+/greenhouse-01/#\ntopic readwrite replies/greenhouse-01/#\n" in acl
    assert "topic write replies/#\n" not in acl
    assert "homeassistant/+/" not in acl
    passwd = (acl_broker["workdir"] / "passwd" / "edgeagent.passwd").read_text()
    users = [line.split(":", 1)[0] for line in passwd.splitlines()]
    assert users == [*DEVICES, CONTROLLER, OBSERVER]
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


def _refused_play(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path, pis: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run broker.yml for an inventory whose devices are `pis` (its [pis] and [pis:vars]
    lines); it must fail without writing the ACL."""
    inventory = tmp_path / "hosts.ini"
    lines = [*pis, "", "[brokers]", "localhost ansible_connection=local"]
    inventory.write_text("\n".join(lines) + "\n")
    target = tmp_path / "out" / "edgeagent.acl"
    run = subprocess.run(
        [
            str(ansible_bin / "ansible-playbook"),
            "-i",
            str(inventory),
            str(ANSIBLE_DIR / "broker.yml"),
            "-e",
            f"@{acl_broker['workdir'] / 'extra.json'}",
            "-e",
            f"edgeagent_broker_acl_path={target}",
        ],
        env=ansible_env(ansible_bin, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode != 0, run.stdout[-3000:]
    assert not target.exists()
    return run


def test_a_device_id_of_the_fleets_own_topics_is_refused(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path
) -> None:
    """A device "fleet" would be granted readwrite edgeagent/fleet/#: tasks to every device."""
    pis = ["[pis]", "greenhouse-01", "pi-x edgeagent_device_id=fleet", "", "[pis:vars]"]
    pis += [f"edgeagent_mqtt_password_dir={tmp_path / 'credentials'}"]
    run = _refused_play(acl_broker, ansible_bin, tmp_path, pis)
    assert "device id 'fleet' is reserved" in run.stdout, run.stdout[-3000:]


def test_one_shared_user_for_the_fleet_is_refused(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path
) -> None:
    pis = ["[pis]"] + [f"{d} edgeagent_device_id={d}" for d in DEVICES]
    pis += ["", "[pis:vars]", "edgeagent_mqtt_username=edgeagent"]
    pis += ["edgeagent_mqtt_password=one-for-all"]
    run = _refused_play(acl_broker, ansible_bin, tmp_path, pis)
    assert "The broker needs one user per device with its own password" in run.stdout
    assert "one-for-all" not in run.stdout + run.stderr
