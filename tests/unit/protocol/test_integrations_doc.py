"""The Home Assistant automations in docs/integrations.md do what the page says.

Each is read from the page itself; its templates are rendered with Jinja2 as Home
Assistant renders them (`now()`, `states()` and `tojson` as HA defines them), the task is
parsed by the daemon's own request parser and its `reply_to` checked against the default
reply policy and the broker ACL the role renders (a device writes only
replies/<sender>/<its id>/...; the homeassistant user reads replies/homeassistant/#).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import jinja2
import paho.mqtt.client as mqtt
import pytest
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment
from support.daemon import ROOT

from edgeagent.protocol.reply_policy import ReplyPolicy
from edgeagent.protocol.request import parse_request

DOC = ROOT / "docs" / "integrations.md"
DEVICE = "greenhouse-01"


def _automation(title: str) -> dict[str, Any]:
    """The YAML block that follows the heading `### Automation: <title>`."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"### Automation: {title}\n", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None, f"no YAML in the section {title!r}"
    automation: dict[str, Any] = yaml.safe_load(block.group(1))
    return automation


def _render(template: str, **context: Any) -> str:
    env = ImmutableSandboxedEnvironment(undefined=jinja2.Undefined)
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.globals["now"] = lambda: datetime(2026, 11, 29, 7, 0, 0, tzinfo=UTC)
    env.globals["states"] = lambda _entity: "12"
    return env.from_string(template).render(**context).strip()


def test_the_task_automation_sends_a_task_the_device_answers_where_ha_reads() -> None:
    (publish,) = _automation("send a task")["actions"]
    assert publish["action"] == "mqtt.publish"
    data = publish["data"]
    assert data["topic"] == f"edgeagent/{DEVICE}/tasks"
    payload = _render(data["payload"]).encode()
    request = parse_request(payload, 256 * 1024)
    assert request.id == "ha-soil-20261129"
    assert request.input == "Zone 3 soil moisture is 12 %."
    reply_to = json.loads(payload)["reply_to"]
    # The daemon replies there (defaults: reply prefix "replies")...
    assert ReplyPolicy(fleet_prefix="edgeagent", device=DEVICE).refusal(reply_to) is None
    # ...the role's ACL lets the device write it, and Home Assistant's user read it.
    assert mqtt.topic_matches_sub(f"replies/+/{DEVICE}/#", reply_to)
    assert mqtt.topic_matches_sub("replies/homeassistant/#", reply_to)


def _reply(device_in_body: str = DEVICE, **extra: Any) -> dict[str, Any]:
    return {
        "id": "ha-soil-20261129",
        "status": "ok",
        "device": device_in_body,
        "output": {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}},
        "confidence": 0.41,
        "dispatched": False,
        **extra,
    }


HELD = {
    "reason": "confidence",
    "confidence": 0.41,
    "min_confidence": 0.8,
    "topic": f"edgeagent/{DEVICE}/actions/set_irrigation",
}


@pytest.mark.parametrize(
    ("reply", "asks"),
    [
        (_reply(held=HELD), True),
        (_reply(confidence=0.97, dispatched=True), False),  # dispatched: nothing to ask
        (_reply("greenhouse-02", held=HELD), False),  # the body claims another device
        (_reply(held=HELD | {"topic": "edgeagent/greenhouse-02/actions/open_roof"}), False),
        (_reply(held=HELD | {"topic": "valves/zone3/set"}), False),
        (_reply(held={"reason": "cut_short", "confidence": None}), False),  # no topic
    ],
)
def test_the_held_action_automation_asks_only_about_the_devices_own_held_actions(
    reply: dict[str, Any], asks: bool
) -> None:
    automation = _automation("ask before acting on a held action")
    (trigger,) = automation["triggers"]
    topic = f"replies/homeassistant/{DEVICE}"
    assert mqtt.topic_matches_sub(trigger["topic"], topic)
    (condition,) = automation["conditions"]
    context = {"trigger": {"topic": topic, "payload_json": reply}}
    assert _render(condition["value_template"], **context) == str(asks)
    if asks:
        (notify,) = automation["actions"]
        message = _render(notify["data"]["message"], **context)
        assert HELD["topic"] in message
