"""Home Assistant MQTT discovery: one HA device per edgeagent, its entities fed by the heartbeat.

The convention zigbee2mqtt, Frigate and ESPHome follow: a retained JSON config per entity
on `<discovery prefix>/<component>/<node id>/<object id>/config`; an empty retained payload
on the same topic removes the entity. Every sensor reads the daemon's existing retained
topics (the heartbeat, and `last_action`), and all of them share one availability: the
retained `status` topic with its `online`/`offline` (the last will covers a crash). The
entities are defined in homeassistant_entities.py and homeassistant_holds.py (the hold
sensors and the Confirm/Reject buttons, whose availability also needs a pending hold).

What was published is remembered in the state directory, so that turning discovery off,
or an entity that no longer applies (no temperature sensor any more), removes exactly the
configs this device published before, and a device that never used discovery publishes
nothing under the discovery prefix (a broker ACL may not even allow it).

With `republish = "changed"` the record also holds a digest of the configs: a reconnect
publishes them again only when they changed or when the broker did not keep the device's
session (a broker that lost its sessions has most likely lost its retained messages too),
so a broker restart does not cost ~10 retained messages per device (docs/scale.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from edgeagent import __version__
from edgeagent.config import HomeAssistantConfig
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant_entities import (
    BEAT,
    ENTITIES,
    LAST_ACTION,
    TEMPERATURE,
    Entity,
)
from edgeagent.service.views.homeassistant_holds import HOLD_ENTITIES, button_topics

log = structlog.get_logger("edgeagent.service.views.homeassistant")

# The oldest Home Assistant that honours a discovered sensor's `options` (older ones
# ignore them and show the state sensor as free text); docs/integrations.md names it.
MIN_HOME_ASSISTANT = "2024.9"
# HA: node and object ids are [a-zA-Z0-9_-] (homeassistant/components/mqtt/discovery.py).
_UNSAFE_ID = re.compile(r"[^a-zA-Z0-9_-]")
# Heartbeat-fed values count as stale after this many missed heartbeats (a daemon whose
# event loop hangs while its connection stays up keeps `online`, but stops beating).
_STALE_BEATS = 3
_MIN_EXPIRE_S = 30


def last_action_topic(topics: Topics) -> str:
    """Retained `{"name", "at", "task_id"}` of the latest action a task chose."""
    return f"{topics.base}/last_action"


def last_action_message(
    topics: Topics, task_id: str, output: Mapping[str, Any], at: datetime
) -> tuple[str, str]:
    """(topic, payload) to publish retained when a task's answer is a catalog action."""
    body = {
        "name": output.get("action"),
        "at": at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "task_id": task_id,
        "args": output.get("args", {}),
    }
    return last_action_topic(topics), json.dumps(body, ensure_ascii=False)


def node_id(device_id: str) -> str:
    """The device id as an HA node id; a hash keeps two ids apart that map to the same."""
    safe = _UNSAFE_ID.sub("_", device_id)
    if safe != device_id:
        safe += "_" + hashlib.sha256(device_id.encode()).hexdigest()[:6]
    return f"edgeagent_{safe}"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What HA shows about the device; `model` is the GGUF file the daemon serves."""

    device_id: str
    model: str
    heartbeat_s: float
    temperature_known: bool
    version: str = __version__
    # A catalog action with `dispatch = true`: only then can an answer be held for an
    # operator, and only then are the hold entities published.
    holds: bool = True


def config_topic(prefix: str, entity: Entity, device_id: str) -> str:
    return f"{prefix}/{entity.component}/{node_id(device_id)}/{entity.key}/config"


def entities(info: DeviceInfo) -> list[Entity]:
    every = [*ENTITIES, TEMPERATURE] if info.temperature_known else list(ENTITIES)
    return [*every, *HOLD_ENTITIES] if info.holds else every


def discovery_configs(
    cfg: HomeAssistantConfig, topics: Topics, info: DeviceInfo
) -> dict[str, dict[str, Any]]:
    """Config topic -> discovery payload, for every entity of this device."""
    ident = f"edgeagent-{info.device_id}"
    device = {
        "identifiers": [ident],
        "name": cfg.name or f"edgeagent {info.device_id}",
        "manufacturer": "edgeagent",
        "model": info.model,
        "sw_version": info.version,
    }
    expire_after = max(_MIN_EXPIRE_S, round(_STALE_BEATS * info.heartbeat_s))
    sources = {BEAT: topics.heartbeat, LAST_ACTION: last_action_topic(topics)}
    status = {
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    configs: dict[str, dict[str, Any]] = {}
    for entity in entities(info):
        button = entity.component == "button"
        payload: dict[str, Any] = {
            "name": entity.name,
            "unique_id": f"{ident}-{entity.key}",
            **(
                button_topics(entity, topics) if button else {"state_topic": sources[entity.source]}
            ),
            **entity.options,
            **({} if button else status),
            "qos": 1,
            "device": device,
            "origin": {"name": "edgeagent", "sw_version": info.version},
        }
        if "json_attributes_template" in entity.options:
            # The attributes (task id, arguments) come from the same message as the state.
            payload["json_attributes_topic"] = payload["state_topic"]
        if entity.source == BEAT:
            # The last action stays valid however old it is; live values do not.
            payload["expire_after"] = expire_after
        configs[config_topic(cfg.prefix, entity, info.device_id)] = payload
    return configs


def plan(
    wanted: Mapping[str, dict[str, Any]], published_before: Iterable[str], *, enabled: bool
) -> list[tuple[str, str]]:
    """(topic, payload) to publish retained: the wanted configs when enabled, and an empty
    payload (HA removes the entity) for every topic published before that is not wanted."""
    keep = dict(wanted) if enabled else {}
    messages = [(topic, json.dumps(payload, ensure_ascii=False)) for topic, payload in keep.items()]
    messages += [(topic, "") for topic in sorted(set(published_before) - set(keep))]
    return messages


class PublishedRecord:
    """The config topics this device has published, kept in the state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("unreadable discovery record; starting afresh", path=str(self.path))
            return {}
        return data if isinstance(data, dict) else {}

    def load(self) -> set[str]:
        return {t for t in self._read().get("topics", []) if isinstance(t, str)}

    def digest(self) -> str | None:
        """The digest of the configs published last (None: unknown)."""
        value = self._read().get("digest")
        return value if isinstance(value, str) else None

    def save(self, topics: Iterable[str], digest: str | None = None) -> None:
        wanted = sorted(topics)
        if not wanted:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        record: dict[str, Any] = {"topics": wanted}
        if digest is not None:
            record["digest"] = digest
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        tmp.replace(self.path)  # atomic: a crash leaves the old or the new record


def configs_digest(messages: Iterable[tuple[str, str]]) -> str:
    """What identifies a set of (topic, payload) configs, whatever their order."""
    text = json.dumps(sorted(messages), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


Publish = Callable[[str, str], Awaitable[None]]


class Discovery:
    """Publishes (or removes) this device's discovery configs; call `sync` on each connect."""

    def __init__(
        self, cfg: HomeAssistantConfig, topics: Topics, info: DeviceInfo, state_dir: Path
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.info = info
        self.record = PublishedRecord(state_dir / "homeassistant-discovery.json")

    def messages(self) -> tuple[list[tuple[str, str]], set[str]]:
        """What to publish now, and the record to keep once the broker confirmed it."""
        wanted = discovery_configs(self.cfg, self.topics, self.info)
        before = self.record.load()
        messages = plan(wanted, before, enabled=self.cfg.discovery)
        return messages, set(wanted) if self.cfg.discovery else set()

    async def sync(self, publish: Publish, *, session_present: bool = False) -> None:
        """Publish what `messages` says, unless (republish = "changed") the broker kept our
        session and the configs are those published last, with nothing to remove."""
        messages, keep = self.messages()
        if not messages:
            return
        removed = sum(1 for _, payload in messages if not payload)
        # Of the configs wanted now; removals (empty payloads) are never skipped.
        digest = configs_digest((t, p) for t, p in messages if p) if self.cfg.discovery else None
        if (
            self.cfg.republish == "changed"
            and session_present
            and not removed
            and digest == self.record.digest()
        ):
            log.debug("home assistant discovery unchanged; not published again")
            return
        # The record changes only after every PUBACK: a connection lost halfway leaves the
        # old record, and the next connect publishes (or removes) everything again.
        await asyncio.gather(*(publish(topic, payload) for topic, payload in messages))
        self.record.save(keep, digest)
        log.info(
            "home assistant discovery",
            published=len(messages) - removed,
            removed=removed,
            prefix=self.cfg.prefix,
        )
