"""`edgeagent bench --fleet N`: N simulated devices against one broker (docs/scale.md).

Every device is the real daemon (service/assembly.py) with a scripted engine of
`--latency-ms`; the bench starts its own mosquitto on a free loopback port unless
`--host`/`--port` name one (then the broker restart is skipped). `--set` changes the
devices' config as a TOML value (`--set mqtt.heartbeat_s=60`), to try a fleet's settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent.errors import EdgeAgentError, ErrorCode

if TYPE_CHECKING:
    from edgeagent.fleetsim.workload import Plan


def register(bench: argparse.ArgumentParser) -> None:
    """The fleet options of `edgeagent bench` (cli/bench_command.py)."""
    group = bench.add_argument_group("fleet simulation (--fleet N; no model needed)")
    group.add_argument("--fleet", type=int, metavar="N", help="simulate N devices (docs/scale.md)")
    group.add_argument("--host", help="an existing broker (default: the bench starts mosquitto)")
    group.add_argument("--port", type=int, default=1883, help="with --host")
    group.add_argument("--latency-ms", type=float, default=100.0, help="scripted answer time")
    group.add_argument("--device-tasks", type=int, default=1, help="tasks per device")
    group.add_argument("--fleet-tasks", type=int, help="shared fleet tasks (default 2 per device)")
    group.add_argument("--rate", type=float, default=100.0, help="tasks sent per second")
    group.add_argument("--steady-s", type=float, default=20.0, help="idle window measured")
    group.add_argument("--down-s", type=float, default=2.0, help="broker down time at restart")
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="device config setting, VALUE in TOML (repeatable)",
    )


def settings(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """`mqtt.heartbeat_s=60` -> {"mqtt": {"heartbeat_s": 60}}; a VALUE that is not TOML is
    taken as a string."""
    out: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise EdgeAgentError(
                ErrorCode.INVALID_REQUEST, f"--set {assignment!r}: expected SECTION.KEY=VALUE"
            )
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def plan(args: argparse.Namespace) -> Plan:
    from edgeagent.fleetsim.workload import Plan  # noqa: PLC0415 - the CLI starts without it

    if args.fleet < 1:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "--fleet needs at least 1 device")
    return Plan(
        devices=args.fleet,
        latency_s=args.latency_ms / 1000,
        device_tasks=args.device_tasks,
        fleet_tasks=args.fleet_tasks,
        rate=args.rate,
        steady_s=args.steady_s,
        down_s=args.down_s,
        settings=settings(args.set),
    )


def run(args: argparse.Namespace) -> int:
    """Run the simulation; the table on stdout, or the JSON with `--json -`."""
    from edgeagent.fleetsim.report import render  # noqa: PLC0415 - the service, when needed
    from edgeagent.fleetsim.workload import Run  # noqa: PLC0415
    from edgeagent.service.system.logsetup import configure_logging  # noqa: PLC0415

    configure_logging("error", "console", "fleetsim", stream=sys.stderr, capture_stdlib=False)
    workdir = Path(tempfile.mkdtemp(prefix="edgeagent-fleetsim-"))
    try:
        report = asyncio.run(Run(plan(args), workdir, host=args.host, port=args.port).execute())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(report, ensure_ascii=False)
    if args.json is not None and str(args.json) != "-":
        args.json.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n" if str(args.json) == "-" else render(report))
    ok = not report.get("crashed") and report["tasks"]["unanswered"] == 0
    return 0 if ok else 1
