"""The broker side the role renders (ansible/broker.yml), running in a real mosquitto.

`acl_broker` renders the ACL, the password file and the listener snippet for an inventory
of two devices (per-device passwords generated on the controller by the role's
edgeagent_mqtt_password_dir), a "controller" task sender, an "observer" that reads
everything and an operator "alice" (edgeagent_broker_operators), and starts mosquitto
with exactly those files; `clients` connects MQTT v5 clients as any of them.
test_broker_acl.py and test_broker_acl_holds.py use them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from support.fleet import ANSIBLE_DIR, ansible_env
from support.mosquitto import free_port

DEVICES = ("greenhouse-01", "greenhouse-02")
CONTROLLER = "controller"
OBSERVER = "observer"
OPERATOR = "alice"
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
    secrets = {CONTROLLER: uuid.uuid4().hex, OBSERVER: uuid.uuid4().hex, OPERATOR: uuid.uuid4().hex}
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
        "edgeagent_broker_operators": [
            {"name": OPERATOR, "password": secrets[OPERATOR], "description": "on call"}
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


def refused_play(
    acl_broker: Any,
    ansible_bin: Path,
    tmp_path: Path,
    pis: list[str],
    extra: dict[str, Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run broker.yml for an inventory whose devices are `pis` (its [pis] and [pis:vars]
    lines), with `extra` variables over the fixture's; it must fail without writing the ACL."""
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
            "-e",
            json.dumps(extra or {}),
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
