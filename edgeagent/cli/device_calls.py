"""`edgeagent submit` and `edgeagent status` over MQTT: one blocking call each (publish a
task and wait for its reply; read a device's retained status and heartbeat).

submit publishes one task with an MQTT v5 Response Topic and Correlation Data (the
same request/response pattern as mosquitto_rr) and waits for the reply.
"""

from __future__ import annotations

import json
import queue
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from edgeagent.cli.fleet_heartbeat import MAX_HEARTBEAT_BYTES, MAX_HEARTBEAT_DEPTH
from edgeagent.cli.untrusted_json import parse_object
from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.client import connect_once, mqtt_properties, new_client
from edgeagent.protocol.topics import Topics


def _client(cfg: Config) -> mqtt.Client:
    return new_client(cfg.mqtt, client_id=f"edgeagent-cli-{uuid.uuid4().hex[:8]}")


def _connect(client: mqtt.Client, cfg: Config, timeout: float) -> None:
    connected: queue.Queue[bool] = queue.Queue(maxsize=1)
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.put(not reason.is_failure)
    connect_once(client, cfg.mqtt)
    client.loop_start()
    try:
        ok = connected.get(timeout=timeout)
    except queue.Empty as exc:
        raise EdgeAgentError(ErrorCode.TIMEOUT, "no CONNACK from the broker") from exc
    if not ok:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "the broker refused the connection")


def submit(
    cfg: Config, request: dict[str, Any], *, device: str | None, timeout: float
) -> dict[str, Any]:
    """Publish a task and return the reply body. Raises TIMEOUT when none arrives."""
    topics = Topics(cfg.mqtt.topic_prefix, device or cfg.device.id, cfg.mqtt.shared_group)
    task_topic = topics.tasks if device is not None else topics.fleet_tasks
    request.setdefault("id", uuid.uuid4().hex)
    # Below an allowed reply prefix, in the caller's own branch and naming the device
    # (docs/security.md: the broker lets a device write only replies/<sender>/<its id>/...,
    # so the topic proves who answered); a fleet task, whose answering device is not known
    # in advance, and a device without reply prefixes: the results topic of whichever
    # device answers (the daemon's reply policy refuses any other address).
    me = cfg.mqtt.username or cfg.device.id
    by_results = device is None or not cfg.mqtt.reply_prefixes
    reply_topic = (
        f"{cfg.mqtt.topic_prefix}/+/results/{request['id']}"
        if by_results
        else f"{cfg.mqtt.reply_prefixes[0]}/{me}/{device}/cli-{uuid.uuid4().hex}"
    )
    correlation = uuid.uuid4().bytes
    replies: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=16)
    subscribed: queue.Queue[bool] = queue.Queue(maxsize=1)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # The reply topic is this call's own (a fresh uuid): a reply there is ours, with
        # or without the Correlation Data (an MQTT 3.1.1 bridge between sites drops it).
        if by_results or msg.topic == reply_topic:
            replies.put_nowait(json.loads(msg.payload))

    client = _client(cfg)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.put_nowait(item=True)
    _connect(client, cfg, timeout)
    try:
        client.subscribe(reply_topic, qos=1)
        subscribed.get(timeout=timeout)
        props = mqtt_properties(PacketTypes.PUBLISH)
        if not by_results:
            props.ResponseTopic = reply_topic
            props.CorrelationData = correlation
            # Also in the body: v5 properties do not cross an MQTT 3.1.1 bridge (sites,
            # docs/deploy.md); the daemon prefers the Response Topic where it arrives.
            request.setdefault("reply_to", reply_topic)
        client.publish(task_topic, json.dumps(request), qos=1, properties=props).wait_for_publish(
            timeout
        )
        try:
            return replies.get(timeout=timeout)
        except queue.Empty as exc:
            raise EdgeAgentError(ErrorCode.TIMEOUT, f"no reply within {timeout:g} s") from exc
    finally:
        client.disconnect()
        client.loop_stop()


def status(cfg: Config, *, device: str | None, timeout: float) -> dict[str, Any]:
    """The retained status and heartbeat of a device."""
    topics = Topics(cfg.mqtt.topic_prefix, device or cfg.device.id, cfg.mqtt.shared_group)
    seen: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=8)
    client = _client(cfg)
    client.on_message = lambda _c, _u, msg: seen.put_nowait((msg.topic, bytes(msg.payload)))
    _connect(client, cfg, timeout)
    result: dict[str, Any] = {"device": topics.device, "status": None, "heartbeat": None}
    try:
        client.subscribe([(topics.status, 1), (topics.heartbeat, 1)])
        answered: set[str] = set()
        while answered != {topics.status, topics.heartbeat}:
            try:
                topic, payload = seen.get(timeout=timeout)
            except queue.Empty:
                break
            answered.add(topic)
            if topic == topics.status:
                result["status"] = payload.decode("utf-8", "replace")
            elif payload:  # (an empty one: cleared, the device was decommissioned)
                # What the broker retains there is anyone's who may publish it: read
                # bounded, and shown as the problem it is when it is no JSON object.
                result["heartbeat"], problem = parse_object(
                    payload,
                    what="heartbeat",
                    max_bytes=MAX_HEARTBEAT_BYTES,
                    max_depth=MAX_HEARTBEAT_DEPTH,
                )
                if problem is not None:
                    result["heartbeat_problem"] = problem
    finally:
        client.disconnect()
        client.loop_stop()
    return result
