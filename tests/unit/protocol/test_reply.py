"""Reply bodies of action tasks: confidence, dispatched, held, reason, cut_short."""

from __future__ import annotations

import json

import pytest

from edgeagent.protocol.hold import Hold, HoldReason, hold_reason
from edgeagent.protocol.reply import (
    ActionInfo,
    OkReply,
    Timing,
    Usage,
    encode,
)

USAGE = Usage(100, 10, 80)
TIMING = Timing(0.1, 1.0, 2.0, 3.1)
OUTPUT = {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}


@pytest.mark.parametrize(
    ("confidence", "cut_short", "floor", "expected"),
    [
        (0.41, False, None, None),  # no floor: dispatched as before
        (None, False, None, None),  # unknown, no floor: dispatched as before
        (0.41, False, 0.8, HoldReason.CONFIDENCE),
        (0.8, False, 0.8, None),  # at the floor is enough
        (0.93, False, 0.8, None),
        (None, False, 0.8, HoldReason.CONFIDENCE_UNKNOWN),  # a floor and no confidence: held
        (0.99, True, None, HoldReason.CUT_SHORT),  # never acted on, floor or not
        (0.2, True, 0.8, HoldReason.CUT_SHORT),
    ],
)
def test_hold_reason(confidence, cut_short, floor, expected):
    assert hold_reason(confidence=confidence, cut_short=cut_short, min_confidence=floor) == expected


def test_a_dispatched_action_reply():
    reply = OkReply("t1", OUTPUT, USAGE, TIMING, "gh1", action=ActionInfo(0.93456, dispatched=True))
    body = reply.to_json()
    assert list(body) == [
        "id", "status", "output", "confidence", "dispatched", "usage", "timing", "device",
    ]  # fmt: skip
    assert body["confidence"] == 0.9346
    assert body["dispatched"] is True
    assert not reply.held


def test_a_held_action_reply_says_why_and_where_it_would_have_gone():
    hold = Hold(HoldReason.CONFIDENCE, 0.41, 0.8, "edgeagent/gh1/actions/set_irrigation")
    info = ActionInfo(0.41, dispatched=False, held=hold, reason="zone 3 is dry")
    reply = OkReply("t1", OUTPUT, USAGE, TIMING, "gh1", action=info, cut_short=False)
    body = json.loads(encode(reply))
    assert reply.held
    assert body["dispatched"] is False
    assert body["held"] == {
        "reason": "confidence",
        "confidence": 0.41,
        "min_confidence": 0.8,
        "topic": "edgeagent/gh1/actions/set_irrigation",
    }
    assert body["reason"] == "zone 3 is dry"
    assert body["output"] == OUTPUT  # the reason is beside the output, never in it
    assert "cut_short" not in body


def test_unknown_confidence_and_cut_short():
    hold = Hold(HoldReason.CUT_SHORT, None, None)
    reply = OkReply(
        "t1",
        OUTPUT,
        USAGE,
        TIMING,
        "gh1",
        action=ActionInfo(None, dispatched=False, held=hold),
        cut_short=True,
    )
    body = reply.to_json()
    assert body["confidence"] is None
    assert body["held"] == {"reason": "cut_short", "confidence": None, "min_confidence": None}
    assert body["cut_short"] is True


def test_schema_replies_have_no_action_fields():
    body = OkReply("t1", {"city": "Porto"}, USAGE, TIMING, "gh1").to_json()
    assert not {"confidence", "dispatched", "held", "reason", "cut_short"} & set(body)
    cut = OkReply("t1", {"city": "Porto"}, USAGE, TIMING, "gh1", cut_short=True).to_json()
    assert cut["cut_short"] is True
