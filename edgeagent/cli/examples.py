"""`edgeagent examples list|export|clear`: the learned examples of a device.

    edgeagent examples list   --config /etc/edgeagent/config.toml
    edgeagent examples export --config ... [--output learned.jsonl]
    edgeagent examples clear  --config ...

Reads `<[state] dir>/learned.sqlite3` (service/learning/store.py), also while the
daemon runs (SQLite WAL; a write waits at most the busy timeout). `list` and `export`
open the file read-only and never create it; `export` writes JSONL in the case format
`edgeagent eval` reads (service/learning/export.py); `clear` forgets every example (the
daemon shows none from its next task on).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from edgeagent.config import DEFAULT_CONFIG_PATH, load_config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.service.learning.export import case_lines
from edgeagent.service.learning.store import LEARNED_FILE, LearnedStore

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `examples` subcommand to the top-level parser."""
    p = sub.add_parser("examples", help="list, export or clear the learned examples")
    p.add_argument("what", choices=["list", "export", "clear"])
    p.add_argument(
        "--config", "-c", type=Path, default=DEFAULT_CONFIG_PATH, help="config file (TOML)"
    )
    p.add_argument("--output", "-o", type=Path, help="export: write here instead of stdout")
    p.set_defaults(func=run)


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except EdgeAgentError as exc:
        _print({"error": exc.to_dict()})
        return EXIT_USAGE
    path = cfg.state.dir / LEARNED_FILE
    limit = cfg.catalog.max_learned_examples
    try:
        if args.what == "clear":
            if not path.exists():
                _print({"cleared": 0, "path": str(path)})
                return EXIT_OK
            store = LearnedStore(path, max_rows=limit)
            try:
                _print({"cleared": store.clear(), "path": str(path)})
            finally:
                store.close()
            return EXIT_OK
        rows = []
        if path.exists():
            store = LearnedStore(path, max_rows=limit, read_only=True)
            try:
                rows = store.recent()
            finally:
                store.close()
    except (sqlite3.Error, OSError) as exc:
        error = EdgeAgentError(ErrorCode.INTERNAL, f"cannot use {path}: {exc}")
        _print({"error": error.to_dict()})
        return EXIT_ERROR
    if args.what == "list":
        _print(
            {
                "path": str(path),
                "learn": cfg.catalog.learn,
                "count": len(rows),
                "max": limit,
                "examples": [row.to_json() for row in rows],
            }
        )
        return EXIT_OK
    lines = list(case_lines(rows))
    if args.output is None:
        sys.stdout.writelines(lines)
    else:
        args.output.write_text("".join(lines), encoding="utf-8")
        sys.stderr.write(f"{len(lines)} example(s) written to {args.output}\n")
    return EXIT_OK
