"""Reload and start with a bad config: `edgeagent run` as a process, real sd_notify datagrams.

A config error at reload keeps the running config and tells systemd READY=1 again (else
the unit stays "reloading"); the same file at start is a configuration error, exit 2,
which the unit's RestartPreventExitStatus=2 does not restart into.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.daemon import EDGEAGENT, ROOT, DaemonProcess, write_config

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

# Latin-1, not UTF-8: "é" as the single byte 0xE9.
NOT_UTF8 = b'[device]\nid = "caf\xe9"\n'
BAD_CONFIGS = {
    "not UTF-8": NOT_UTF8,
    "TOML syntax": b"[device\n",
    "invalid setting": b'[queue]\nsize = "many"\n',
}


class NotifySocket:
    """The datagram socket systemd listens on ($NOTIFY_SOCKET), bound by the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 60) -> str:
        """The next datagram (after those already read) that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                datagram = self.sock.recv(65536).decode()
            except TimeoutError:
                break
            self.received.append(datagram)
            if datagram.startswith(prefix):
                return datagram
        pytest.fail(f"no {prefix!r} datagram within {timeout} s; got {self.received}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_a_bad_config_at_reload_keeps_the_old_one_and_sends_ready_again(
    tmp_path, model_path, mosquitto, notify_socket, probe
):
    config = write_config(tmp_path / "dev1.toml", model=model_path, port=mosquitto.port)
    good = config.read_bytes()
    daemon = DaemonProcess(
        config, tmp_path / "dev1.log", env={"NOTIFY_SOCKET": str(notify_socket.path)}
    )
    try:
        daemon.start()
        notify_socket.wait_for("READY=1", timeout=120)
        daemon.wait_event("mqtt connected")
        for what, content in BAD_CONFIGS.items():
            config.write_bytes(content)
            daemon.signal(signal.SIGHUP)
            assert notify_socket.wait_for("RELOADING=1").startswith("RELOADING=1\nMONOTONIC_USEC=")
            ready = notify_socket.wait_for("READY=1", timeout=10)
            assert "STATUS=serving" in ready, (what, ready)
        failures = daemon.events("reload failed; keeping the running config")
        assert len(failures) == len(BAD_CONFIGS)
        assert "not UTF-8" in failures[0]["error"]
        # Still serving with the old config (device dev1, its catalog).
        config.write_bytes(good)
        probe.subscribe("edgeagent/dev1/results/#")
        probe.publish("edgeagent/dev1/tasks", {"id": "r1", "input": "x", "action": "notify"})
        answer = json.loads(probe.wait_for("edgeagent/dev1/results/r1", timeout=120)[0].payload)
        assert answer["status"] == "ok"
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()


@pytest.mark.parametrize("what", list(BAD_CONFIGS))
def test_run_with_a_bad_config_exits_2(tmp_path, what):
    config = tmp_path / "config.toml"
    config.write_bytes(BAD_CONFIGS[what])
    done = subprocess.run(
        [*EDGEAGENT, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert str(config) in done.stderr
    assert "Traceback" not in done.stderr
