"""Holds across crashes (SIGKILL-like stops of a daemon from fakes) and restarts on the
same task store file: a confirmed action is dispatched exactly once.

A crash here stops everything dead: what was published and not confirmed never reached
the broker (the fake link of the dead process is dropped), nothing is acknowledged, and
the next process's link is a new connection on which the broker redelivers what was not
acknowledged, with DUP set.
"""

from __future__ import annotations

import asyncio

from support.aio import run
from support.fake_link import FakeLink
from support.hold_parts import ACTION, HoldParts, held_task

from edgeagent.service.holds.records import HoldState
from edgeagent.service.pipeline.task_records import Confirmation

RESULT = "edgeagent/dev1/results/t1"


async def first_with_a_hold(path) -> HoldParts:
    first = await HoldParts(path).start()
    first.link.deliver(held_task())
    await first.held()
    await first.link.wait_for_acks(1)
    first.link.auto_confirm = False  # from now on the broker answers nothing
    return first


async def record(parts: HoldParts):
    return await parts.holds._store.get("t1")


def test_a_confirm_cut_off_before_the_actions_puback_dispatches_once_after_a_restart(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await first_with_a_hold(path)
        command = first.confirm(response_topic="replies/ops", correlation_data=b"c")
        await first.link.wait_for_publish(ACTION)  # handed to the link, never confirmed
        assert (await record(first)).action_state is Confirmation.PENDING
        await first.crash()
        assert first.link.acked == [first.link.acked[0]]  # the task's, not the command's

        second = await HoldParts(path).start()
        (action,) = await second.link.wait_for_publish(ACTION)  # resumed from the store
        assert action.body["id"] == "t1"
        again = second.link.redeliver(command)
        await second.link.wait_until(lambda: again in second.link.acked)
        (answer,) = second.link.on("replies/ops")
        assert answer.body == {
            "ok": True,
            "task_id": "t1",
            "decision": "confirmed",
            "dispatched": True,
        }
        assert answer.correlation_data == b"c"
        follow_up = (await second.link.wait_for_publish(RESULT))[0].body
        assert follow_up["dispatched"] is True
        await second.link.wait_until(lambda: second.notices() == [""])
        await asyncio.sleep(0.05)
        assert len(second.link.on(ACTION)) == 1
        done = await record(second)
        assert done.state is HoldState.RESOLVED
        assert (done.action_state, done.followup_state, done.notice_state) == (
            Confirmation.CONFIRMED,
        ) * 3
        await second.crash()

    run(scenario())


def test_a_redelivered_confirm_waits_for_the_resumed_action_before_its_ack(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await first_with_a_hold(path)
        command = first.confirm()
        await first.link.wait_for_publish(ACTION)
        await first.crash()
        second = await HoldParts(path, link=FakeLink(auto_confirm=False)).start()
        (action,) = await second.link.wait_for_publish(ACTION)
        again = second.link.redeliver(command)
        await asyncio.sleep(0.05)
        assert again not in second.link.acked  # the action's PUBACK is still out
        second.link.auto_confirm = True
        second.link.confirm(action)
        await second.link.wait_until(lambda: again in second.link.acked)
        assert len(second.link.on(ACTION)) == 1
        await second.crash()

    run(scenario())


def test_an_action_the_broker_confirmed_and_the_store_recorded_is_never_sent_again(tmp_path):
    """Crash after the action's PUBACK was recorded, before the command was acknowledged:
    the broker delivers the command again; it is answered and acknowledged, nothing more."""
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await first_with_a_hold(path)
        command = first.confirm(response_topic="replies/ops")
        (action,) = await first.link.wait_for_publish(ACTION)
        first.link.confirm(action)
        await first.link.wait_for_publish("replies/ops")  # the answer: never confirmed
        assert (await record(first)).action_state is Confirmation.CONFIRMED
        await first.crash()
        assert command not in first.link.acked

        second = await HoldParts(path).start()
        again = second.link.redeliver(command)
        await second.link.wait_until(lambda: again in second.link.acked)
        assert second.link.bodies("replies/ops")[0]["dispatched"] is True
        await second.link.wait_for_publish(RESULT)
        await asyncio.sleep(0.05)
        assert second.link.on(ACTION) == []
        await second.crash()

    run(scenario())


def test_a_redelivered_latest_confirm_never_confirms_a_newer_hold(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await first_with_a_hold(path)
        command = first.confirm("latest", body={"by": "homeassistant"})
        await first.link.wait_for_publish(ACTION)
        await first.crash()
        second = await HoldParts(path).start()
        second.link.deliver(held_task("t2"))
        await second.held("t2")
        second.link.redeliver(command)
        await second.link.wait_until(lambda: len(second.link.acked) >= 2)
        await asyncio.sleep(0.05)
        assert [a.body["id"] for a in second.link.on(ACTION)] == ["t1"]
        assert second.holds.heartbeat()["latest_hold"]["task_id"] == "t2"
        # A new press (not a redelivery) with the same payload confirms the newer hold.
        second.confirm("latest", body={"by": "homeassistant"})
        await second.link.wait_for_publish(ACTION, 2)
        assert [a.body["id"] for a in second.link.on(ACTION)] == ["t1", "t2"]
        await second.crash()

    run(scenario())


def test_a_redelivered_task_opens_no_second_hold(tmp_path):
    """Crash after the hold was opened, before the task's reply was confirmed: the
    redelivery is answered from the store and the one hold stands."""
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await HoldParts(path, link=FakeLink(auto_confirm=False)).start()
        task = first.link.deliver(held_task())
        await first.held()
        notice = first.notices()[0]
        await first.crash()
        second = await HoldParts(path).start()
        second.link.redeliver(task)
        await second.link.wait_for_acks(1)
        await second.link.wait_until(lambda: second.notices() == [notice])
        assert second.holds.heartbeat()["held"] == 1
        assert len(second.link.on(RESULT)) == 1
        second.confirm()
        await second.link.wait_for_publish(ACTION)
        await second.link.wait_until(lambda: second.notices() == [notice, ""])
        await second.crash()

    run(scenario())


def test_an_expiry_while_the_daemon_was_down_happens_at_start(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await first_with_a_hold(path)
        await first.crash()
        second = HoldParts(path)
        second.clock.now += 3601
        await second.start()
        follow_up = (await second.link.wait_for_publish(RESULT))[0].body
        assert follow_up["resolution"]["decision"] == "expired"
        await second.link.wait_until(lambda: second.notices() == [""])
        assert second.holds.heartbeat()["held"] == 0
        await second.crash()

    run(scenario())
