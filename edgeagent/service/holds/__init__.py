"""Held actions an operator confirms, edits or rejects over MQTT (docs/protocol.md)."""
