"""`edgeagent bench`'s options and which bench runs: the model figures (cli/bench.py,
with --model) or the fleet simulation (cli/bench_fleet.py, with --fleet N).

Apart from cli/bench.py so that building the parser loads neither llama.cpp nor the
benches themselves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeagent.cli import bench_fleet
from edgeagent.cli.command_io import fail
from edgeagent.errors import EdgeAgentError, ErrorCode


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bench` subcommand to the top-level parser."""
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


def cmd_bench(args: argparse.Namespace) -> int:
    if args.fleet is not None:
        try:
            return bench_fleet.run(args)  # no llama.cpp needed
        except EdgeAgentError as exc:
            return fail(exc)
    if not args.model:
        return fail(EdgeAgentError(ErrorCode.INVALID_REQUEST, "bench needs --model (or --fleet N)"))
    from edgeagent.cli.bench import run  # noqa: PLC0415

    return run(args)
