"""Where operators look, end to end: the real daemon, a real mosquitto, the real model.

One daemon with Home Assistant discovery, the metrics HTTP endpoint and the node_exporter
textfile turned on answers the task the Node-RED example flow builds. Then:

* the retained discovery configs, read back from the broker by a fresh client, each pass
  Home Assistant's discovery schema for its component (tests/support/homeassistant_schema),
  belong to one device, are available on the status topic, and their value templates
  render states HA accepts from the daemon's real retained heartbeat and last action; the
  hold buttons command the device's own held/latest/confirm|reject;
* the metrics endpoint, scraped over HTTP and parsed with prometheus_client's parser,
  counts the task, and the textfile holds the same families;
* `edgeagent status --fleet --json` shows the device online and serving;
* stopped, its retained heartbeat says `stopped`; started again, its first heartbeat
  (sent on connect, before the model is loaded) says `loading`;
* restarted with discovery off, the daemon empties every config it published: a new
  subscriber finds none retained.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families
from support import homeassistant_schema as ha
from support.daemon import ROOT, DaemonProcess, write_config
from support.mosquitto import Mosquitto, MqttProbe, free_port, property_of
from support.nodered import flow_task

from edgeagent.service.system.board import read_board

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

DEVICE = "greenhouse-01"  # the device the Node-RED example flow addresses
PREFIX = "homeassistant"
BASE = f"edgeagent/{DEVICE}"


def _retained(port: int, topic: str) -> dict[str, bytes]:
    """Retained messages on `topic` as a new subscriber gets them (topic -> payload).

    The broker sends retained messages right after the SUBACK and before anything the
    client publishes afterwards, so a marker published by the same client, once it comes
    back, means every retained message is in.
    """
    probe = MqttProbe(port)
    try:
        marker = f"test/{uuid.uuid4().hex}"
        probe.subscribe(topic)
        probe.subscribe(marker)
        probe.publish(marker, "sync")
        probe.wait_for(marker, timeout=10)
        return {m.topic: bytes(m.payload) for m in probe.messages if m.retain and m.payload}
    finally:
        probe.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _wait(what: str, check, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()) is not None and value is not False:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} not seen within {timeout} s")


@pytest.fixture
def configured(tmp_path: Path, model_path: Path, mosquitto: Mosquitto):
    metrics_port = free_port()
    textfile_dir = tmp_path / "node-exporter"
    textfile_dir.mkdir()

    def config(*, discovery: bool) -> Path:
        return write_config(
            tmp_path / "daemon.toml",
            model=model_path,
            port=mosquitto.port,
            device=DEVICE,
            sections={
                "homeassistant": {"discovery": discovery, "prefix": PREFIX},
                "metrics": {"port": metrics_port, "textfile_dir": textfile_dir},
                # The test model writes numbers the input does not hold: held answers
                # never become the last action this test renders.
                "catalog": {"unsupported_arguments": "allow"},
            },
        )

    return config, metrics_port, textfile_dir


def _send_the_node_red_task(probe: MqttProbe) -> dict[str, Any]:
    """The task the Node-RED flow builds, sent as its mqtt-out node sends it."""
    topic, payload, response_topic, correlation = flow_task(
        "Zone 3 soil moisture is 12 %, water it for 20 minutes."
    )
    probe.subscribe(response_topic)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation.encode()
    probe.publish(topic, payload, properties=props)
    (message,) = probe.wait_for(response_topic, timeout=120)
    assert property_of(message, "CorrelationData") == correlation.encode()
    reply: dict[str, Any] = json.loads(message.payload)
    assert reply["status"] == "ok", reply
    return reply


def _all_configs(port: int, entities: int) -> dict[str, bytes]:
    configs = _retained(port, f"{PREFIX}/#")
    return configs if len(configs) == entities else {}


def _heartbeat_with_a_task(port: int) -> bytes | None:
    beat = _retained(port, f"{BASE}/heartbeat").get(f"{BASE}/heartbeat")
    return beat if beat and json.loads(beat)["tasks"]["done"] >= 1 else None


def _check_discovery(port: int, configs: dict[str, bytes], action: str) -> None:
    """Each config passes HA's schema; its template renders the real retained state."""
    checked = {topic: ha.validate(PREFIX, topic, body) for topic, body in configs.items()}
    assert {c for c, _ in checked.values()} == {"sensor", "binary_sensor", "button"}
    assert len({json.dumps(cfg["device"], sort_keys=True) for _, cfg in checked.values()}) == 1
    buttons = {t: cfg for t, (c, cfg) in checked.items() if c == "button"}
    sensors = {t: (c, cfg) for t, (c, cfg) in checked.items() if c != "button"}
    assert {cfg["availability_topic"] for _, cfg in sensors.values()} == {f"{BASE}/status"}
    # The hold buttons: the device's own decision topics, available only while online.
    assert sorted(cfg["command_topic"] for cfg in buttons.values()) == [
        f"{BASE}/held/latest/confirm",
        f"{BASE}/held/latest/reject",
    ]
    for cfg in buttons.values():
        assert cfg["availability"][0]["topic"] == f"{BASE}/status"
    sources = {
        f"{BASE}/heartbeat": _wait(
            "a heartbeat counting the task", lambda: _heartbeat_with_a_task(port)
        ),
        f"{BASE}/last_action": _retained(port, f"{BASE}/last_action")[f"{BASE}/last_action"],
    }
    assert json.loads(sources[f"{BASE}/last_action"])["name"] == action
    states = {}
    for component, cfg in sensors.values():
        state = ha.render(cfg, "value_template", sources[cfg["state_topic"]])
        ha.check_state(component, cfg, state)
        states[cfg["unique_id"].rsplit("-", 1)[-1]] = state
    assert states["state"] == "serving"
    assert states["last_action"] == action
    assert int(states["tasks_done"]) >= 1
    assert float(states["memory_available"]) > 0


def _check_metrics(metrics_port: int, textfile: Path) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        scraped = _samples(r.read().decode())
    assert scraped[("edgeagent_tasks_total", (("error_code", ""), ("status", "ok")))] == 1
    assert scraped[("edgeagent_generated_tokens_total", ())] > 0
    assert scraped[("edgeagent_decode_seconds_total", ())] > 0
    assert scraped[("edgeagent_queue_capacity", ())] == 16
    assert scraped[("edgeagent_state", (("edgeagent_state", "serving"),))] == 1
    _wait("the textfile", textfile.exists)
    from_file = _samples(textfile.read_text())
    assert ("edgeagent_context_tokens", ()) in from_file
    assert from_file[("edgeagent_queue_capacity", ())] == 16


def _check_fleet_view(config: Path) -> None:
    fleet = subprocess.run(
        [sys.executable, "-m", "edgeagent", "status", "--fleet", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=ROOT,
    )
    (row,) = json.loads(fleet.stdout)
    assert (row["device"], row["online"], row["state"]) == (DEVICE, True, "serving")
    assert row["queue"] == "0/16"


def test_home_assistant_prometheus_and_fleet_view_with_the_real_daemon(
    configured, mosquitto, tmp_path
):
    config, metrics_port, textfile_dir = configured
    daemon = DaemonProcess(config(discovery=True), tmp_path / "daemon.log")
    probe = MqttProbe(mosquitto.port)
    try:
        daemon.start()
        daemon.wait_event("home assistant discovery")
        action = _send_the_node_red_task(probe)["output"]["action"]
        # 10 sensors (and the temperature where the board reports it), 4 for holds.
        entities = (11 if read_board().temp_c is not None else 10) + 4
        configs = _wait("every discovery config", lambda: _all_configs(mosquitto.port, entities))
        _check_discovery(mosquitto.port, configs, action)
        textfile = textfile_dir / "edgeagent.prom"
        _check_metrics(metrics_port, textfile)
        _check_fleet_view(config(discovery=True))

        # Discovery off: every config published before is emptied.
        daemon.stop()
        assert not textfile.exists()  # no stale numbers after a stop
        # The last heartbeat, before `offline`, says stopped: Home Assistant's State shows it.
        probe.subscribe(f"{BASE}/heartbeat")
        (last,) = probe.wait_for(f"{BASE}/heartbeat")
        assert (last.retain, json.loads(last.payload)["state"]) == (True, "stopped")
        probe.subscribe(f"{PREFIX}/#")
        daemon = DaemonProcess(config(discovery=False), tmp_path / "daemon-off.log")
        daemon.start()
        daemon.wait_event("home assistant discovery", removed=entities)
        # Connected before the model loads: the first heartbeat of the new run says so.
        first = probe.wait_for(f"{BASE}/heartbeat", count=2)[1]
        assert json.loads(first.payload)["state"] == "loading"
        assert _retained(mosquitto.port, f"{PREFIX}/#") == {}
        emptied = {m.topic for m in probe.messages if m.topic in configs and not m.payload}
        assert emptied == set(configs)
    finally:
        daemon.stop()
        probe.close()
