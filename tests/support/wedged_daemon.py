"""`edgeagent run`, but with a model whose prompt call never returns: a wedged inference thread.

The fault is injected through the engine's model factory, so production code carries
no test hook. The model loads for real; its `prefill` (the first model call of every
task) blocks forever without progress, as a hung driver or a deadlock would, so the
watchdog's stall probe and the bounded shutdown see exactly what they would in the field.

It needs only the installed edgeagent package, so it runs

* from the tests: `python -m support.wedged_daemon --config FILE` (tests/ on sys.path),
* as a plain script where the tests are not installed, e.g. in the systemd test's
  container: `/opt/edgeagent/venv/bin/python wedged_daemon.py run --config FILE`
  (a leading `run` is accepted, so it can stand in for `edgeagent` in ExecStart=).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from edgeagent.config import ModelConfig, load_config
from edgeagent.errors import EdgeAgentError
from edgeagent.inference.engine import Engine
from edgeagent.inference.engine_model import EngineModel
from edgeagent.inference.model import ResidentModel
from edgeagent.service.assembly import build_daemon
from edgeagent.service.system.logsetup import configure_logging


def wedging_model(cfg: ModelConfig) -> EngineModel:
    """The real model, except that prefill never returns."""
    model = ResidentModel(cfg.path, threads=cfg.threads, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch)

    def prefill_forever(_prompt: Sequence[int]) -> int:
        threading.Event().wait()  # never set: no return, no progress
        raise AssertionError("unreachable")

    model.prefill = prefill_forever  # type: ignore[method-assign,assignment]
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", nargs="?", choices=["run"], default="run")
    parser.add_argument("--config", "-c", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except EdgeAgentError as exc:
        sys.stderr.write(exc.message + "\n")
        return 2
    configure_logging(cfg.log.level, cfg.log.format, cfg.device.id)
    faulthandler.enable()  # the watchdog's SIGABRT shows where the thread is stuck
    engine = Engine(cfg.model, factory=wedging_model)
    daemon = build_daemon(cfg, config_path=args.config, engine=engine)
    code = asyncio.run(daemon.run())
    if daemon.abandoned_inference:
        # As `edgeagent run`: a normal exit would join the stuck thread forever.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
