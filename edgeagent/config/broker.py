"""[mqtt]: the broker connection, the topic prefix and where replies may go."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgeagent.config.base import Section, topic_prefix
from edgeagent.protocol.reply_policy import (
    DEFAULT_REPLY_MAX_BYTES,
    DEFAULT_REPLY_PREFIXES,
    MQTT_TOPIC_MAX_BYTES,
    topic_name_problem,
)

# systemd's LoadCredential= puts secrets here; the unit names the broker password this way.
CREDENTIAL_MQTT_PASSWORD = "mqtt_password"  # noqa: S105 - a file name, not a password


class MqttConfig(Section):
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
        return topic_prefix(value)

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
