"""`edgeagent bench --mqtt`: what MQTT and the daemon add to a task, end to end.

Starts a private mosquitto and `edgeagent run` with the given model, sends small tasks
one after another as an MQTT v5 request/response client, and takes the round trip
(publish -> reply received) minus the engine's own time (prompt_ms + decode_ms from
the reply): that difference is the broker, JSON, queue, journal and Python overhead.
scripts/mqtt_overhead.py runs it alone.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes

from edgeagent.cli.bench_report import figure
from edgeagent.mqtt.client import mqtt_properties, no_delay

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
WARM_UP = 2  # first prompt, grammar compilation
OVERHEAD_TARGET = 0.03  # of the engine's own time


def mosquitto() -> str | None:
    """The mosquitto binary, if there is one (`--mqtt` is skipped without it)."""
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").is_file():
        found = "/usr/sbin/mosquitto"
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_configs(work: Path, port: int, model: Path, threads: int) -> None:
    (work / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        + ("user root\n" if os.geteuid() == 0 else ""),
        encoding="utf-8",
    )
    (work / "config.toml").write_text(
        f'[device]\nid = "bench"\n[model]\npath = "{model}"\nthreads = {threads}\n'
        f'n_ctx = 2048\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[state]\ndir = "{work}/state"\n[log]\nformat = "json"\n',
        encoding="utf-8",
    )


def _wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)


def _connect(client: mqtt.Client, port: int) -> None:
    for _ in range(100):
        try:
            client.connect("127.0.0.1", port)
        except OSError:
            time.sleep(0.1)
        else:
            return


def measure(
    model: Path, *, tasks: int, threads: int, tick: Callable[[], None] | None = None
) -> tuple[list[float], list[float]]:
    """Round trip and engine time (ms) of each of `tasks` small tasks after the warm-up."""
    work = Path(tempfile.mkdtemp())
    port = _free_port()
    _write_configs(work, port, model, threads)
    broker = subprocess.Popen(
        [mosquitto() or "mosquitto", "-c", str(work / "mosquitto.conf")],
        stderr=subprocess.DEVNULL,
    )
    log = work / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edgeagent", "run", "--config", str(work / "config.toml")],
        stderr=log.open("wb"),
    )
    replies: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_socket_open = no_delay  # as the daemon does; else Nagle adds ~40 ms
    client.on_message = lambda _c, _u, m: replies.put((time.perf_counter(), json.loads(m.payload)))
    rtts: list[float] = []
    engine: list[float] = []
    try:
        _connect(client, port)
        client.loop_start()
        reply_topic = f"replies/bench-{uuid.uuid4().hex}"  # the default allowed prefix
        client.subscribe(reply_topic, qos=1)
        _wait_for(lambda: b"mqtt connected" in log.read_bytes(), 120)
        for i in range(tasks + WARM_UP):
            props = mqtt_properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = str(i).encode()
            task_id = f"o{i}-{uuid.uuid4().hex[:6]}"
            body = {"id": task_id, "input": "Is 20 C fine for basil?", "schema": SCHEMA}
            sent = time.perf_counter()
            client.publish("edgeagent/bench/tasks", json.dumps(body), qos=1, properties=props)
            received, reply = replies.get(timeout=300)
            timing = reply["timing"]
            if i < WARM_UP:
                continue
            rtts.append((received - sent) * 1000)
            engine.append(float(timing["prompt_ms"]) + float(timing["decode_ms"]))
            if tick is not None:
                tick()
    finally:
        client.disconnect()
        client.loop_stop()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return rtts, engine


def summary(rtts: list[float], engine: list[float]) -> dict[str, Any]:
    overheads = sorted(r - e for r, e in zip(rtts, engine, strict=True))
    return {
        "tasks": len(rtts),
        "rtt_ms_median": round(statistics.median(rtts), 1),
        "engine_ms_median": round(statistics.median(engine), 1),
        "overhead_ms_median": round(statistics.median(overheads), 1),
        "overhead_ms_p90": round(overheads[int(0.9 * len(overheads))], 1),
    }


def mqtt_figure(
    model: Path, *, tasks: int, threads: int, tick: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Round trip over MQTT beside the engine's own time, per task (ratio - 1 is the
    daemon's overhead beyond its engine time)."""
    rtts, engine = measure(model, tasks=tasks, threads=threads, tick=tick)
    stats = summary(rtts, engine)
    share = stats["overhead_ms_median"] / stats["engine_ms_median"]
    return figure(
        "task round trip over MQTT (one-field answer, one task at a time)",
        "ms",
        rtts,
        "the engine's own time (prompt + decode)",
        engine,
        target="≤ 1.03x (overhead ≤ 3 %)",
        met=share <= OVERHEAD_TARGET,
        notes={
            "overhead median (ms)": stats["overhead_ms_median"],
            "overhead p90 (ms)": stats["overhead_ms_p90"],
            "overhead / engine time": f"{100 * share:.1f} %",
        },
    )
