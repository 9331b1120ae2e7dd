"""Configuration: one TOML file, overridable by EDGEAGENT_<SECTION>__<KEY> variables."""

from edgeagent.config.limits import SchemaLimits
from edgeagent.config.loading import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    format_validation_error,
    load_config,
)
from edgeagent.config.sections import (
    CREDENTIAL_MQTT_PASSWORD,
    ActionConfig,
    Config,
    DeviceConfig,
    HomeAssistantConfig,
    LogConfig,
    MemoryConfig,
    MetricsConfig,
    ModelConfig,
    MqttConfig,
    QueueConfig,
    StateConfig,
)

__all__ = [
    "CREDENTIAL_MQTT_PASSWORD",
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "ActionConfig",
    "Config",
    "DeviceConfig",
    "HomeAssistantConfig",
    "LogConfig",
    "MemoryConfig",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "QueueConfig",
    "SchemaLimits",
    "StateConfig",
    "format_validation_error",
    "load_config",
]
