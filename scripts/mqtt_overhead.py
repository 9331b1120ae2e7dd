#!/usr/bin/env python3
"""Measure what MQTT and the daemon add to a small task, end to end.

Starts a private mosquitto and `edgeagent run` with the given model, sends N small
tasks one after another as an MQTT v5 request/response client, and reports the
round trip (publish -> reply received) minus the engine's own time (prompt_ms +
decode_ms from the reply): that difference is the broker, JSON, queue, journal and
Python overhead. `edgeagent bench --mqtt` measures the same (edgeagent/cli/bench_mqtt.py).

    python scripts/mqtt_overhead.py --model PATH [--tasks 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeagent.cli.bench_mqtt import measure, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rtts, engine = measure(args.model, tasks=args.tasks, threads=args.threads)
    sys.stdout.write(json.dumps(summary(rtts, engine)) + "\n")


if __name__ == "__main__":
    main()
