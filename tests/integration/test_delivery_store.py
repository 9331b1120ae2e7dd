"""The task store never takes the daemon down: corrupt file, read-only SD card, at start and
during service. Real mosquitto, real model, `edgeagent run` as a process.

The read-only SD card is real too: an ext4 file system on a loop device, mounted with
errors=remount-ro (as Raspberry Pi OS mounts its root), made to fail through ext4's
trigger_fs_error — the kernel then refuses every write, as it does when an SD card's
controller gives up. Those tests need root and loop devices and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, write_config
from support.mosquitto import Mosquitto, MqttProbe

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
RESULTS = "edgeagent/dev1/results"
HEARTBEAT = "edgeagent/dev1/heartbeat"
STORE = "journal.sqlite3"


class SdCard:
    """A small ext4 file system on a loop device, mounted errors=remount-ro."""

    def __init__(self, workdir: Path) -> None:
        if os.geteuid() != 0 or shutil.which("losetup") is None:
            pytest.skip("needs root and losetup")
        self.image = workdir / "sd.img"
        self.path = workdir / "sd"
        self.path.mkdir()
        with self.image.open("wb") as image:
            image.truncate(32 * 2**20)
        attach = subprocess.run(
            ["losetup", "--find", "--show", str(self.image)],
            capture_output=True,
            text=True,
            check=False,
        )
        if attach.returncode != 0:
            pytest.skip(f"no loop device: {attach.stderr.strip()}")
        self.device = attach.stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", "-F", self.device], check=True)
        subprocess.run(
            ["mount", "-o", "errors=remount-ro", self.device, str(self.path)], check=True
        )

    def fail(self) -> None:
        """The card gives up: from now on every write fails (the kernel remounts it ro)."""
        name = Path(self.device).name
        Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text("test: the SD card fails\n")

    def remove(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False)
        subprocess.run(["losetup", "--detach", self.device], check=False)


@pytest.fixture
def sd_card(tmp_path: Path) -> Iterator[SdCard]:
    card = SdCard(tmp_path)
    yield card
    card.remove()


@pytest.fixture
def probe(mosquitto: Mosquitto) -> Iterator[MqttProbe]:
    client = MqttProbe(mosquitto.port)
    client.subscribe(f"{RESULTS}/#")
    client.subscribe(HEARTBEAT)
    yield client
    client.close()


@pytest.fixture
def start_daemon(tmp_path: Path, model_path: Path, mosquitto: Mosquitto):
    started: list[DaemonProcess] = []

    def start(state_dir: Path, name: str = "dev1") -> DaemonProcess:
        cfg = write_config(
            tmp_path / f"{name}.toml",
            model=model_path,
            port=mosquitto.port,
            state_dir=state_dir,
            log_level="debug",
        )
        daemon = DaemonProcess(cfg, tmp_path / f"{name}.log")
        daemon.start()
        started.append(daemon)
        daemon.wait_event("mqtt connected")
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def ask(probe: MqttProbe, task_id: str) -> dict:
    probe.publish(
        "edgeagent/dev1/tasks", {"id": task_id, "input": "Is 20 C fine?", "schema": SCHEMA}
    )
    return json.loads(probe.wait_for(f"{RESULTS}/{task_id}", timeout=120)[-1].payload)


def heartbeat_where(probe: MqttProbe, wanted: Callable[[dict], bool], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in list(probe.messages):
            if message.topic == HEARTBEAT and wanted(beat := json.loads(message.payload)):
                return beat
        time.sleep(0.05)
    pytest.fail("no such heartbeat")


def degraded(beat: dict) -> bool:
    return beat["store"]["state"] == "degraded"


def test_a_corrupt_store_at_start_is_moved_aside(tmp_path, start_daemon, probe):
    state = tmp_path / "state"
    state.mkdir()
    (state / STORE).write_bytes(b"not a database " * 1000)
    daemon = start_daemon(state)
    moved = daemon.wait_event("task store was unreadable; moved it aside and started a fresh one")
    assert moved["level"] == "error"
    kept = Path(moved["kept"])
    assert kept.read_bytes().startswith(b"not a database")
    reply = ask(probe, "c1")
    assert reply["status"] == "ok"
    assert "exactly_once" not in reply  # the fresh store works
    assert heartbeat_where(probe, lambda b: b["tasks"]["done"] == 1)["store"] == {"state": "ok"}


def test_a_store_corrupted_during_service_degrades_then_is_replaced_at_restart(
    tmp_path, start_daemon, probe
):
    state = tmp_path / "state"
    daemon = start_daemon(state)
    assert "exactly_once" not in ask(probe, "d1")
    for name in (STORE, f"{STORE}-wal", f"{STORE}-shm"):  # under the running daemon
        path = state / name
        path.write_bytes(b"\xa5" * path.stat().st_size)
    reply = ask(probe, "d2")
    assert reply["status"] == "ok"
    assert reply["exactly_once"] is False
    beat = heartbeat_where(probe, degraded)
    assert "not a database" in beat["store"]["reason"]
    assert daemon.wait_event(
        "task store failed; answering on, exactly-once is not guaranteed until restart"
    )
    assert daemon.proc.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    revived = start_daemon(state, name="revived")
    assert revived.events("task store was unreadable; moved it aside and started a fresh one")
    assert "exactly_once" not in ask(probe, "d3")


def test_an_unwritable_state_directory_at_start_keeps_the_store_in_memory(
    sd_card, start_daemon, probe
):
    sd_card.fail()
    daemon = start_daemon(sd_card.path / "state")
    unusable = daemon.wait_event(
        "task store unusable; keeping tasks in memory, exactly-once holds until restart only"
    )
    assert unusable["level"] == "error"
    first = ask(probe, "m1")
    assert first["status"] == "ok"
    assert first["exactly_once"] is False
    assert degraded(heartbeat_where(probe, degraded))
    # Within this process a re-send is still answered from the (in-memory) store.
    again = ask_again(probe, "m1")
    assert again == first
    assert len([e for e in daemon.events("task") if e.get("task_id") == "m1"]) == 1


def ask_again(probe: MqttProbe, task_id: str) -> dict:
    probe.publish(
        "edgeagent/dev1/tasks", {"id": task_id, "input": "Is 20 C fine?", "schema": SCHEMA}
    )
    return json.loads(probe.wait_for(f"{RESULTS}/{task_id}", count=2, timeout=120)[-1].payload)


def test_an_sd_card_that_goes_read_only_during_service_degrades_the_daemon(
    sd_card, start_daemon, probe
):
    daemon = start_daemon(sd_card.path / "state")
    assert "exactly_once" not in ask(probe, "s1")
    sd_card.fail()
    reply = ask(probe, "s2")
    assert reply["status"] == "ok"
    assert reply["exactly_once"] is False
    beat = heartbeat_where(probe, degraded)
    assert "I/O" in beat["store"]["reason"] or "readonly" in beat["store"]["reason"]
    assert daemon.proc.poll() is None
    assert ask(probe, "s3")["exactly_once"] is False  # and it keeps answering
