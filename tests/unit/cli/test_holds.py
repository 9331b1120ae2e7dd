"""The operator's CLI for held actions: holds read defensively, bounded, printed safely;
decisions validated before anything is published (no broker: test_holds_cli.py has one)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.daemon import write_config

from edgeagent.cli.held_message import MAX_ARGS_TEXT, read_hold
from edgeagent.cli.holds import EXIT_TIMEOUT, _exit_code, decider, decision_body, topic_level
from edgeagent.cli.holds_view import MAX_HOLDS, HoldWatch, render_table, sorted_holds
from edgeagent.config import load_config
from edgeagent.errors import EdgeAgentError, ErrorCode

HOLD = {
    "task_id": "t-7",
    "device": "gh-01",
    "action": "set_irrigation",
    "args": {"zone": 3, "minutes": 20},
    "confidence": 0.62,
    "why": "confidence",
    "input": "Zone 3 is dry",
    "held_at": "2026-12-07T04:10:00Z",
    "expires_at": "2026-12-07T05:10:00Z",
}
NOW = datetime(2026, 12, 7, 4, 40, tzinfo=UTC).timestamp()


def _read(payload: object, device: str = "gh-01", task_id: str = "t-7"):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return read_hold(device, task_id, raw)


def test_a_hold_is_read_and_shown():
    hold = _read(HOLD)
    assert (hold.device, hold.task_id, hold.action) == ("gh-01", "t-7", "set_irrigation")
    assert hold.args == '{"zone":3,"minutes":20}'
    assert hold.problem is None
    table = render_table([hold], now=NOW)
    assert (
        'gh-01   t-7   set_irrigation  {"zone":3,"minutes":20}  0.62  confidence  in 30m' in table
    )


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not json", "hold is not JSON (JSONDecodeError)"),
        (b"[1]", "hold is not a JSON object"),
        (b"{" * 50, "hold nested deeper than 8 levels"),
        (b" " * 20_000, "hold of 20000 bytes, over 16384"),
        (b'{"confidence": NaN}', "hold is not JSON (ValueError)"),
        ({**HOLD, "confidence": 7}, "bad hold field: confidence"),
        ({**HOLD, "args": [1, 2]}, "bad hold field: args"),
        ({**HOLD, "action": 5, "why": None}, "bad hold field: action"),
        ({**HOLD, "device": "gh-02"}, "payload names device gh-02"),
        ({**HOLD, "task_id": "t-8"}, "payload names task t-8"),
    ],
)
def test_a_bad_hold_keeps_its_row_and_says_why(payload, problem):
    hold = _read(payload)
    assert (hold.device, hold.task_id) == ("gh-01", "t-7")  # from the topic
    assert hold.problem == problem


def test_every_text_from_the_device_is_printable():
    hostile = {
        **HOLD,
        "action": "\x1b[2J\x1b]0;pwned\x07",
        "args": {"x": "\u202eevil\x1b[31m"},
        "input": "a\u2028b",
    }
    hold = _read(hostile, device="gh\x1b[1m", task_id="t\u202e7")
    shown = render_table([hold], now=NOW) + json.dumps(hold.__repr__())
    assert "\x1b" not in shown
    assert "\u202e" not in shown
    assert "\u2028" not in shown
    assert hold.device == "gh\\x1b[1m"
    assert len(_read({**HOLD, "args": {"k": "v" * 5000}}).args or "") <= MAX_ARGS_TEXT


def test_expiry_and_order():
    later = _read(
        {**HOLD, "held_at": "2026-12-07T04:20:00Z", "expires_at": "not a time"}, task_id="a"
    )
    expired = _read({**HOLD, "expires_at": "2026-12-07T04:00:00+00:00"}, task_id="b")
    other = _read(HOLD, device="gh-00", task_id="c")
    rows = sorted_holds({(h.device, h.task_id): h for h in (later, expired, other)})
    assert [h.task_id for h in rows] == ["c", "b", "a"]
    table = render_table(rows, now=NOW)
    assert "expired" in table
    assert " ? " in table


@pytest.fixture
def watch(tmp_path: Path) -> HoldWatch:
    cfg = load_config(write_config(tmp_path / "c.toml", model=tmp_path / "m.gguf"))
    return HoldWatch(cfg, None)


def test_the_view_is_bounded_and_follows_clearing(watch):
    payload = json.dumps(HOLD).encode()
    for index in range(MAX_HOLDS + 5):
        assert watch.handle(f"edgeagent/flood/held/t-{index}", payload)
    holds, left_out = watch.snapshot()
    assert (len(holds), left_out) == (MAX_HOLDS, 5)
    assert "(5 more not shown: over 1000 holds)" in render_table([], now=NOW, left_out=left_out)
    assert watch.handle("edgeagent/flood/held/t-0", b"")  # resolved: gone
    assert not watch.handle("edgeagent/flood/held/t-0", b"")  # nothing to clear twice
    assert ("flood", "t-0") not in watch.snapshot()[0]
    assert not watch.handle("edgeagent/flood/held/t-1/confirm", payload)  # not a hold
    assert not watch.handle("edgeagent//held/t-1", payload)


@pytest.mark.parametrize("level", ["", "a/b", "+", "#", "a\x00", "\x1b[2J", "x" * 257])
def test_a_device_or_task_that_is_not_one_topic_level_is_refused(level):
    with pytest.raises(EdgeAgentError) as raised:
        topic_level(level, "TASK")
    assert raised.value.code == ErrorCode.INVALID_REQUEST


def test_decision_bodies():
    assert decision_body("alice") == {"by": "alice"}
    assert decision_body("alice", args='{"zone": 2}') == {"by": "alice", "args": {"zone": 2}}
    assert decision_body("alice", note="rain") == {"by": "alice", "note": "rain"}
    for bad in ("[1]", "nope", "null"):
        with pytest.raises(EdgeAgentError):
            decision_body("alice", args=bad)
    with pytest.raises(EdgeAgentError):
        decision_body("alice", note="n" * 201)


def test_the_decider_is_the_local_user_by_default(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "pi")
    assert decider(None) == "pi"
    assert decider("Alice B.") == "Alice B."
    for bad in ("", "x" * 65, "tab\there"):
        with pytest.raises(EdgeAgentError):
            decider(bad)


def test_exit_codes():
    assert _exit_code(EdgeAgentError(ErrorCode.TIMEOUT, "late")) == EXIT_TIMEOUT == 3
    assert _exit_code(EdgeAgentError(ErrorCode.INVALID_REQUEST, "bad")) == 2
    assert _exit_code(EdgeAgentError(ErrorCode.INTERNAL, "odd")) == 1
