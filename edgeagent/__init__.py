"""edgeagent: a Raspberry Pi daemon answering MQTT tasks with schema-valid JSON from a local LLM."""

__version__ = "0.1.0"
