"""What the core commands (ask, run, submit, status, bench) share: exit codes, JSON on
stdout, a typed failure turned into its exit code, reading the input text and JSON files,
and the --config option.

One place for these so every command answers a script the same way: a result as one JSON
line, a failure as `{"error": {"code", ...}}` with exit code 2 for a bad command line or
config and 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeagent.config import DEFAULT_CONFIG_PATH
from edgeagent.errors import EdgeAgentError, ErrorCode

EXIT_OK = 0
EXIT_ERROR = 1  # the task failed (error reply, invalid output, ...)
EXIT_USAGE = 2  # bad command line or configuration


def print_json(value: Any, *, ascii_only: bool = False) -> None:
    """ascii_only: for what others wrote (a retained status, a heartbeat): every
    non-ASCII character escaped, so no C1 control or bidi override reaches the terminal."""
    sys.stdout.write(json.dumps(value, ensure_ascii=ascii_only) + "\n")
    sys.stdout.flush()


def fail(error: EdgeAgentError) -> int:
    """Print the error as JSON; its exit code."""
    print_json({"error": error.to_dict()})
    usage = error.code in (ErrorCode.CONFIG_INVALID, ErrorCode.INVALID_REQUEST)
    return EXIT_USAGE if usage else EXIT_ERROR


def read_text(value: str) -> str:
    """The input text argument: itself, or stdin for `-`."""
    return sys.stdin.read() if value == "-" else value


def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeAgentError(
            ErrorCode.INVALID_REQUEST, f"cannot read {what} {path}: {exc}"
        ) from exc


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=DEFAULT_CONFIG_PATH, help="config file (TOML)"
    )
