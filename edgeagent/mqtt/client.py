"""One place that builds a paho client: protocol, authentication, TLS, socket options.

The daemon's link and the CLI (`submit`, `status`) connect to the same broker with
the same settings; building both clients here keeps them from drifting apart.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from edgeagent.config import MqttConfig
from edgeagent.errors import EdgeAgentError, ErrorCode


def new_client(
    cfg: MqttConfig,
    *,
    client_id: str,
    v5: bool = True,
    persistent_session: bool = False,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho client with cfg's credentials and TLS, not yet connected.

    `persistent_session` only matters for MQTT 3.1.1 (clean session off); on v5 the
    session lifetime is the CONNECT's Session Expiry Interval.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent_session,
        manual_ack=manual_ack,
    )
    client.on_socket_open = no_delay
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password())
    if cfg.tls_ca is not None:
        client.tls_set(
            ca_certs=str(cfg.tls_ca),
            certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
            keyfile=str(cfg.tls_key) if cfg.tls_key else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def connect_once(client: mqtt.Client, cfg: MqttConfig, *, keepalive: int = 30) -> None:
    """A command's one connection attempt (the CLI's: it has no reconnect loop); a broker
    that cannot be reached is a typed TIMEOUT, not an OSError."""
    try:
        client.connect(cfg.host, cfg.port, keepalive=keepalive)
    except OSError as exc:
        raise EdgeAgentError(
            ErrorCode.TIMEOUT, f"cannot reach broker {cfg.host}:{cfg.port}: {exc}"
        ) from exc


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Disable Nagle's algorithm: a reply is one small packet that must leave now, not
    after the peer's delayed ACK (~40 ms on Linux per round trip otherwise)."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def mqtt_properties(packet_type: int) -> Properties:
    """MQTT v5 properties for a packet (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]
