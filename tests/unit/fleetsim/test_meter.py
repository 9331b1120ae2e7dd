"""The simulator's traffic meter: kinds from topics, rates between readings."""

from __future__ import annotations

import pytest

from edgeagent.fleetsim.meter import KINDS, Reading, kind_of, rates

PREFIXES = {"prefix": "edgeagent", "discovery_prefix": "homeassistant", "reply_prefix": "replies"}


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        ("edgeagent/sim-0001/heartbeat", "heartbeat"),
        ("edgeagent/sim-0001/status", "status"),
        ("edgeagent/sim-0001/tasks", "tasks"),
        ("edgeagent/fleet/tasks", "tasks"),
        ("edgeagent/sim-0001/results/t-1", "replies"),
        ("replies/fleetsim-1a2b", "replies"),
        ("homeassistant/sensor/edgeagent_sim-0001/state/config", "discovery"),
        ("edgeagent/sim-0001/last_action", "other"),
        ("edgeagent/sim-0001/actions/notify", "other"),
        ("elsewhere/x/heartbeat", "other"),
        ("edgeagent/a/b/heartbeat", "other"),
    ],
)
def test_kind_of(topic, kind):
    assert kind_of(topic, **PREFIXES) == kind


def _reading(at: float, heartbeats: int, sys: dict[str, float]) -> Reading:
    messages = dict.fromkeys(KINDS, 0) | {"heartbeat": heartbeats}
    sizes = dict.fromkeys(KINDS, 0) | {"heartbeat": 400 * heartbeats}
    return Reading(at, messages, sizes, sys, sys_at=at - 0.5)


def test_rates_by_kind_and_at_the_broker():
    start = _reading(100.0, 10, {"messages_sent": 50.0, "bytes_sent": 1000.0})
    end = _reading(110.0, 60, {"messages_sent": 250.0, "bytes_sent": 3000.0})
    traffic = rates(start, end)
    assert traffic["window_s"] == 10.0
    assert traffic["by_kind"]["heartbeat"] == {"messages_per_s": 5.0, "bytes_per_s": 2000.0}
    assert traffic["by_kind"]["tasks"] == {"messages_per_s": 0.0, "bytes_per_s": 0.0}
    assert (traffic["messages_per_s"], traffic["bytes_per_s"]) == (5.0, 2000.0)
    assert traffic["broker"] == {"messages_sent_per_s": 20.0, "bytes_sent_per_s": 200.0}


def test_broker_counters_older_than_the_window_are_left_out():
    """$SYS arrives once a second: a value from before the window's start says nothing."""
    start = _reading(100.0, 0, {"messages_sent": 50.0})
    end = Reading(100.4, start.messages, start.bytes, {"messages_sent": 80.0}, sys_at=99.9)
    assert rates(start, end)["broker"] == {}


def test_a_broker_counter_that_went_back_is_left_out():
    """$SYS counters start again from 0 when the broker restarts."""
    start = _reading(0.0, 0, {"messages_sent": 500.0})
    end = _reading(5.0, 0, {"messages_sent": 20.0})
    assert rates(start, end)["broker"] == {}
