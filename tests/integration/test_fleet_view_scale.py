"""`edgeagent status --fleet` with 1,000 devices' retained status and heartbeat on a real
mosquitto, as an operator runs it (a subprocess): every device in one sync, in bounded
time, sorted and filtered, the JSON's shape unchanged.

A fleet of 1,000 is 2,000 retained messages the view reads at once. The view's cost is
its per-message parse (bounded: 16 KiB, 8 levels) and one row per device.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.daemon import write_config
from support.heartbeats import beat, run_fleet_view
from support.mosquitto import Mosquitto

pytestmark = [pytest.mark.mqtt]

DEVICES = 1000
# Measured: ~1.5 s on the 2-core test machine under load; the bound leaves room for CI.
WITHIN_S = 20.0


def _device(n: int) -> str:
    return f"{('gh', 'shed')[n % 2]}-{n:04d}"


def _retain_fleet(port: int) -> None:
    """1,000 devices as daemons retain them: every 10th paused, every 50th offline, every
    100th with a heartbeat 10 minutes old."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        now = time.time()
        infos = []
        for n in range(DEVICES):
            device = _device(n)
            status = "offline" if n % 50 == 0 else "online"
            body = beat(
                device,
                state="paused" if n % 10 == 0 else "serving",
                ts=round(now - (600 if n % 100 == 1 else 1), 3),
                tokens_per_s=float(n % 97),
            )
            infos.append(client.publish(f"edgeagent/{device}/status", status, qos=1, retain=True))
            infos.append(
                client.publish(
                    f"edgeagent/{device}/heartbeat", json.dumps(body), qos=1, retain=True
                )
            )
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def config(mosquitto: Mosquitto, tmp_path: Path) -> Path:
    _retain_fleet(mosquitto.port)
    return write_config(
        tmp_path / "cli.toml",
        model=tmp_path / "unused.gguf",
        port=mosquitto.port,
        sections={"mqtt": {"heartbeat_s": 60}},
    )


def _view(config: Path, *extra: str) -> tuple[list[dict], float]:
    started = time.monotonic()
    result = run_fleet_view(config, "--json", "--timeout", "30", *extra, timeout=60)
    return json.loads(result.stdout), time.monotonic() - started


def test_a_thousand_devices_in_one_sync_sorted_and_filtered(config):
    rows, seconds = _view(config)
    assert len(rows) == DEVICES
    assert [r["device"] for r in rows] == sorted(_device(n) for n in range(DEVICES))
    assert set(rows[0]) == {
        "device", "online", "state", "queue", "tokens_per_s", "budget", "memory_mb",
        "temp_c", "last_seen_s", "stale", "problem",
    }  # fmt: skip
    assert seconds < WITHIN_S, f"{DEVICES} devices took {seconds:.1f} s"

    by_state, _ = _view(config, "--sort", "state")
    states = [r["state"] for r in by_state]
    assert states[:20] == ["offline"] * 20
    assert states[20:100] == ["paused"] * 80  # every 10th, less the offline ones
    serving = by_state[100:]
    assert all(r["stale"] for r in serving[:10])  # 10 minutes old, 3 periods are 3 minutes
    assert not any(r["stale"] for r in serving[10:])

    slowest, _ = _view(config, "--sort", "tokens", "--state", "serving", "--match", "gh-*")
    assert len(slowest) == 500 - 100  # the even ids, less every 10th (paused or offline)
    assert all(r["device"].startswith("gh-") and r["state"] == "serving" for r in slowest)
    tokens = [r["tokens_per_s"] for r in slowest]
    assert tokens == sorted(tokens)

    oldest, _ = _view(config, "--sort", "age", "--state", "stale")
    assert [r["device"] for r in oldest] == [
        _device(n) for n in range(1, DEVICES, 100)
    ]  # the 10 old heartbeats, all online
