"""`edgeagent eval`: run a file of graded cases and report how often the answer is right."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `eval` subcommand to the top-level parser."""
    parser = sub.add_parser("eval", help="score answers against graded cases (accuracy, latency)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:  # noqa: ARG001 - filled in below
    return 0
