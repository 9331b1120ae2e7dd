"""A real mosquitto broker and an MQTT probe client for tests."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Listening ports come from below the kernel's ephemeral range (net.ipv4.ip_local_port_range,
# 32768-60999 by default): a port the kernel hands out for bind(0) is also one it hands out
# to the next outgoing connection, so with many clients connecting (two pytest sessions, a
# simulated fleet) a broker started a moment later found it taken ("Address already in use").
_LISTEN_PORTS = range(20000, 32768)
_random = random.SystemRandom()


def free_port(address: str = "127.0.0.1") -> int:
    """A port on `address` that nothing listens on or connects from now, chosen at random
    below the ephemeral range (random, so two sessions rarely pick the same one)."""
    for _ in range(200):
        port = _random.choice(_LISTEN_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind((address, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # all tried were taken: whatever the kernel gives
        sock.bind((address, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def property_of(message: mqtt.MQTTMessage, name: str) -> Any:
    """A v5 property of a received message (paho sets them as attributes), or None."""
    return getattr(message.properties, name, None)


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


class MqttProbe:
    """A test-side MQTT client that records what arrives on its subscriptions.

    Its session is persistent (v5: no clean start, 300 s expiry; v3.1.1: clean session
    off), so replies published while the broker restarts still reach it.
    """

    def __init__(
        self,
        port: int,
        *,
        protocol: int = mqtt.MQTTv5,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        v5 = protocol == mqtt.MQTTv5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTProtocolVersion(protocol),
            clean_session=None if v5 else False,
        )
        self.client.on_message = lambda _c, _u, msg: self.messages.append(msg)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if username is not None:
            self.client.username_pw_set(username, password)
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
