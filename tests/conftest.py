"""Shared fixtures: the real test model, a real mosquitto, config files, daemons.

Nothing here fakes a broker or a model: `mosquitto` starts the real broker on a free
loopback port, `model_path` is the real SmolLM2 GGUF (fetched and sha256-checked by
scripts/fetch_model.py when EDGEAGENT_TEST_MODEL is not set).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.config import ActionConfig

ROOT = Path(__file__).resolve().parent.parent
EDGEAGENT = [sys.executable, "-m", "edgeagent"]

CATALOG_TOML = """
[[actions]]
name = "set_irrigation"
description = "Open the irrigation valve of a zone for some minutes."
dispatch = true
schema = { type = "object", properties = { zone = { type = "integer", minimum = 1, maximum = 8 }, minutes = { type = "integer", minimum = 0, maximum = 120 } }, required = ["zone", "minutes"] }

[[actions]]
name = "notify"
description = "Send a short message to the operator."
schema = { type = "object", properties = { severity = { enum = ["info", "warning", "critical"] }, message = { type = "string", maxLength = 80 } }, required = ["severity", "message"] }

[[actions]]
name = "no_action"
description = "Nothing needs to be done."
schema = { type = "object", properties = {} }
"""


# A small catalog for engine and schema tests (the daemon tests use CATALOG_TOML).
GREENHOUSE_ACTIONS = [
    ActionConfig(
        name="open_vent",
        description="Open the greenhouse roof vent by a percentage.",
        schema={
            "type": "object",
            "properties": {"percent": {"type": "integer", "minimum": 0, "maximum": 100}},
            "required": ["percent"],
        },
    ),
    ActionConfig(
        name="notify",
        description="Send a short message to the operator.",
        schema={
            "type": "object",
            "properties": {
                "severity": {"enum": ["info", "warning", "critical"]},
                "message": {"type": "string", "minLength": 1, "maxLength": 60},
            },
            "required": ["severity", "message"],
        },
    ),
    ActionConfig(
        name="start_heater",
        description="Switch the heater on.",
        schema={"type": "object", "properties": {}},
    ),
]


@pytest.fixture(scope="session")
def model_path() -> Path:
    env = os.environ.get("EDGEAGENT_TEST_MODEL")
    if env:
        return Path(env)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_model.py"), "smollm2"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """A real mosquitto on address:port, restartable on the same port.

    `users` turns on password authentication (name -> password, via mosquitto_passwd);
    `listener_options` are appended to the listener (TLS files, require_certificate);
    `persistence` keeps sessions and queued messages across restarts.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        address: str = "127.0.0.1",
        users: dict[str, str] | None = None,
        listener_options: str = "",
        persistence: bool = True,
    ) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            pytest.fail("mosquitto is not installed (make test installs it)")
        self.address = address
        self.port = free_port(address)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        auth = "allow_anonymous true\n"
        if users:
            passwd = workdir / "passwd"
            for index, (name, password) in enumerate(users.items()):
                create = ["-c"] if index == 0 else []
                subprocess.run(
                    ["mosquitto_passwd", "-b", *create, str(passwd), name, password], check=True
                )
            passwd.chmod(0o600)
            auth = f"allow_anonymous false\npassword_file {passwd}\n"
        keep = f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} {address}\n{listener_options}{auth}"
            + (keep if persistence else "persistence false\n")
            + "max_queued_messages 1000\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "log_type all\n"
            # As root, mosquitto would drop to user "mosquitto", which cannot write here.
             + ("user root\n" if os.geteuid() == 0 else ""),
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.address, self.port)) == 0:
                    return
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the persistence file
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Mosquitto(workdir)
    broker.start()
    yield broker
    broker.stop()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))


def write_config(
    path: Path,
    *,
    model: Path,
    port: int = 1883,
    device: str = "dev1",
    state_dir: Path | None = None,
    catalog: bool = True,
    n_ctx: int = 2048,
    log_level: str = "info",
    sections: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A config for tests; `sections` adds or overrides keys, e.g. {"queue": {"size": 1}}."""
    data: dict[str, dict[str, Any]] = {
        "device": {"id": device},
        # One thread: tests often run several daemons on two cores, and llama.cpp's
        # spinning threads collapse when oversubscribed.
        "model": {"path": model, "threads": 1, "n_ctx": n_ctx, "max_tokens": 256},
        "mqtt": {"host": "127.0.0.1", "port": port, "heartbeat_s": 1},
        "state": {"dir": state_dir or path.parent / f"state-{device}"},
        "log": {"format": "json", "level": log_level},
    }
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines) + (CATALOG_TOML if catalog else ""), encoding="utf-8")
    return path


class DaemonProcess:
    """`edgeagent run` as a real child process (so SIGKILL/SIGTERM are real)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*EDGEAGENT, "run", "--config", str(self.config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )

    def wait_event(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """Wait for a JSON log line with this event and these field values."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.events(event):
                if all(record.get(k) == v for k, v in fields.items()):
                    return record
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        pytest.fail(f"no {event!r} {fields} in the daemon log within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )

    def events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == event:
                found.append(record)
        return found

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class MqttProbe:
    """A test-side MQTT client that records what arrives on its subscriptions.

    Its session is persistent (v5: no clean start, 300 s expiry; v3.1.1: clean session
    off), so replies published while the broker restarts still reach it.
    """

    def __init__(self, port: int, *, protocol: int = mqtt.MQTTv5) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        v5 = protocol == mqtt.MQTTv5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
            clean_session=None if v5 else False,
        )
        self.client.on_message = lambda _c, _u, msg: self.messages.append(msg)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
        self.client.connect(
            "127.0.0.1",
            port,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        result, _ = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)

    def publish(self, topic: str, payload: Any, **kwargs: Any) -> None:
        body = (
            payload
            if isinstance(payload, (str, bytes))
            else json.dumps(payload, ensure_ascii=False)
        )
        self.client.publish(topic, body, qos=1, **kwargs).wait_for_publish(5)

    def wait_for(self, topic: str, count: int = 1, timeout: float = 60) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]
            if len(got) >= count:
                return got
            time.sleep(0.05)
        seen = [(m.topic, m.payload[:200]) for m in self.messages]
        pytest.fail(f"{count} message(s) on {topic} not seen within {timeout} s; saw {seen}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
