"""What every settings section shares: unknown keys are errors, values are frozen."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

# Action names: also MQTT topic levels and prompt words.
NAME_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
# MQTT topic levels must not contain wildcards or separators.
TOPIC_LEVEL_RE = re.compile(r"^[^#+/\x00]+$")


class Section(BaseModel):
    """A TOML section: a typo is an error at start-up, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def topic_prefix(value: str) -> str:
    """A topic prefix ([mqtt] topic_prefix, [homeassistant] prefix): one or more levels,
    no wildcards, no leading or trailing '/'."""
    if (
        not value
        or value.startswith("/")
        or value.endswith("/")
        or any(c in value for c in "#+\x00")
    ):
        raise ValueError("must be non-empty, without wildcards and leading/trailing '/'")
    return value
