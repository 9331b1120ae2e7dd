"""Held actions an operator confirms, edits or rejects over MQTT (the operator loop)."""
