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


HOLD = {
    "task_id": "t-7",
    "device": DEVICE,
    "action": "set_irrigation",
    "args": {"zone": 3, "minutes": 20},
    "confidence": 0.41,
    "act_confidence": None,
    "why": "confidence",
    "input": "Zone 3 soil moisture 12 %",
    "held_at": "2026-12-07T04:10:00Z",
    "expires_at": "2026-12-07T05:10:00Z",
}
HOLD_TOPIC = f"edgeagent/{DEVICE}/held/t-7"


def _trigger(topic: str, payload: Any) -> dict[str, Any]:
    """HA's MQTT trigger variables: payload_json only when the payload is JSON."""
    trigger: dict[str, Any] = {"topic": topic, "payload": payload}
    if payload:
        trigger["payload_json"] = json.loads(payload)
    return trigger


@pytest.mark.parametrize(
    ("topic", "payload", "asks"),
    [
        (HOLD_TOPIC, json.dumps(HOLD), True),
        (HOLD_TOPIC, "", False),  # emptied: resolved or expired
        (HOLD_TOPIC, json.dumps(HOLD | {"device": "greenhouse-02"}), False),
        (HOLD_TOPIC, json.dumps(HOLD | {"task_id": "t-8"}), False),
        (HOLD_TOPIC, "[1, 2]", False),
        ("edgeagent/greenhouse-02/held/t-7", json.dumps(HOLD), False),  # another device's topic
    ],
)
def test_the_phone_automation_asks_only_about_a_devices_own_pending_holds(topic, payload, asks):
    automation = _automation("confirm or reject a held action from the phone")
    (trigger,) = automation["triggers"]
    assert mqtt.topic_matches_sub(trigger["topic"], topic)
    # Its own decisions do not trigger it again.
    assert not mqtt.topic_matches_sub(trigger["topic"], f"{HOLD_TOPIC}/confirm")
    (condition,) = automation["conditions"]
    context = {"trigger": _trigger(topic, payload)}
    assert _render(condition["value_template"], **context) == str(asks)


@pytest.mark.parametrize("pressed", ["confirm", "reject"])
def test_the_phone_automation_publishes_the_decision_where_only_an_operator_may(pressed):
    variables_step, notify, wait, publish = _automation(
        "confirm or reject a held action from the phone"
    )["actions"]
    context: dict[str, Any] = {
        "trigger": _trigger(HOLD_TOPIC, json.dumps(HOLD)),
        "context": {"id": "01JABC"},
    }
    variables = {k: _render(v, **context) for k, v in variables_step["variables"].items()}
    assert (variables["device"], variables["task_id"]) == (DEVICE, "t-7")
    context |= variables
    data = notify["data"]
    assert _render(data["title"], **context) == f"{DEVICE} wants to set_irrigation"
    assert '{"zone": 3, "minutes": 20}' in _render(data["message"], **context)
    buttons = [_render(a["action"], **context) for a in data["data"]["actions"]]
    awaited = [_render(t["event_data"]["action"], **context) for t in wait["wait_for_trigger"]]
    assert buttons == awaited == [variables["confirm"], variables["reject"]]
    assert len(set(buttons)) == 2
    # The person pressed one: the event carries its action id.
    action = variables[pressed]
    context["wait"] = {"trigger": {"event": {"data": {"action": action}}}}
    topic = _render(publish["data"]["topic"], **context)
    assert topic == f"edgeagent/{DEVICE}/held/t-7/{pressed}"
    # Only an operator may write there (the role's ACL), never the device itself.
    assert mqtt.topic_matches_sub(f"edgeagent/+/held/+/{pressed}", topic)
    assert not mqtt.topic_matches_sub(f"edgeagent/{DEVICE}/held/+", topic)
    assert publish["data"]["qos"] == 1
    body = json.loads(_render(publish["data"]["payload"], **context))
    assert body == {"by": "homeassistant"}  # NAME: 1-64 printable characters
