"""The fleet view at fleet size: sorted and filtered rows, and a bounded device count.

Anyone can publish under the prefix, so the view keeps at most MAX_DEVICES devices (and
leaves out a device its --match does not want before parsing anything of it).
"""

from __future__ import annotations

import io
import json

import paho.mqtt.client as mqtt
import pytest

from edgeagent.cli import fleet as fleet_view
from edgeagent.cli.fleet import FleetWatch, Seen, Selection, make_rows
from edgeagent.cli.fleet_heartbeat import read_heartbeat
from edgeagent.config import Config

NOW = 1_764_403_300.0


def beat(*, age: float = 2.0, state: str = "serving", tokens: float | None = 10.0) -> bytes:
    body = {"state": state, "ts": NOW - age, "tokens_per_s": tokens}
    return json.dumps(body).encode()


def seen(status: str, heartbeat: bytes | None) -> Seen:
    return Seen(status, *read_heartbeat(heartbeat or b""))


FLEET = {
    "gh-01": seen("online", beat(tokens=12.0)),
    "gh-02": seen("online", beat(state="paused", tokens=3.0)),
    "gh-03": seen("offline", beat(age=7200, state="stopped")),
    "gh-04": seen("online", beat(age=300, tokens=9.0)),  # stale: 3 periods of 10 s
    "shed-1": seen("online", None),  # no heartbeat yet: stale, never seen
    "shed-2": seen("online", beat(state="draining", tokens=None)),
}


def _devices(selection: Selection) -> list[str]:
    return [r.device for r in make_rows(FLEET, now=NOW, heartbeat_s=10, selection=selection)]


def test_device_order_is_the_default():
    assert _devices(Selection()) == sorted(FLEET)


def test_state_puts_problems_first_and_stale_rows_first_within_a_state():
    assert _devices(Selection(sort="state")) == [
        "gh-03",  # offline
        "gh-02",  # paused
        "shed-2",  # draining
        "gh-04",  # serving, stale
        "gh-01",  # serving
        "shed-1",  # no state known
    ]


def test_tokens_puts_the_slowest_first_and_the_unknown_last():
    assert _devices(Selection(sort="tokens")) == [
        "gh-02", "gh-04", "gh-03", "gh-01", "shed-1", "shed-2",
    ]  # fmt: skip


def test_age_puts_the_longest_silent_first():
    assert _devices(Selection(sort="age"))[:3] == ["shed-1", "gh-03", "gh-04"]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"offline"}, ["gh-03"]),
        ({"stale"}, ["gh-04", "shed-1"]),
        ({"paused", "draining"}, ["gh-02", "shed-2"]),
    ],
)
def test_state_filter(states, expected):
    assert _devices(Selection(states=frozenset(states))) == expected


def test_a_glob_on_the_device_id():
    assert _devices(Selection(match="shed-*")) == ["shed-1", "shed-2"]
    assert _devices(Selection(match="gh-0[13]", sort="state")) == ["gh-03", "gh-01"]


def _message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


def _config() -> Config:
    return Config.model_validate({"model": {"path": "/nonexistent.gguf"}})


def test_the_view_keeps_at_most_max_devices():
    watch = FleetWatch(_config(), max_devices=3)
    for n in range(5):
        watch._on_message(None, None, _message(f"edgeagent/pi-{n}/heartbeat", beat()))
    assert sorted(watch.seen) == ["pi-0", "pi-1", "pi-2"]
    assert watch.ignored == 2
    # A kept device still updates; a cleared one makes room for another.
    watch._on_message(None, None, _message("edgeagent/pi-1/status", b"online"))
    assert watch.seen["pi-1"].status == "online"
    watch._on_message(None, None, _message("edgeagent/pi-0/heartbeat", b""))
    watch._on_message(None, None, _message("edgeagent/pi-4/heartbeat", beat()))
    assert sorted(watch.seen) == ["pi-1", "pi-2", "pi-4"]


def test_a_device_the_glob_leaves_out_is_never_parsed(monkeypatch):
    parsed: list[bytes] = []

    def counting(payload: bytes):
        parsed.append(payload)
        return read_heartbeat(payload)

    monkeypatch.setattr(fleet_view, "read_heartbeat", counting)
    watch = FleetWatch(_config(), selection=Selection(match="gh-*"))
    watch._on_message(None, None, _message("edgeagent/shed-1/heartbeat", beat()))
    watch._on_message(None, None, _message("edgeagent/gh-1/heartbeat", beat()))
    assert list(watch.seen) == ["gh-1"]
    assert len(parsed) == 1


class _Retained(FleetWatch):
    """A FleetWatch whose retained messages are handed in, not received."""

    def __init__(self, messages: list[tuple[str, bytes]], max_devices: int) -> None:
        super().__init__(_config(), max_devices=max_devices)
        self._retained = messages

    def start(self, timeout: float) -> None:  # noqa: ARG002 - nothing to wait for
        for topic, payload in self._retained:
            self._on_message(None, None, _message(topic, payload))

    def stop(self) -> None:
        pass


def test_run_says_on_stderr_when_devices_were_left_out():
    messages = [(f"edgeagent/pi-{n}/heartbeat", beat()) for n in range(4)]
    out, err = io.StringIO(), io.StringIO()
    code = fleet_view.run(
        _config(),
        as_json=True,
        watch=False,
        timeout=1,
        out=out,
        err=err,
        clock=lambda: NOW,
        fleet=_Retained(messages, max_devices=2),
    )
    assert code == 0
    assert [r["device"] for r in json.loads(out.getvalue())] == ["pi-0", "pi-1"]
    assert "more than 2 devices" in err.getvalue()
