"""`edgeagent ask`: answer one task with the local model, no broker, and print the JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeagent.cli.command_io import (
    EXIT_OK,
    add_config,
    fail,
    print_json,
    read_json_file,
    read_text,
)
from edgeagent.config import load_config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.overflow_policy import OverflowPolicy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `ask` subcommand to the top-level parser."""
    ask = sub.add_parser("ask", help="answer one task with the local model and print the JSON")
    add_config(ask)
    what = ask.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", type=Path, help="JSON Schema file the answer must follow")
    what.add_argument(
        "--action", action="append", help="allowed catalog action (repeatable)", metavar="NAME"
    )
    what.add_argument("--catalog", action="store_true", help="allow every catalog action")
    ask.add_argument("--max-tokens", type=int, default=None, help="answer length limit")
    ask.add_argument(
        "--overflow",
        type=OverflowPolicy,
        choices=list(OverflowPolicy),
        help="when the input does not fit the context (default: [memory] overflow)",
    )
    ask.add_argument("--verbose", "-v", action="store_true", help="also print usage and timing")
    ask.add_argument("text", help="the input text, or - to read stdin")
    ask.set_defaults(func=cmd_ask)


def cmd_ask(args: argparse.Namespace) -> int:
    # Imported here so `validate-config` works without loading llama.cpp.
    from edgeagent.inference.contract import action_spec, schema_spec, select_actions  # noqa: PLC0415
    from edgeagent.inference.engine import Engine  # noqa: PLC0415
    from edgeagent.inference.task import Task  # noqa: PLC0415

    try:
        cfg = load_config(args.config)
        if args.schema is not None:
            spec = schema_spec(read_json_file(args.schema, "schema"))
        else:
            names = None if args.catalog else args.action
            spec = action_spec(select_actions(cfg.actions, names), reason=cfg.model.reason)
        text = read_text(args.text)
        if not text.strip():
            raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "the input text is empty")
        engine = Engine(cfg.model)
        try:
            engine.load()
            answer = engine.answer_blocking(
                Task(
                    content=text,
                    spec=spec,
                    max_tokens=args.max_tokens or cfg.model.max_tokens,
                    overflow=args.overflow or cfg.memory.overflow,
                )
            )
        finally:
            engine.close()
    except EdgeAgentError as exc:
        return fail(exc)
    if args.verbose:
        print_json(
            {
                "output": answer.output,
                "usage": answer.usage(),
                "timing": answer.timing(),
                "context": answer.context(),
            }
        )
    else:
        print_json(answer.output)
    return EXIT_OK
