"""What a reload (SIGHUP) may change in a running daemon, and what waits for a restart.

Live: the action catalog, queue deadlines, memory policy, log level. The sections below
are bound at start: the model is loaded, the broker connection and the device's topics
made, the state directory opened, Home Assistant discovery sent on connect and the
metrics endpoint bound.
"""

from __future__ import annotations

from edgeagent.config.document import Config

RESTART_SECTIONS = ("model", "mqtt", "device", "state", "homeassistant", "metrics")


def reloaded(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to run with from now on (`new`, with the running restart-only
    sections), and the names of the restart-only sections `new` changes."""
    needs_restart = [k for k in RESTART_SECTIONS if getattr(new, k) != getattr(running, k)]
    kept = new.model_copy(update={k: getattr(running, k) for k in RESTART_SECTIONS})
    return kept, sorted(needs_restart)
