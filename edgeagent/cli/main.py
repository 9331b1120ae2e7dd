"""Command line: `edgeagent ask | validate-config | run | submit | status | held | confirm |
reject | bench | eval | examples`.

Commands print results as JSON on stdout; failures print `{"error": {"code", ...}}` and
exit non-zero, so scripts can branch on the code.
"""

# The parser is this module's docstring plus one register() per command module, in the
# order `--help` lists them; each command's options and body live in its own module.

from __future__ import annotations

import argparse
from collections.abc import Sequence

from edgeagent import __version__
from edgeagent.cli import ask as ask_command
from edgeagent.cli import bench_command
from edgeagent.cli import eval as eval_command
from edgeagent.cli import examples as examples_command
from edgeagent.cli import holds as holds_command
from edgeagent.cli import run as run_command
from edgeagent.cli import status as status_command
from edgeagent.cli import submit as submit_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgeagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_command.register_validate_config(sub)
    ask_command.register(sub)
    run_command.register_run(sub)
    submit_command.register(sub)
    status_command.register(sub)
    holds_command.register(sub)
    bench_command.register(sub)
    eval_command.register(sub)
    examples_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
