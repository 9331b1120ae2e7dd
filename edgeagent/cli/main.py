"""Command line: `edgeagent ask | validate-config | run | submit | status | held | confirm |
reject | bench | eval | examples`.

Commands print results as JSON on stdout; failures print `{"error": {"code", ...}}` and
exit non-zero, so scripts can branch on the code.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeagent import __version__
from edgeagent.cli import bench_fleet
from edgeagent.cli import eval as eval_command
from edgeagent.cli import examples as examples_command
from edgeagent.cli import holds as holds_command
from edgeagent.config import DEFAULT_CONFIG_PATH, load_config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.overflow import OverflowPolicy

EXIT_OK = 0
EXIT_ERROR = 1  # the task failed (error reply, invalid output, ...)
EXIT_USAGE = 2  # bad command line or configuration


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _fail(error: EdgeAgentError) -> int:
    _print_json({"error": error.to_dict()})
    usage = error.code in (ErrorCode.CONFIG_INVALID, ErrorCode.INVALID_REQUEST)
    return EXIT_USAGE if usage else EXIT_ERROR


def _read_text(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeAgentError(
            ErrorCode.INVALID_REQUEST, f"cannot read {what} {path}: {exc}"
        ) from exc


# -- validate-config ----------------------------------------------------------


def cmd_validate_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.path)
    except EdgeAgentError as exc:
        sys.stderr.write(exc.message + "\n")
        return EXIT_USAGE
    sys.stderr.write(
        f"{args.path}: OK (device {cfg.device.id}, model {cfg.model.path}, "
        f"{len(cfg.actions)} action(s))\n"
    )
    return EXIT_OK


# -- ask -----------------------------------------------------------------------


def cmd_ask(args: argparse.Namespace) -> int:
    # Imported here so `validate-config` works without loading llama.cpp.
    from edgeagent.inference.contract import action_spec, schema_spec, select_actions  # noqa: PLC0415
    from edgeagent.inference.engine import Engine  # noqa: PLC0415
    from edgeagent.inference.task import Task  # noqa: PLC0415

    try:
        cfg = load_config(args.config)
        if args.schema is not None:
            spec = schema_spec(_read_json_file(args.schema, "schema"))
        else:
            names = None if args.catalog else args.action
            spec = action_spec(select_actions(cfg.actions, names), reason=cfg.model.reason)
        text = _read_text(args.text)
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
        return _fail(exc)
    if args.verbose:
        _print_json(
            {
                "output": answer.output,
                "usage": answer.usage(),
                "timing": answer.timing(),
                "context": answer.context(),
            }
        )
    else:
        _print_json(answer.output)
    return EXIT_OK


# -- run / submit / status ------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from edgeagent.service.assembly import build_daemon  # noqa: PLC0415
    from edgeagent.service.system.logsetup import configure_logging  # noqa: PLC0415

    try:
        cfg = load_config(args.config)
    except EdgeAgentError as exc:
        sys.stderr.write(exc.message + "\n")
        return EXIT_USAGE
    configure_logging(cfg.log.level, cfg.log.format, cfg.device.id)
    # When the watchdog kills us with SIGABRT, every thread's stack goes to the journal.
    faulthandler.enable()
    daemon = build_daemon(cfg, config_path=args.config)
    try:
        code = asyncio.run(daemon.run())
    except EdgeAgentError as exc:
        sys.stderr.write(f"edgeagent: {exc}\n")
        return EXIT_ERROR
    if daemon.abandoned_inference:
        # Normal interpreter exit would join the stuck inference thread forever.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _task_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"input": _read_text(args.text)}
    if args.schema is not None:
        request["schema"] = _read_json_file(args.schema, "schema")
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
    from edgeagent.cli import client  # noqa: PLC0415

    try:
        cfg = load_config(args.config)
        device = None if args.fleet else (args.device or cfg.device.id)
        reply = client.submit(cfg, _task_request(args), device=device, timeout=args.timeout)
    except EdgeAgentError as exc:
        return _fail(exc)
    _print_json(reply)
    return EXIT_OK if reply.get("status") == "ok" else EXIT_ERROR


def cmd_status(args: argparse.Namespace) -> int:
    from edgeagent.cli import client  # noqa: PLC0415

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
        result = client.status(cfg, device=args.device, timeout=args.timeout)
    except EdgeAgentError as exc:
        return _fail(exc)
    _print_json(result)
    return EXIT_OK if result["status"] == "online" else EXIT_ERROR


def cmd_bench(args: argparse.Namespace) -> int:
    if args.fleet is not None:
        from edgeagent.cli import bench_fleet  # noqa: PLC0415 - no llama.cpp needed

        try:
            return bench_fleet.run(args)
        except EdgeAgentError as exc:
            return _fail(exc)
    if not args.model:
        return _fail(
            EdgeAgentError(ErrorCode.INVALID_REQUEST, "bench needs --model (or --fleet N)")
        )
    from edgeagent.cli.bench import run  # noqa: PLC0415

    return run(args)


# -- wiring --------------------------------------------------------------------


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=DEFAULT_CONFIG_PATH, help="config file (TOML)"
    )


def _add_status(sub: Any) -> None:
    status = sub.add_parser("status", help="show a device's (or the fleet's) status and heartbeat")
    _add_config(status)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgeagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate-config", help="check a config file; exit 0 when valid")
    validate.add_argument("path", type=Path)
    validate.set_defaults(func=cmd_validate_config)

    ask = sub.add_parser("ask", help="answer one task with the local model and print the JSON")
    _add_config(ask)
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

    run = sub.add_parser("run", help="run the MQTT daemon (what systemd starts)")
    _add_config(run)
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser("submit", help="send a task over MQTT and print the reply")
    _add_config(submit)
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

    _add_status(sub)
    holds_command.register(sub)

    bench = sub.add_parser("bench", help="measure speed figures, each beside its baseline")
    bench.add_argument(
        "--model", type=Path, action="append", help="GGUF (repeatable; not with --fleet)"
    )
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--max-tokens", type=int, default=160)
    bench.add_argument("--no-gbnf", action="store_true", help="skip the llama.cpp GBNF comparison")
    bench.add_argument("--json", type=Path, help="also write the results as JSON here")
    bench.add_argument(
        "--throughput-only",
        action="store_true",
        help="skip constrained vs unconstrained decode speed (throughput, end to end, memory)",
    )
    bench.add_argument(
        "--mqtt", action="store_true", help="also the overhead over MQTT (needs mosquitto)"
    )
    bench_fleet.register(bench)
    bench.set_defaults(func=cmd_bench)

    eval_command.register(sub)
    examples_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
