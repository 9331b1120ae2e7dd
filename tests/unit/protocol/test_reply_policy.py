"""The reply-topic policy: where a caller may make this device publish."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.reply_policy import (
    MQTT_TOPIC_MAX_BYTES,
    ReplyPolicy,
    check_reply_topic,
    topic_name_problem,
)

POLICY = ReplyPolicy(fleet_prefix="edgeagent", device="dev1")
WIDE = ReplyPolicy(
    fleet_prefix="edgeagent",
    device="dev1",
    allowed_prefixes=("replies", "edgeagent", "home"),
    max_bytes=MQTT_TOPIC_MAX_BYTES,
)


@pytest.mark.parametrize(
    "topic",
    [
        "replies/me",  # mosquitto_rr -e replies/me
        "replies/client-7/3f2a",
        "replies",
        "replies/",
        "replies/Gewächshaus/温室",
        "edgeagent/dev1/results/task-1",  # this device's own results topic
    ],
)
def test_reply_topics_that_are_allowed(topic):
    assert check_reply_topic(topic, POLICY) == topic


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("", "non-empty"),
        (None, "non-empty"),
        (b"replies/me", "non-empty"),
        ("replies/#", "wildcards"),
        ("replies/+/x", "wildcards"),
        ("$SYS/broker", "'$' topic"),
        ("$share/g/replies/x", "'$' topic"),
        ("replies/\x01x", "control characters (U+0001)"),
        ("replies/\x00", "control characters"),
        ("replies/\x7f", "control characters (U+007F)"),
        ("replies/\x85", "control characters (U+0085)"),
        ("replies/\ud800", "surrogates (U+D800)"),
        ("replies/\udfff", "surrogates"),
        ("replies/\ufdd0", "non-characters (U+FDD0)"),
        ("replies/\ufffe", "non-characters"),
        ("replies/\U0010ffff", "non-characters"),
        ("replies/" + "x" * 300, "bytes of UTF-8, the limit is 256"),
        ("replies/" + "é" * 125, "bytes of UTF-8"),  # 258 bytes, 133 characters
        ("repliesX/me", "allowed reply prefix"),
        ("other/topic", "allowed reply prefix"),
        ("edgeagent/dev1/tasks", "fleet prefix"),
        ("edgeagent/dev1/actions/open_vent", "fleet prefix"),
        ("edgeagent/dev2/actions/open_vent", "fleet prefix"),
        ("edgeagent/dev2/status", "fleet prefix"),
        ("edgeagent/dev1/heartbeat", "fleet prefix"),
        ("edgeagent/dev1/errors", "fleet prefix"),
        ("edgeagent/fleet/tasks", "fleet prefix"),
        ("edgeagent/dev2/results/x", "fleet prefix"),  # another device's results
        ("edgeagent", "fleet prefix"),
    ],
)
def test_reply_topics_that_are_refused(topic, why):
    with pytest.raises(EdgeAgentError) as info:
        check_reply_topic(topic, POLICY)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.message.startswith("reply_to ")
    assert why in info.value.message


def test_the_fleet_rule_holds_whatever_prefixes_are_allowed():
    for topic in ("edgeagent/dev2/actions/open_vent", "edgeagent/dev1/status", "$SYS/x"):
        assert WIDE.refusal(topic) is not None
    assert WIDE.refusal("home/replies/x") is None
    assert WIDE.refusal("edgeagent/dev1/tasks") is not None  # listed, still refused


def test_response_topic_is_named_in_the_error():
    with pytest.raises(EdgeAgentError) as info:
        check_reply_topic("replies/#", POLICY, field="response_topic")
    assert info.value.message.startswith("response_topic ")
    assert info.value.details == {"field": "response_topic"}


def test_no_allowed_prefix_refuses_every_caller_address():
    closed = ReplyPolicy(fleet_prefix="edgeagent", device="dev1", allowed_prefixes=())
    assert "no reply prefixes" in (closed.refusal("replies/me") or "")
    assert closed.refusal("edgeagent/dev1/results/1") is None


def test_the_mqtt_limit_holds_whatever_max_bytes_says():
    huge = ReplyPolicy(fleet_prefix="f", device="d", max_bytes=10**9)
    assert huge.refusal("replies/" + "x" * MQTT_TOPIC_MAX_BYTES) is not None
    assert huge.refusal("replies/" + "x" * (MQTT_TOPIC_MAX_BYTES - 8)) is None


def _publishable(topic: str) -> bool:
    """What a topic must be for paho and mosquitto to publish it without complaint."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return (
        0 < size <= MQTT_TOPIC_MAX_BYTES
        and not topic.startswith("$")
        and "+" not in topic
        and "#" not in topic
        and all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in topic)
    )


FLEET_LEVELS = st.sampled_from(
    ["tasks", "status", "heartbeat", "errors", "actions/open_vent", "results/x"]
)


@settings(max_examples=500, deadline=None, database=None)
@given(st.text(max_size=80) | st.text(alphabet="replies/#+$\x00\x01\ud800\ufffe", max_size=20))
def test_whatever_passes_is_publishable_and_allowed(topic):
    if WIDE.refusal(topic) is None:
        assert _publishable(topic)
        assert topic.split("/")[0] != "edgeagent" or topic.startswith("edgeagent/dev1/results/")
    if POLICY.refusal(topic) is None:
        assert topic == "replies" or topic.startswith(("replies/", "edgeagent/dev1/results/"))


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1, max_size=12), FLEET_LEVELS)
def test_no_device_topic_is_a_reply_address(device, level):
    assume("/" not in device)
    topic = f"edgeagent/{device}/{level}"
    allowed = WIDE.refusal(topic) is None
    assert allowed == (device == "dev1" and level == "results/x" and _publishable(topic))


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=40))
def test_topic_name_problem_never_raises(topic):
    problem = topic_name_problem(topic)
    assert problem is None or isinstance(problem, str)
