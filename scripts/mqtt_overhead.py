#!/usr/bin/env python3
"""Measure what MQTT and the daemon add to a small task, end to end.

Starts a private mosquitto and `edgeagent run` with the given model, sends N small
tasks one after another as an MQTT v5 request/response client, and reports the
round trip (publish -> reply received) minus the engine's own time (prompt_ms +
decode_ms from the reply): that difference is the broker, JSON, queue, journal and
Python overhead.

    python scripts/mqtt_overhead.py --model PATH [--tasks 30]
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes

from edgeagent.mqtt.client import mqtt_properties, no_delay

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_configs(work: Path, port: int, model: Path, threads: int) -> None:
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


def main() -> None:  # noqa: PLR0915 - one linear measurement, easier to read whole
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    port = free_port()
    write_configs(work, port, args.model, args.threads)
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")],
        stderr=subprocess.DEVNULL,
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edgeagent", "run", "--config", str(work / "config.toml")],
        stderr=(work / "daemon.log").open("wb"),
    )
    replies: queue.Queue[tuple[float, dict[str, object]]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_socket_open = no_delay  # as the daemon does; else Nagle adds ~40 ms
    client.on_message = lambda _c, _u, m: replies.put((time.perf_counter(), json.loads(m.payload)))
    try:
        for _ in range(100):
            try:
                client.connect("127.0.0.1", port)
                break
            except OSError:
                time.sleep(0.1)
        client.loop_start()
        reply_topic = f"bench/{uuid.uuid4().hex}"
        client.subscribe(reply_topic, qos=1)
        for _ in range(600):
            if b"mqtt connected" in (work / "daemon.log").read_bytes():
                break
            time.sleep(0.1)
        overheads, rtts, engine = [], [], []
        for i in range(args.tasks + 2):
            props = mqtt_properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = str(i).encode()
            task_id = f"o{i}-{uuid.uuid4().hex[:6]}"
            body = {"id": task_id, "input": "Is 20 C fine for basil?", "schema": SCHEMA}
            sent = time.perf_counter()
            client.publish("edgeagent/bench/tasks", json.dumps(body), qos=1, properties=props)
            received, reply = replies.get(timeout=120)
            timing = reply["timing"]
            assert isinstance(timing, dict)
            if i < 2:
                continue  # warm-up: first prompt, grammar compilation
            rtt = (received - sent) * 1000
            own = float(timing["prompt_ms"]) + float(timing["decode_ms"])
            rtts.append(rtt)
            engine.append(own)
            overheads.append(rtt - own)
        result = {
            "tasks": args.tasks,
            "rtt_ms_median": round(statistics.median(rtts), 1),
            "engine_ms_median": round(statistics.median(engine), 1),
            "overhead_ms_median": round(statistics.median(overheads), 1),
            "overhead_ms_p90": round(sorted(overheads)[int(0.9 * len(overheads))], 1),
        }
        print(json.dumps(result))
    finally:
        client.disconnect()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
