"""The whole configuration file: its sections, and the rules that span several."""

from __future__ import annotations

from pydantic import Field, model_validator

from edgeagent.config.base import Section
from edgeagent.config.broker import MqttConfig
from edgeagent.config.catalog import ActionConfig, CatalogConfig, effective_min_confidence
from edgeagent.config.limits import SchemaLimits
from edgeagent.config.sections import (
    DeviceConfig,
    HomeAssistantConfig,
    LogConfig,
    MemoryConfig,
    MetricsConfig,
    ModelConfig,
    QueueConfig,
    StateConfig,
)
from edgeagent.protocol.reply_policy import ReplyPolicy


class Config(Section):
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
    actions: list[ActionConfig] = Field(default_factory=list)

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
