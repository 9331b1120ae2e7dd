"""The device's own settings, one pydantic model per TOML section: [device], [model],
[state], [queue], [memory], [log], [homeassistant], [metrics]. The broker's is in
broker.py, the action catalog's in catalog.py, the whole file in document.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edgeagent.config.base import TOPIC_LEVEL_RE, Section, topic_prefix
from edgeagent.protocol.overflow_policy import OverflowPolicy
from edgeagent.protocol.topics import RESERVED_DEVICE_IDS


class DeviceConfig(Section):
    id: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0],
        description="Device id: one MQTT topic level, unique in the fleet. Default: the hostname.",
    )

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not TOPIC_LEVEL_RE.match(value):
            raise ValueError("must be one MQTT topic level (no '/', '+', '#')")
        if value in RESERVED_DEVICE_IDS:
            raise ValueError(
                f"{value!r} is reserved: <prefix>/{value}/ is the fleet's own topic branch"
            )
        return value


class ModelConfig(Section):
    path: Path = Field(description="Path of the GGUF model file (Q4 recommended).")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the model file; checked at start when set.",
    )
    threads: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        le=64,
        description="CPU threads for generation. On a Pi, the number of cores.",
    )
    n_ctx: int = Field(
        default=4096,
        ge=256,
        le=131072,
        description="Upper bound of the context window in tokens (prompt + answer).",
    )
    n_batch: int = Field(
        default=256, ge=16, le=4096, description="Prompt tokens fed per decode call."
    )
    parallel: Literal["auto"] | Annotated[int, Field(ge=1, le=8)] = Field(
        default="auto",
        description=(
            "Tasks decoded together at most, each in a KV sequence of n_ctx tokens of its "
            "own (allocated while a batch runs, given back after 5 s without one). 1: one "
            "task at a time, no memory beyond one context. auto: measured when the model "
            "loads: 8 where a batched token costs less than one alone, else 1."
        ),
    )
    share_schemas: bool = Field(
        default=False,
        description=(
            "Reuse a caller's schema from the prompt cache for every caller. Schema tasks "
            "then skip reading it again (about 2.5x less prompt time for a short input), "
            "but a caller can tell from cached_prompt_tokens whether a guessed schema was "
            "another caller's. Only when every task sender is trusted."
        ),
    )
    max_tokens: int = Field(
        default=512, ge=1, le=8192, description="Default answer length limit in tokens."
    )
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="0 means greedy decoding (reproducible)."
    )
    seed: int = Field(default=0, ge=0, description="Sampling seed when temperature > 0.")
    system_prompt: str = Field(
        default=(
            "You are a precise assistant running on an edge device. "
            "Read the input and answer only with JSON."
        ),
        description="First line of the system message of every task.",
    )
    reason: bool = Field(
        default=False,
        description=(
            'Action answers start with a short "reason" (at most 80 characters) before the '
            "action: the model explains before it chooses. Sent in the reply's `reason`, "
            "never in the action message. Costs about 10 answer tokens per task."
        ),
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> ModelConfig:
        if self.n_batch > self.n_ctx:
            raise ValueError(f"n_batch ({self.n_batch}) must not exceed n_ctx ({self.n_ctx})")
        if self.max_tokens >= self.n_ctx:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be below n_ctx ({self.n_ctx})")
        return self


class StateConfig(Section):
    dir: Path = Field(
        default=Path("/var/lib/edgeagent"),
        description="Writable directory for the task journal (systemd StateDirectory=).",
    )
    journal_max_age_s: int = Field(
        default=7 * 86400, ge=60, description="Finished tasks older than this are forgotten."
    )
    journal_max_rows: int = Field(
        default=10000, ge=100, description="At most this many tasks are remembered."
    )


class QueueConfig(Section):
    size: int = Field(
        default=16,
        ge=1,
        le=10000,
        description="Tasks waiting for the model; beyond it clients get BUSY at once.",
    )
    default_deadline_s: float = Field(
        default=600.0, gt=0, description="Deadline of a task that names none."
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        gt=0,
        description="On SIGTERM, how long the running task may take before it is handed back.",
    )
    max_task_aborts: int = Field(
        default=2,
        ge=1,
        le=10,
        description=(
            "A task that was running when the daemon died (crash, OOM kill, watchdog) this "
            "many times is answered INTERNAL instead of running again. Keep it below the "
            "unit's StartLimitBurst (5), so one task cannot stop the service."
        ),
    )


class MemoryConfig(Section):
    reserve_mb: int = Field(
        default=128, ge=0, description="Memory left untouched for the rest of the system."
    )
    min_ctx: int = Field(
        default=512, ge=128, description="Below this budget the daemon answers BUSY."
    )
    sample_s: float = Field(default=2.0, gt=0, description="Memory sampling period.")
    overflow: OverflowPolicy = Field(
        default=OverflowPolicy.REJECT,
        description="Default policy when a task does not fit the budget: reject, truncate, chunk.",
    )
    grow_margin: float = Field(
        default=0.25,
        ge=0.0,
        le=4.0,
        description=(
            "Hysteresis: the context grows only when the budget exceeds it by this fraction, "
            "and a pause ends only when the budget reaches min_ctx by this fraction."
        ),
    )
    grow_samples: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Consecutive samples the budget must stay high before the context grows.",
    )


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    format: Literal["auto", "journal", "json", "console"] = Field(
        default="auto",
        description="auto: journald under systemd, JSON lines when not a TTY, else console.",
    )


class HomeAssistantConfig(Section):
    discovery: bool = Field(
        default=False,
        description=(
            "Publish Home Assistant MQTT discovery configs (retained) for this device; "
            "turning it off removes them. See docs/integrations.md."
        ),
    )
    prefix: str = Field(
        default="homeassistant",
        description="Home Assistant's discovery prefix (its MQTT integration setting).",
    )
    name: str | None = Field(
        default=None, description="Device name in Home Assistant. Default: edgeagent <device id>."
    )
    republish: Literal["changed", "connect"] = Field(
        default="changed",
        description=(
            "When the retained discovery configs are published again: `changed` (when they "
            "differ from what this device published last, or the broker did not keep its "
            "session) or on every `connect` (~10 messages per device per reconnect). "
            "See docs/scale.md."
        ),
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, value: str) -> str:
        return topic_prefix(value)  # the same rule as [mqtt] topic_prefix


class MetricsConfig(Section):
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve Prometheus metrics over HTTP on this port. Default: no HTTP endpoint.",
    )
    address: str = Field(
        default="127.0.0.1", description="Address the metrics HTTP endpoint listens on."
    )
    textfile_dir: Path | None = Field(
        default=None,
        description=(
            "Write edgeagent.prom here (atomically) for node_exporter's textfile collector, "
            "with every heartbeat. Default: not written."
        ),
    )
