"""`edgeagent submit`: the command line of a task sent over MQTT (the client is
cli/device_calls.py); prints the reply, exit 0 when it is ok and 1 when it is an error reply."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeagent.cli.command_io import (
    EXIT_ERROR,
    EXIT_OK,
    add_config,
    fail,
    print_json,
    read_json_file,
    read_text,
)
from edgeagent.config import load_config
from edgeagent.errors import EdgeAgentError
from edgeagent.protocol.overflow_policy import OverflowPolicy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `submit` subcommand to the top-level parser."""
    submit = sub.add_parser("submit", help="send a task over MQTT and print the reply")
    add_config(submit)
    target = submit.add_mutually_exclusive_group()
    target.add_argument("--device", help="device id (default: the config's device)")
    target.add_argument("--fleet", action="store_true", help="send to the fleet topic")
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", type=Path, help="JSON Schema file the answer must follow")
    what.add_argument("--action", action="append", metavar="NAME", help="allowed action")
    what.add_argument("--catalog", action="store_true", help="allow every catalog action")
    submit.add_argument("--max-tokens", type=int, default=None)
    submit.add_argument("--id", help="task id (default: random)")
    submit.add_argument("--overflow", type=OverflowPolicy, choices=list(OverflowPolicy))
    submit.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    submit.add_argument("text", help="the input text, or - to read stdin")
    submit.set_defaults(func=cmd_submit)


def task_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request body (docs/protocol.md) the command line describes."""
    request: dict[str, Any] = {"input": read_text(args.text)}
    if args.schema is not None:
        request["schema"] = read_json_file(args.schema, "schema")
    elif args.action:
        request["actions"] = args.action
    if args.max_tokens:
        request["max_tokens"] = args.max_tokens
    if args.id:
        request["id"] = args.id
    if args.overflow:
        request["overflow"] = args.overflow
    return request


def cmd_submit(args: argparse.Namespace) -> int:
    from edgeagent.cli import device_calls  # noqa: PLC0415

    try:
        cfg = load_config(args.config)
        device = None if args.fleet else (args.device or cfg.device.id)
        reply = device_calls.submit(cfg, task_request(args), device=device, timeout=args.timeout)
    except EdgeAgentError as exc:
        return fail(exc)
    print_json(reply)
    return EXIT_OK if reply.get("status") == "ok" else EXIT_ERROR
