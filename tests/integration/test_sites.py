"""Sites: two site brokers bridged to a central broker, real devices behind each site.

`ansible/broker.yml` renders, in one run, every broker file of the topology: each site's
ACL, password file, listener and bridge (edgeagent_broker_bridge), and the central
broker's ACL whose site bridge users come from `edgeagent_bridge_clients`. Three real
mosquittos run with exactly those files on loopback; site A's bridge reaches the
central broker through a link the test can cut. Real daemons with the test model: two
at site A, one at site B, each with its own credentials and the site's topic prefix.

Then, from the central broker only:
- `edgeagent status --fleet` shows every site's devices as `<site>/<device>`;
- a task to one device crosses down and its reply (MQTT v5 Response Topic, under the
  central ACL) crosses up;
- a site's fleet task is answered by one device of that site; a fleet-wide task by
  exactly one device per site;
- a held action at site B (its catalog holds every action) shows up on the central
  broker, an operator there confirms it, and the action is dispatched at the site, its
  notice cleared centrally and the requester sent the follow-up;
- the link of site A is cut: the central broker marks the site's bridge down, site B
  keeps answering, and a QoS 1 task sent to site A during the cut is answered exactly
  once after the link is restored (persistent bridge sessions queue it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.daemon import ROOT, DaemonProcess, write_config
from support.fleet import ANSIBLE_DIR, ansible_env
from support.mosquitto import MqttProbe, free_port
from support.tcp_cut import CuttableLink

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

SITES = {"site-a": ("gh-a1", "gh-a2"), "site-b": ("gh-b1",)}
CONTROLLER = "controller"
OPERATOR = "alice"
# gh-b1 holds every catalog action for an operator (schema tasks are not affected).
HOLDING = {"gh-b1": {"catalog": {"min_confidence": 0.999}}}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
}


def task(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "input": f"{task_id}: Porto reports 21 degrees.", "schema": SCHEMA}


class Broker:
    """mosquitto with the role's files (conf.d/ as a distribution includes it)."""

    def __init__(self, name: str, workdir: Path, conf_dir: Path, port: int) -> None:
        self.port = port
        self.log_path = workdir / f"{name}.log"
        conf = workdir / f"{name}.conf"
        conf.write_text(
            "persistence false\nmax_queued_messages 1000\n"
            f"log_dest file {self.log_path}\nlog_type all\n"
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"include_dir {conf_dir}\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)])
        deadline = time.monotonic() + 10
        while "running" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto {name} did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def inventory(workdir: Path, ports: dict[str, int], link_port: int, ansible_bin: Path) -> Path:
    """Site groups of devices (never contacted: broker.yml reads their variables) and
    three broker hosts on this machine."""
    inv = workdir / "inventory"
    for sub in ("group_vars", "host_vars"):
        (inv / sub).mkdir(parents=True)
    lines = []
    for site, devices in SITES.items():
        group = site.replace("-", "_")
        lines += [f"[{group}]", *(f"{d} edgeagent_device_id={d}" for d in devices), ""]
        (inv / "group_vars" / f"{group}.yml").write_text(
            json.dumps({"edgeagent_mqtt_topic_prefix": f"edgeagent/{site}"})
        )
    lines += ["[brokers]", *(f"{b} ansible_connection=local" for b in ports)]
    (inv / "hosts.ini").write_text("\n".join(lines) + "\n")
    credentials = workdir / "credentials"
    secret = (
        "{{{{ lookup('ansible.builtin.password', '{}/' ~ {}, chars=['ascii_letters',"
        " 'digits'], length=32) }}}}"
    )
    common = {
        "ansible_python_interpreter": str(ansible_bin / "python"),
        "edgeagent_mqtt_password_dir": str(credentials),
        "edgeagent_broker_become": False,
        "edgeagent_broker_reload": False,
        "edgeagent_broker_file_group": "root",
        "edgeagent_broker_bind_address": "127.0.0.1",
        "edgeagent_broker_homeassistant_prefix": "homeassistant",
    }
    (inv / "group_vars" / "all.yml").write_text(json.dumps(common))
    for broker, port in ports.items():
        conf_dir = workdir / broker / "conf.d"
        host = {
            "edgeagent_broker_port": port,
            "edgeagent_broker_acl_path": str(conf_dir / "edgeagent.acl"),
            "edgeagent_broker_password_path": str(workdir / broker / "edgeagent.passwd"),
            "edgeagent_broker_conf_path": str(conf_dir / "edgeagent.conf"),
            "edgeagent_broker_bridge_conf_path": str(conf_dir / "edgeagent_bridge.conf"),
        }
        if broker == "central":
            host |= {
                "edgeagent_broker_device_group": "central_has_no_devices",
                "edgeagent_broker_max_packet_size": 0,
                "edgeagent_broker_clients": (
                    "{{ edgeagent_test_sites | edgeagent_bridge_clients("
                    "homeassistant_prefix='homeassistant') + [edgeagent_test_controller] }}"
                ),
                "edgeagent_test_sites": [
                    {
                        "site": site,
                        "password": secret.format(credentials, repr(f"bridge-{site}")),
                        "devices": list(devices),
                    }
                    for site, devices in SITES.items()
                ],
                # Operators decide on every site's holds from the central broker.
                "edgeagent_broker_operators": [
                    {
                        "name": OPERATOR,
                        "password": secret.format(credentials, repr(OPERATOR)),
                        "write": ["edgeagent/+/+/held/+/confirm", "edgeagent/+/+/held/+/reject"],
                        "read": ["edgeagent/+/+/held/#", "edgeagent/+/+/actions/#"],
                    }
                ],
                "edgeagent_test_controller": {
                    "name": CONTROLLER,
                    "password": secret.format(credentials, repr(CONTROLLER)),
                    "write": ["edgeagent/+/+/tasks", "edgeagent/fleet/tasks"],
                    "read": [
                        "replies/controller/#",
                        "edgeagent/+/+/results/#",
                        "edgeagent/+/+/status",
                        "edgeagent/+/+/heartbeat",
                        "edgeagent/+/status",
                        "edgeagent/+/heartbeat",
                        "edgeagent/+/fleet/bridge",
                        "homeassistant/#",
                    ],
                    "readwrite": ["edgeagent/clients/#"],
                },
            }
        else:
            host |= {
                "edgeagent_broker_device_group": broker.replace("-", "_"),
                "edgeagent_broker_bridge": {
                    "site": broker,
                    "address": "127.0.0.1",
                    # Site A through the link the test cuts, site B directly.
                    "port": link_port if broker == "site-a" else ports["central"],
                    "password": secret.format(credentials, repr(f"bridge-{broker}")),
                    "homeassistant_prefix": "homeassistant",
                    "restart_timeout": "1 2",
                    "keepalive_s": 10,
                },
            }
        (inv / "host_vars" / f"{broker}.yml").write_text(json.dumps(host))
    return inv


@pytest.fixture(scope="module")
def sites(
    ansible_bin: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("sites")
    ports = {"central": free_port(), "site-a": free_port(), "site-b": free_port()}
    link = CuttableLink(ports["central"])
    inv = inventory(workdir, ports, link.port, ansible_bin)
    started = time.monotonic()
    rendered = subprocess.run(
        [str(ansible_bin / "ansible-playbook"), "-i", str(inv / "hosts.ini"),
         str(ANSIBLE_DIR / "broker.yml")],
        env=ansible_env(ansible_bin, workdir), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    print(f"\nbroker.yml rendered 3 brokers in {time.monotonic() - started:.1f} s")
    credentials = workdir / "credentials"
    brokers: list[Broker] = []
    daemons: dict[str, DaemonProcess] = {}
    try:
        brokers += [Broker(b, workdir, workdir / b / "conf.d", ports[b]) for b in ports]
        for site, devices in SITES.items():
            for device in devices:
                password_file = workdir / f"{device}.password"
                password_file.write_text((credentials / device).read_text().strip())
                config = write_config(
                    workdir / f"{device}.toml",
                    model=model_path,
                    port=ports[site],
                    device=device,
                    log_level="debug",
                    sections={
                        "mqtt": {"topic_prefix": f"edgeagent/{site}", "username": device},
                        "homeassistant": {"discovery": True},
                        **HOLDING.get(device, {}),
                    },
                )
                daemons[device] = DaemonProcess(
                    config,
                    workdir / f"{device}.log",
                    env={"EDGEAGENT_MQTT__PASSWORD_FILE": str(password_file)},
                )
                daemons[device].start()
        controller_password = (credentials / CONTROLLER).read_text().strip()
        central = MqttProbe(ports["central"], username=CONTROLLER, password=controller_password)
        central.subscribe("replies/controller/#")
        central.subscribe("edgeagent/+/+/results/#")
        central.subscribe("edgeagent/+/fleet/bridge")
        for daemon in daemons.values():
            daemon.wait_event("mqtt connected", timeout=120)
        operator_password = (credentials / OPERATOR).read_text().strip()
        yield {
            "operator_password": operator_password,
            "workdir": workdir,
            "ports": ports,
            "link": link,
            "brokers": brokers,
            "daemons": daemons,
            "central": central,
            "controller_password": controller_password,
        }
        central.close()
    finally:
        for daemon in daemons.values():
            daemon.stop()
        for broker in brokers:
            broker.stop()
        link.close()


def request(
    central: MqttProbe, topic: str, task_id: str, reply_to: str | None = None, **fields: Any
) -> None:
    """A task published on the central broker; its reply address, if any, in the body:
    MQTT v5 properties do not cross the sites' MQTT 3.1.1 bridges."""
    body = task(task_id) | ({"reply_to": reply_to} if reply_to else {}) | fields
    if "action" in fields:
        del body["schema"]
    central.publish(topic, body)


def answers(central: MqttProbe, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, body) of every reply to `task_id` seen on the central broker so far."""
    found = []
    for message in list(central.messages):
        if message.topic.startswith("edgeagent/") and message.topic.endswith("/fleet/bridge"):
            continue
        body = json.loads(message.payload)
        if body.get("id") == task_id:
            found.append((message.topic, body))
    return found


def wait_answers(central: MqttProbe, task_id: str, count: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(found := answers(central, task_id)) >= count:
            return found
        time.sleep(0.05)
    pytest.fail(
        f"{count} answer(s) to {task_id} not seen within {timeout} s: {answers(central, task_id)}"
    )


def bridge_state(central: MqttProbe, site: str) -> bytes | None:
    states = [
        bytes(m.payload) for m in central.messages if m.topic == f"edgeagent/{site}/fleet/bridge"
    ]
    return states[-1] if states else None


def wait_bridge(central: MqttProbe, site: str, state: bytes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while bridge_state(central, site) != state:
        if time.monotonic() > deadline:
            pytest.fail(f"bridge of {site} not {state!r} within {timeout} s")
        time.sleep(0.05)


def test_the_rendered_bridge(sites: dict[str, Any]) -> None:
    conf = (sites["workdir"] / "site-a" / "conf.d" / "edgeagent_bridge.conf").read_text()
    assert "connection edgeagent-site-a\n" in conf
    assert "cleansession false\n" in conf
    assert "topic fleet/tasks in 1 edgeagent/site-a/ edgeagent/\n" in conf
    assert "topic +/heartbeat out 0 edgeagent/site-a/ edgeagent/site-a/\n" in conf
    assert "topic replies/+/gh-a2/# out 1\n" in conf
    assert "topic +/held/+ out 1 edgeagent/site-a/ edgeagent/site-a/\n" in conf
    assert "topic +/held/+/confirm in 1 edgeagent/site-a/ edgeagent/site-a/\n" in conf
    assert "gh-b1" not in conf
    acl = (sites["workdir"] / "central" / "conf.d" / "edgeagent.acl").read_text()
    bridge_a = acl.split("user bridge-site-a\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert "topic read edgeagent/site-a/+/tasks" in bridge_a
    assert "topic read edgeagent/site-a/+/held/+/confirm" in bridge_a
    assert "topic write edgeagent/site-a/+/held/+" in bridge_a
    assert not [line for line in bridge_a if "site-b" in line or "gh-b1" in line]
    assert "topic write replies/+/gh-b1/#\n" in acl
    # The bridge's password is nowhere but in its own file.
    password = (sites["workdir"] / "credentials" / "bridge-site-a").read_text().strip()
    assert f"remote_password {password}\n" in conf
    assert password not in acl


def controller_cli(sites: dict[str, Any], prefix: str) -> tuple[Path, dict[str, str]]:
    """A CLI config for the controller on the central broker, and its environment."""
    config = write_config(
        sites["workdir"] / "central.toml",
        model=sites["workdir"] / "unused.gguf",
        port=sites["ports"]["central"],
        device=CONTROLLER,
        sections={"mqtt": {"username": CONTROLLER, "topic_prefix": prefix}},
    )
    password_file = sites["workdir"] / "controller.password"
    password_file.write_text(sites["controller_password"])
    return config, {**os.environ, "EDGEAGENT_MQTT__PASSWORD_FILE": str(password_file)}


def test_the_central_fleet_view_shows_every_sites_devices(sites: dict[str, Any]) -> None:
    config, env = controller_cli(sites, "edgeagent")
    wanted = {f"{site}/{d}" for site, devices in SITES.items() for d in devices}
    deadline = time.monotonic() + 30
    while True:  # a device's first heartbeat may still be on its way up
        done = subprocess.run(
            [sys.executable, "-m", "edgeagent", "status", "--config", str(config), "--fleet",
             "--json", "--timeout", "10"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        if {r["device"] for r in rows if r["online"] and r["state"]} == wanted:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"fleet view at the central broker: {done.stdout}{done.stderr}")
        time.sleep(1)
    assert {r["device"] for r in rows} == wanted


def test_a_task_crosses_down_and_its_reply_up(sites: dict[str, Any]) -> None:
    """`edgeagent submit --device` on the central broker, as an operator would."""
    wait_bridge(sites["central"], "site-b", b"1")
    config, env = controller_cli(sites, "edgeagent/site-b")
    schema = sites["workdir"] / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", "submit", "--config", str(config), "--device",
         "gh-b1", "--schema", str(schema), "--timeout", "60", "Porto reports 21 degrees."],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["status"] == "ok"
    assert body["device"] == "gh-b1"


def test_fleet_tasks_per_site_and_fleet_wide(sites: dict[str, Any]) -> None:
    central = sites["central"]
    for i in range(4):
        request(central, "edgeagent/site-a/fleet/tasks", f"site-{i}")
    request(central, "edgeagent/fleet/tasks", "all-1")
    for i in range(4):
        ((topic, body),) = wait_answers(central, f"site-{i}", 1)
        assert topic == f"edgeagent/site-a/{body['device']}/results/site-{i}"
    by_site = wait_answers(central, "all-1", 2)
    time.sleep(2)  # a third answer (two devices of one site) would come now
    by_site = answers(central, "all-1")
    sites_answering = sorted(topic.split("/")[1] for topic, _ in by_site)
    assert sites_answering == ["site-a", "site-b"]
    used = {body["device"] for i in range(4) for _, body in answers(central, f"site-{i}")}
    assert used <= set(SITES["site-a"])


def test_a_hold_goes_up_and_the_operators_decision_comes_down(sites: dict[str, Any]) -> None:
    central = sites["central"]
    operator = MqttProbe(
        sites["ports"]["central"], username=OPERATOR, password=sites["operator_password"]
    )
    base = "edgeagent/site-b/gh-b1"
    try:
        operator.subscribe("edgeagent/+/+/held/#")
        operator.subscribe("edgeagent/+/+/actions/#")
        request(
            central,
            f"{base}/tasks",
            "hold-1",
            "replies/controller/gh-b1/hold-1",
            action="set_irrigation",
            input="The weather is nice today.",
        )
        notice = json.loads(operator.wait_for(f"{base}/held/hold-1", timeout=60)[0].payload)
        assert notice["device"] == "gh-b1"
        assert notice["action"] == "set_irrigation"
        operator.publish(f"{base}/held/hold-1/confirm", {"by": OPERATOR})
        (action,) = operator.wait_for(f"{base}/actions/set_irrigation", timeout=60)
        assert json.loads(action.payload)["args"] == notice["args"]
        deadline = time.monotonic() + 30
        while not [
            m for m in operator.messages if m.topic == f"{base}/held/hold-1" and not m.payload
        ]:
            if time.monotonic() > deadline:
                pytest.fail("the notice was not cleared on the central broker")
            time.sleep(0.05)
        first, follow_up = wait_answers(central, "hold-1", 2)
        assert "held" in first[1]
        assert follow_up[1]["resolution"]["decision"] == "confirmed"
        assert follow_up[1]["resolution"]["by"] == OPERATOR
        assert follow_up[1]["dispatched"] is True
    finally:
        operator.close()


def test_a_task_sent_during_a_cut_is_answered_once_after_it(sites: dict[str, Any]) -> None:
    central, link = sites["central"], sites["link"]
    wait_bridge(central, "site-a", b"1")
    link.cut()
    wait_bridge(central, "site-a", b"0")  # the bridge's Last Will on the central broker
    request(central, "edgeagent/site-a/gh-a1/tasks", "cut-1", "replies/controller/gh-a1/cut-1")
    # Site B does not depend on site A's link.
    request(central, "edgeagent/site-b/gh-b1/tasks", "cut-b", "replies/controller/gh-b1/cut-b")
    wait_answers(central, "cut-b", 1)
    time.sleep(2)
    assert answers(central, "cut-1") == []
    assert not sites["daemons"]["gh-a1"].events("task started") or all(
        e.get("task_id") != "cut-1" for e in sites["daemons"]["gh-a1"].events("task started")
    )
    cut_at = time.monotonic()
    link.restore()
    wait_bridge(central, "site-a", b"1")
    ((topic, body),) = wait_answers(central, "cut-1", 1)
    print(f"\ntask sent during the cut answered {time.monotonic() - cut_at:.1f} s after restore")
    assert topic == "replies/controller/gh-a1/cut-1"
    assert body["status"] == "ok"
    time.sleep(3)  # a second reply (the task delivered twice) would come now
    assert len(answers(central, "cut-1")) == 1
    started = [
        e for e in sites["daemons"]["gh-a1"].events("task started") if e.get("task_id") == "cut-1"
    ]
    assert len(started) == 1


def test_discovery_configs_reach_the_central_broker(sites: dict[str, Any]) -> None:
    probe = MqttProbe(
        sites["ports"]["central"], username=CONTROLLER, password=sites["controller_password"]
    )
    try:
        probe.subscribe("homeassistant/#")
        found = probe.wait_for("homeassistant/+/edgeagent_gh-a2/state/config", timeout=20)
        config = json.loads(found[0].payload)
        # The topics it names are the central broker's topics too: nothing was renamed.
        assert config["availability_topic"] == "edgeagent/site-a/gh-a2/status"
    finally:
        probe.close()
