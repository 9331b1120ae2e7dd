"""Configuration: one TOML file, overridable by EDGEAGENT_<SECTION>__<KEY> variables."""

from edgeagent.config.broker import CREDENTIAL_MQTT_PASSWORD, MqttConfig
from edgeagent.config.catalog import ActionConfig, CatalogConfig
from edgeagent.config.document import Config
from edgeagent.config.limits import SchemaLimits
from edgeagent.config.loading import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    format_validation_error,
    load_config,
)
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

__all__ = [
    "CREDENTIAL_MQTT_PASSWORD",
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "ActionConfig",
    "CatalogConfig",
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
