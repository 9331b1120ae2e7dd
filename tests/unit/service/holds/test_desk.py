"""The hold desk on a fake broker: holds opened, confirmed, edited, rejected, expired.

Each test runs a daemon from fakes (support/hold_parts.py) on a real task store file;
set_irrigation answers are held (a confidence floor and no confidence known).
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs
from support.aio import run
from support.fake_link import FakeLink
from support.hold_parts import ACTION, ERRORS, START, TOPICS, HoldParts, held_config, held_task

from edgeagent.mqtt.incoming import Incoming
from edgeagent.service.holds.hold_metrics import HoldMetrics
from edgeagent.service.holds.resolution import HoldResolution

RESULT = "edgeagent/dev1/results/t1"


async def open_hold(parts: HoldParts, task_id: str = "t1", **extra) -> dict:
    parts.link.deliver(held_task(task_id, **extra))
    return await parts.held(task_id)


async def acked(parts: HoldParts, message: Incoming) -> None:
    await parts.link.wait_until(lambda: message in parts.link.acked)


def test_a_held_dispatch_action_becomes_a_pending_hold_after_its_reply(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        notice = await open_hold(parts)
        (reply,) = parts.link.bodies(RESULT)
        assert reply["dispatched"] is False
        assert reply["held"]["reason"] == "confidence_unknown"
        # The reply was stored (and sent) before the notice.
        first = parts.link.published.index(parts.link.on(RESULT)[0])
        assert first < parts.link.published.index(parts.link.on(TOPICS.held("t1"))[0])
        assert parts.link.on(TOPICS.held("t1"))[0].retain
        assert notice == {
            "task_id": "t1",
            "device": "dev1",
            "action": "set_irrigation",
            "args": {"zone": 3, "minutes": 20},
            "confidence": None,
            "act_confidence": None,
            "why": "confidence_unknown",
            "input": "Water zone 3 for 20 minutes",
            "held_at": "2027-01-15T08:00:00Z",
            "expires_at": "2027-01-15T09:00:00Z",
        }
        assert parts.holds.heartbeat() == {
            "held": 1,
            "latest_hold": {
                "task_id": "t1",
                "action": "set_irrigation",
                "args": {"zone": 3, "minutes": 20},
                "confidence": None,
                "expires_at": "2027-01-15T09:00:00Z",
            },
        }
        assert parts.daemon.telemetry.heartbeat()["held"] == 1
        assert parts.link.on(ACTION) == []
        await parts.crash()

    run(scenario())


def test_a_reply_only_action_and_an_unheld_one_open_no_hold(tmp_path):
    cfg = held_config(catalog={"min_confidence": None})

    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3", cfg=cfg).start()
        parts.link.deliver(held_task("go"))
        await parts.link.wait_for_publish(ACTION)
        await parts.link.wait_for_acks(1)
        assert parts.holds.heartbeat() == {"held": 0, "latest_hold": None}
        assert parts.link.on(TOPICS.held("go")) == []
        await parts.crash()

    async def reply_only():
        parts = await HoldParts(tmp_path / "k.sqlite3").start()
        parts.link.deliver({"id": "n1", "input": "Say hi", "action": "notify"})
        await parts.link.wait_for_acks(1)
        (reply,) = parts.link.bodies("edgeagent/dev1/results/n1")
        assert "held" in reply  # held, but there is nothing to confirm
        assert parts.holds.heartbeat()["held"] == 0
        await parts.crash()

    run(scenario())
    run(reply_only())


def test_confirm_dispatches_once_answers_follows_up_and_clears_the_notice(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3", link=FakeLink(auto_confirm=True)).start()
        await open_hold(parts)
        parts.link.auto_confirm = False
        command = parts.confirm(response_topic="replies/ops", correlation_data=b"c1")
        (action,) = await parts.link.wait_for_publish(ACTION)
        assert action.body == {
            "id": "t1",
            "device": "dev1",
            "action": "set_irrigation",
            "args": {"zone": 3, "minutes": 20},
        }
        await asyncio.sleep(0.05)
        assert command not in parts.link.acked  # not before the action's PUBACK
        assert parts.link.on("replies/ops") == []  # the answer says what the broker did
        parts.link.auto_confirm = True
        parts.link.confirm(action)
        await parts.link.wait_until(lambda: command in parts.link.acked)
        (answer,) = parts.link.on("replies/ops")
        assert answer.correlation_data == b"c1"
        assert answer.body == {
            "ok": True,
            "task_id": "t1",
            "decision": "confirmed",
            "dispatched": True,
        }
        follow_up = (await parts.link.wait_for_publish(RESULT, 2))[1].body
        assert follow_up["dispatched"] is True
        assert follow_up["held"]["reason"] == "confidence_unknown"
        assert follow_up["resolution"] == {
            "decision": "confirmed",
            "by": "alice",
            "at": "2027-01-15T08:00:00Z",
        }
        assert list(follow_up).index("resolution") == list(follow_up).index("held") + 1
        await parts.link.wait_until(lambda: parts.notices()[-1:] == [""])
        assert parts.link.on(TOPICS.held("t1"))[-1].retain
        assert parts.holds.heartbeat() == {"held": 0, "latest_hold": None}
        assert len(parts.link.on(ACTION)) == 1
        await parts.crash()

    run(scenario())


def test_an_edit_dispatches_the_operators_arguments(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        await open_hold(parts)
        with capture_logs() as logs:
            parts.confirm(body={"by": "alice", "args": {"zone": 3, "minutes": 5}})
            (action,) = await parts.link.wait_for_publish(ACTION)
            follow_up = (await parts.link.wait_for_publish(RESULT, 2))[1].body
        assert action.body["args"] == {"zone": 3, "minutes": 5}
        assert follow_up["output"]["args"] == {"zone": 3, "minutes": 5}
        assert follow_up["resolution"]["decision"] == "edited"
        assert follow_up["resolution"]["args"] == {"zone": 3, "minutes": 5}
        (line,) = [e for e in logs if e["event"] == "hold resolved"]
        assert line["decision"] == "edited"
        assert line["edits"] == ["minutes"]
        assert line["by"] == "alice"
        await parts.crash()

    run(scenario())


def test_the_same_arguments_are_a_confirmation_and_invalid_ones_keep_the_hold(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        await open_hold(parts)
        for args in (
            {"zone": "three", "minutes": 5},
            {"zone": 3},
            {"zone": 3, "minutes": 5, "x": 1},
        ):
            await acked(parts, parts.confirm(body={"by": "alice", "args": args}))
        errors = parts.link.bodies(ERRORS)
        assert [e["error"]["code"] for e in errors] == ["INVALID_REQUEST"] * 3
        assert all(e["id"] == "t1" for e in errors)
        assert parts.link.on(ACTION) == []
        assert parts.holds.heartbeat()["held"] == 1
        parts.confirm(body={"by": "alice", "args": {"minutes": 20, "zone": 3}})
        await parts.link.wait_for_publish(ACTION)
        follow_up = (await parts.link.wait_for_publish(RESULT, 2))[1].body
        assert follow_up["resolution"]["decision"] == "confirmed"
        assert "args" not in follow_up["resolution"]
        await parts.crash()

    run(scenario())


def test_reject_dispatches_nothing_and_tells_the_requester(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        await open_hold(parts)
        with capture_logs() as logs:
            parts.reject(body={"by": "bob", "note": "raining anyway"})
            follow_up = (await parts.link.wait_for_publish(RESULT, 2))[1].body
        assert follow_up["dispatched"] is False
        assert follow_up["resolution"]["decision"] == "rejected"
        assert follow_up["resolution"]["by"] == "bob"
        assert follow_up["output"]["args"] == {"zone": 3, "minutes": 20}
        (line,) = [e for e in logs if e["event"] == "hold resolved"]
        assert line["note"] == "raining anyway"
        await parts.link.wait_until(lambda: parts.notices()[-1:] == [""])
        assert parts.link.on(ACTION) == []
        await parts.crash()

    run(scenario())


def test_a_late_command_is_told_who_resolved_the_hold(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        await open_hold(parts)
        parts.reject()
        await parts.link.wait_for_publish(RESULT, 2)
        parts.confirm(response_topic="replies/ops", correlation_data=b"late")
        (answer,) = await parts.link.wait_for_publish("replies/ops")
        assert answer.body["error"]["code"] == "HOLD_RESOLVED"
        assert answer.body["error"]["details"]["by"] == "bob"
        assert answer.body["error"]["details"]["decision"] == "rejected"
        assert "rejected by bob" in answer.body["error"]["message"]
        assert parts.link.bodies(ERRORS)[-1]["error"]["code"] == "HOLD_RESOLVED"
        parts.confirm("nope")
        await parts.link.wait_for_publish(ERRORS, 2)
        assert parts.link.bodies(ERRORS)[-1]["error"]["code"] == "HOLD_UNKNOWN"
        assert parts.link.on(ACTION) == []
        await parts.crash()

    run(scenario())


def test_a_hold_expires_after_its_ttl(tmp_path):
    cfg = held_config(catalog={"hold_ttl_s": 60})

    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3", cfg=cfg).start()
        notice = await open_hold(parts)
        assert notice["expires_at"] == "2027-01-15T08:01:00Z"
        parts.clock.now = START + 61
        parts.holds._wake.set()
        follow_up = (await parts.link.wait_for_publish(RESULT, 2))[1].body
        assert follow_up["resolution"] == {
            "decision": "expired",
            "by": None,
            "at": "2027-01-15T08:01:01Z",
        }
        await parts.link.wait_until(lambda: parts.notices()[-1:] == [""])
        parts.confirm(response_topic="replies/ops")
        (answer,) = await parts.link.wait_for_publish("replies/ops")
        assert answer.body["error"]["code"] == "HOLD_EXPIRED"
        assert parts.link.on(ACTION) == []
        await parts.crash()

    run(scenario())


def test_a_confirm_after_expires_at_expires_the_hold_instead(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        await open_hold(parts)
        parts.clock.now = START + 3600  # the expiry loop has not looked yet
        parts.confirm(response_topic="replies/ops")
        (answer,) = await parts.link.wait_for_publish("replies/ops")
        assert answer.body["error"]["code"] == "HOLD_EXPIRED"
        follow_up = (await parts.link.wait_for_publish(RESULT, 2))[1].body
        assert follow_up["resolution"]["decision"] == "expired"
        assert parts.link.on(ACTION) == []
        await parts.crash()

    run(scenario())


def test_beyond_max_pending_holds_the_oldest_expires_first(tmp_path):
    cfg = held_config(catalog={"max_pending_holds": 2})

    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3", cfg=cfg).start()
        for n in (1, 2, 3):
            parts.clock.now = START + n
            await open_hold(parts, f"h{n}")
        follow_up = (await parts.link.wait_for_publish("edgeagent/dev1/results/h1", 2))[1].body
        assert follow_up["resolution"]["decision"] == "expired"
        heartbeat = parts.holds.heartbeat()
        assert heartbeat["held"] == 2
        assert heartbeat["latest_hold"]["task_id"] == "h3"
        await parts.crash()

    run(scenario())


def test_latest_confirms_the_newest_hold_and_a_stale_press_nothing(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        parts.confirm("latest", response_topic="replies/ops")
        (answer,) = await parts.link.wait_for_publish("replies/ops")
        assert answer.body["error"]["code"] == "HOLD_UNKNOWN"
        await open_hold(parts, "h1")
        await open_hold(parts, "h2")
        parts.confirm("latest", body={"by": "ha", "task_id": "h1"}, response_topic="replies/ops")
        answer = (await parts.link.wait_for_publish("replies/ops", 2))[1]
        assert answer.body["error"]["code"] == "INVALID_REQUEST"
        assert answer.body["error"]["details"] == {"newest": "h2"}
        assert parts.link.on(ACTION) == []
        parts.confirm("latest", body={"by": "ha", "task_id": "h2"}, response_topic="replies/ops")
        (action,) = await parts.link.wait_for_publish(ACTION)
        assert action.body["id"] == "h2"
        answer = (await parts.link.wait_for_publish("replies/ops", 3))[2]
        assert answer.body == {
            "ok": True,
            "task_id": "h2",
            "decision": "confirmed",
            "dispatched": True,
        }
        parts.confirm("latest", body={"by": "ha"})
        await parts.link.wait_for_publish(ACTION, 2)
        assert [a.body["id"] for a in parts.link.on(ACTION)] == ["h2", "h1"]
        await parts.crash()

    run(scenario())


def test_the_learner_hears_every_resolution_and_its_failure_changes_nothing(tmp_path):
    heard: list[HoldResolution] = []

    class Learner:
        def record(self, resolution: HoldResolution) -> None:
            heard.append(resolution)
            raise RuntimeError("the learner's own bug")

    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3", learner=Learner()).start()
        await open_hold(parts)
        parts.confirm(body={"by": "alice", "args": {"zone": 4, "minutes": 20}})
        await parts.link.wait_for_publish(ACTION)
        await parts.link.wait_for_publish(RESULT, 2)
        await parts.link.wait_until(lambda: bool(heard))
        assert heard == [
            HoldResolution(
                task_id="t1",
                text="Water zone 3 for 20 minutes",
                action="set_irrigation",
                args={"zone": 3, "minutes": 20},
                decision="edited",
                final_args={"zone": 4, "minutes": 20},
                by="alice",
                at=START,
            )
        ]
        assert parts.store.degraded is None  # the learner's failure is not the store's
        await parts.crash()

    run(scenario())


def test_the_metrics_count_pending_and_resolved_holds(tmp_path):
    registry = CollectorRegistry()

    async def scenario():
        parts = HoldParts(tmp_path / "j.sqlite3")
        parts.holds._metrics = HoldMetrics(registry)
        await parts.start()
        await open_hold(parts, "h1")
        await open_hold(parts, "h2")
        assert "edgeagent_holds_pending 2.0" in generate_latest(registry).decode()
        parts.reject("h1")
        await parts.link.wait_for_publish("edgeagent/dev1/results/h1", 2)
        await parts.crash()

    run(scenario())
    text = generate_latest(registry).decode()
    assert "edgeagent_holds_pending 1.0" in text
    assert 'edgeagent_holds_resolved_total{decision="rejected"} 1.0' in text
    assert 'edgeagent_holds_resolved_total{decision="expired"} 0.0' in text
