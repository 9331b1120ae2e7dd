"""The settings, one pydantic model per TOML section.

The models forbid unknown keys so a typo is an error at start-up, not a silently
ignored setting.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeagent.config.limits import SchemaLimits
from edgeagent.protocol.overflow import OverflowPolicy
from edgeagent.protocol.reply_policy import (
    DEFAULT_REPLY_MAX_BYTES,
    DEFAULT_REPLY_PREFIXES,
    MQTT_TOPIC_MAX_BYTES,
    ReplyPolicy,
    topic_name_problem,
)

# systemd's LoadCredential= puts secrets here; the unit names the broker password this way.
CREDENTIAL_MQTT_PASSWORD = "mqtt_password"  # noqa: S105 - a file name, not a password

_NAME_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
# MQTT topic levels must not contain wildcards or separators.
_TOPIC_LEVEL_RE = re.compile(r"^[^#+/\x00]+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0],
        description="Device id: one MQTT topic level, unique in the fleet. Default: the hostname.",
    )

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not _TOPIC_LEVEL_RE.match(value):
            raise ValueError("must be one MQTT topic level (no '/', '+', '#')")
        return value


class ModelConfig(_Section):
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


class MqttConfig(_Section):
    host: str = Field(default="localhost", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT protocol version the daemon speaks."
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id. Default: edgeagent-<device id>."
    )
    username: str | None = Field(default=None, description="Broker user name.")
    password_file: Path | None = Field(
        default=None,
        description=(
            "File holding the broker password. Default: $CREDENTIALS_DIRECTORY/mqtt_password "
            "when systemd provides it."
        ),
    )
    tls_ca: Path | None = Field(default=None, description="CA bundle; setting it enables TLS.")
    tls_cert: Path | None = Field(default=None, description="Client certificate (PEM).")
    tls_key: Path | None = Field(default=None, description="Client key (PEM).")
    topic_prefix: str = Field(
        default="edgeagent", description="First topic level(s) of every topic the daemon uses."
    )
    shared_group: str | None = Field(
        default="edgeagent",
        description=(
            "Shared-subscription group for fleet tasks; empty or null disables fleet tasks."
        ),
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive.")
    heartbeat_s: float = Field(
        default=10.0,
        ge=1.0,
        le=3600.0,
        description=(
            "Heartbeat period; also sets when Home Assistant and the fleet view call a "
            "device stale (3 periods). 30 from ~100 devices, 60 from ~1,000 (docs/scale.md)."
        ),
    )
    reconnect_base_s: float = Field(
        default=1.0,
        gt=0,
        le=600.0,
        description=(
            "Reconnect backoff: each wait after a lost connection is random in [0, window], "
            "the window the outage so far but at least this (and at most reconnect_max_s), "
            "so a fleet does not reconnect in lockstep. 2 from ~100 devices, 5 from ~1,000 "
            "(docs/scale.md)."
        ),
    )
    reconnect_max_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="Reconnect backoff: the largest window. 60 from ~100 devices, 120 from ~1,000.",
    )
    session_expiry_s: int = Field(
        default=86400,
        ge=0,
        description="MQTT v5 session expiry: how long the broker keeps our queued tasks offline.",
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger task payloads get PAYLOAD_TOO_LARGE."
    )
    reply_prefixes: list[str] = Field(
        default=list(DEFAULT_REPLY_PREFIXES),
        description=(
            "Topic prefixes a request may name as its reply address (`reply_to`, or the "
            "MQTT v5 Response Topic), in whole topic levels: `replies` allows `replies/me/1`. "
            "Whatever is listed, `$` topics, wildcards, control characters, surrogates and "
            "non-characters are refused, and so is every topic under `topic_prefix` except "
            "this device's own `results/...`. Empty: no caller-chosen reply address."
        ),
    )
    reply_topic_max_bytes: int = Field(
        default=DEFAULT_REPLY_MAX_BYTES,
        ge=16,
        le=MQTT_TOPIC_MAX_BYTES,
        description="Longest reply address accepted, in bytes of UTF-8.",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_ok(cls, value: str) -> str:
        if (
            not value
            or value.startswith("/")
            or value.endswith("/")
            or any(c in value for c in "#+\x00")
        ):
            raise ValueError("must be non-empty, without wildcards and leading/trailing '/'")
        return value

    @field_validator("reply_prefixes")
    @classmethod
    def _reply_prefixes_ok(cls, value: list[str]) -> list[str]:
        for prefix in value:
            problem = topic_name_problem(prefix)
            if problem is not None:
                raise ValueError(f"{prefix!r} {problem}")
            if prefix.endswith("/"):
                raise ValueError(f"{prefix!r} must not end with '/' (prefixes are whole levels)")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> MqttConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("tls_cert needs tls_ca (client certificates only work over TLS)")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.reconnect_max_s < self.reconnect_base_s:
            raise ValueError("reconnect_max_s must not be below reconnect_base_s")
        return self

    def password(self) -> str | None:
        """The broker password from password_file or the systemd credential, if any."""
        path = self.password_file
        if path is None:
            cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
            candidate = Path(cred_dir) / CREDENTIAL_MQTT_PASSWORD if cred_dir else None
            if candidate is None or not candidate.is_file():
                return None
            path = candidate
        # An empty file (systemd-tmpfiles creates one so LoadCredential= never fails)
        # means no password, not an empty one.
        return path.read_text(encoding="utf-8").rstrip("\r\n") or None


class StateConfig(_Section):
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


class QueueConfig(_Section):
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


class MemoryConfig(_Section):
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


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    format: Literal["auto", "journal", "json", "console"] = Field(
        default="auto",
        description="auto: journald under systemd, JSON lines when not a TTY, else console.",
    )


class HomeAssistantConfig(_Section):
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
        return MqttConfig._prefix_ok(value)  # noqa: SLF001 - the same rule as [mqtt] topic_prefix


class MetricsConfig(_Section):
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


MAX_EXAMPLES = 8  # per action: they are in every prompt of the catalog (its cached prefix)


class ActionExample(_Section):
    """An example input for an action, with the arguments it should get (optional)."""

    input: str = Field(min_length=1, max_length=300, description="An input the action fits.")
    args: dict[str, Any] | None = Field(
        default=None, description="The arguments a right answer to that input has."
    )


class ActionConfig(_Section):
    name: str = Field(pattern=_NAME_RE, description="Action name, also a topic level.")
    description: str = Field(min_length=1, description="What the action does; shown to the model.")
    schema_: dict[str, Any] = Field(
        alias="schema",
        description="JSON Schema of the action's arguments: an inline table or a path to a file.",
    )
    dispatch: bool = Field(
        default=False,
        description="Also publish the validated action to <prefix>/<device>/actions/<name>.",
    )
    when: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="When to choose the action (and when not); shown to the model.",
    )
    examples: list[str | ActionExample] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description=(
            "Example inputs the action fits, shown to the model: texts, or tables "
            "`{input, args}` with the arguments a right answer has (checked against `schema`)."
        ),
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "Hold the action (reply `held`, nothing published to actions/<name>) when the "
            "model's confidence in choosing it is below this, or unknown. "
            "Default: `[catalog] min_confidence`."
        ),
    )
    nothing_to_do: bool = Field(
        default=False,
        description=(
            'The "nothing to do" action (at most one): the prompt presents it as the default; '
            "never held."
        ),
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _examples_fit(self) -> ActionConfig:
        # Imported here: jsonschema is only needed when a catalog has example arguments.
        import jsonschema  # noqa: PLC0415

        for index, example in enumerate(self.examples):
            if isinstance(example, ActionExample) and example.args is not None:
                known = self.schema_.get("properties")
                unknown = sorted(set(example.args) - set(known if isinstance(known, dict) else {}))
                if unknown:
                    raise ValueError(f"examples[{index}].args: not in the schema: {unknown}")
                try:
                    jsonschema.validate(example.args, self.schema_)
                except jsonschema.ValidationError as exc:
                    raise ValueError(
                        f"examples[{index}].args do not fit the schema: {exc.message}"
                    ) from exc
                except jsonschema.SchemaError:
                    continue  # the schema itself is refused with its own message at compile
        return self

    def example_texts(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(input, args or None) of every example, in order."""
        return [(e, None) if isinstance(e, str) else (e.input, e.args) for e in self.examples]


class CatalogConfig(_Section):
    min_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "Default `min_confidence` of the actions that set none. Default: none "
            "(actions are dispatched whatever their confidence)."
        ),
    )
    min_act_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "Act-or-not floor: an action (any but the nothing-to-do one) is held when the "
            "model's calibrated probability of acting at all (the reply's "
            "`act_confidence`) is below it. Default: none."
        ),
    )
    unsupported_arguments: Literal["hold", "lower", "allow"] = Field(
        default="hold",
        description=(
            "An action whose arguments hold a number that neither the input (in digits "
            "or words) nor the action's examples support: `hold` it (reason "
            "`unsupported_argument`), `lower` its confidence (halved) so "
            "`min_confidence` decides, or `allow` it."
        ),
    )


class Config(_Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    model: ModelConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    schema_limits: SchemaLimits = Field(default_factory=SchemaLimits)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    actions: Annotated[list[ActionConfig], Field(default_factory=list)]

    @model_validator(mode="after")
    def _unique_actions(self) -> Config:
        seen: set[str] = set()
        for action in self.actions:
            if action.name in seen:
                raise ValueError(f"action {action.name!r} is defined twice")
            seen.add(action.name)
        nothing = [a.name for a in self.actions if a.nothing_to_do]
        if len(nothing) > 1:
            raise ValueError(f"at most one action may be nothing_to_do, not {nothing}")
        if self.memory.min_ctx > self.model.n_ctx:
            raise ValueError(
                f"memory.min_ctx ({self.memory.min_ctx}) exceeds model.n_ctx ({self.model.n_ctx})"
            )
        return self

    def action(self, name: str) -> ActionConfig | None:
        return next((a for a in self.actions if a.name == name), None)

    def min_confidence(self, action: ActionConfig) -> float | None:
        """The confidence below which `action` is held (None: never held)."""
        return effective_min_confidence(action, self.catalog)

    def reply_policy(self) -> ReplyPolicy:
        """Where this device may send replies (`protocol.reply_policy.check_reply_topic`)."""
        return ReplyPolicy(
            fleet_prefix=self.mqtt.topic_prefix,
            device=self.device.id,
            allowed_prefixes=tuple(self.mqtt.reply_prefixes),
            max_bytes=self.mqtt.reply_topic_max_bytes,
        )


def effective_min_confidence(action: ActionConfig, catalog: CatalogConfig) -> float | None:
    """The action's own `min_confidence`, else the catalog's; None for the "nothing to
    do" action (holding it would hold nothing)."""
    if action.nothing_to_do:
        return None
    return action.min_confidence if action.min_confidence is not None else catalog.min_confidence


def nothing_to_do(actions: list[ActionConfig]) -> ActionConfig | None:
    """The designated "nothing to do" action of a catalog, if any."""
    return next((a for a in actions if a.nothing_to_do), None)
