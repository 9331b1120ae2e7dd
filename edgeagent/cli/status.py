"""`edgeagent status`: one device's status and heartbeat (cli/device_calls.py), or with --fleet
one row per device (cli/fleet.py); exit 0 when the device is online."""

from __future__ import annotations

import argparse

from edgeagent.cli.command_io import EXIT_ERROR, EXIT_OK, add_config, fail, print_json
from edgeagent.config import load_config
from edgeagent.errors import EdgeAgentError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `status` subcommand to the top-level parser."""
    status = sub.add_parser("status", help="show a device's (or the fleet's) status and heartbeat")
    add_config(status)
    which = status.add_mutually_exclusive_group()
    which.add_argument("--device", help="device id (default: the config's device)")
    which.add_argument("--fleet", action="store_true", help="one row per device under the prefix")
    status.add_argument("--json", action="store_true", help="--fleet: JSON instead of a table")
    status.add_argument("--watch", action="store_true", help="--fleet: update until Ctrl-C")
    status.add_argument(
        "--sort",
        choices=("device", "state", "tokens", "age"),
        default="device",
        help="--fleet: row order (state: problems first; age: longest silent first)",
    )
    status.add_argument(
        "--state",
        action="append",
        metavar="STATE",
        help="--fleet: only rows in this state (serving, paused, offline, stale, ...; repeatable)",
    )
    status.add_argument("--match", metavar="GLOB", help="--fleet: only device ids matching GLOB")
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from edgeagent.cli import device_calls  # noqa: PLC0415

    try:
        cfg = load_config(args.config)
        if args.fleet:
            from edgeagent.cli import fleet  # noqa: PLC0415

            selection = fleet.Selection(
                sort=args.sort, states=frozenset(args.state or ()), match=args.match
            )
            return fleet.run(
                cfg,
                as_json=args.json,
                watch=args.watch,
                timeout=args.timeout,
                selection=selection,
            )
        result = device_calls.status(cfg, device=args.device, timeout=args.timeout)
    except EdgeAgentError as exc:
        return fail(exc)
    print_json(result, ascii_only=True)  # the device's retained messages, as they are
    return EXIT_OK if result["status"] == "online" else EXIT_ERROR
