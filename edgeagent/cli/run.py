"""`edgeagent run`, the MQTT daemon systemd starts, and `edgeagent validate-config`, the
check of its config file (Ansible's template task runs it before installing a config).

Both report a bad config as one line on stderr and exit 2, not as JSON: their readers
are the journal and the operator, not a script.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
from pathlib import Path

from edgeagent.cli.command_io import EXIT_ERROR, EXIT_OK, EXIT_USAGE, add_config
from edgeagent.config import Config, load_config
from edgeagent.errors import EdgeAgentError


def register_validate_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `validate-config` subcommand to the top-level parser."""
    validate = sub.add_parser("validate-config", help="check a config file; exit 0 when valid")
    validate.add_argument("path", type=Path)
    validate.set_defaults(func=cmd_validate_config)


def register_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` subcommand to the top-level parser."""
    run = sub.add_parser("run", help="run the MQTT daemon (what systemd starts)")
    add_config(run)
    run.set_defaults(func=cmd_run)


def _config_or_none(path: Path) -> Config | None:
    """The config, or None once stderr has been told why (the caller exits 2)."""
    try:
        return load_config(path)
    except EdgeAgentError as exc:
        sys.stderr.write(exc.message + "\n")
        return None


def cmd_validate_config(args: argparse.Namespace) -> int:
    cfg = _config_or_none(args.path)
    if cfg is None:
        return EXIT_USAGE
    sys.stderr.write(
        f"{args.path}: OK (device {cfg.device.id}, model {cfg.model.path}, "
        f"{len(cfg.actions)} action(s))\n"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from edgeagent.service.assembly import build_daemon  # noqa: PLC0415
    from edgeagent.service.system.logsetup import configure_logging  # noqa: PLC0415

    cfg = _config_or_none(args.config)
    if cfg is None:
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
