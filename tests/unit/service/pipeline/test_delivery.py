"""Delivery against a fake broker: PUBACKs, refusals, lost connections, crashes at each step.

A "crash" stops every task of a Parts dead (like SIGKILL) and a new Parts opens the
same store file, as the restarted daemon would; the fake broker then redelivers the
unacknowledged message with DUP set.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from structlog.testing import capture_logs
from support.aio import run
from support.fake_engine import SCHEMA
from support.fake_link import NOT_AUTHORIZED, FakeLink
from support.service_parts import Parts

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.batch_rule import BatchRule
from edgeagent.protocol.hold import Hold, HoldReason
from edgeagent.protocol.reply import (
    ActionInfo,
    ActionMessage,
    ErrorReply,
    OkReply,
    ReplyRoute,
    Timing,
    Usage,
)
from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.delivery import Delivery
from edgeagent.service.pipeline.ledger import Ledger, Waiting
from edgeagent.service.pipeline.plan import Plan
from edgeagent.service.pipeline.task_records import Confirmation
from edgeagent.service.pipeline.taskstore import TaskStore

TOPICS = Topics("edgeagent", "dev1", "edgeagent")
RESULT = "edgeagent/dev1/results/t1"
ACTION = "edgeagent/dev1/actions/set_irrigation"
ERRORS = "edgeagent/dev1/errors"
SCHEMA_TASK = {"id": "t1", "input": "Porto, 21 degrees", "schema": SCHEMA}
ACTION_TASK = {"id": "t1", "input": "Water zone 3 for 20 minutes", "action": "set_irrigation"}


def test_ack_only_after_a_successful_puback():
    async def scenario():
        parts = await Parts.on(link=FakeLink(auto_confirm=False)).start()
        message = parts.link.deliver(SCHEMA_TASK)
        (reply,) = await parts.link.wait_for_publish(RESULT)
        assert reply.body["status"] == "ok"
        assert parts.link.ack_attempts == []
        assert (await parts.record("t1")).reply_state is Confirmation.PENDING
        parts.link.confirm(reply)
        assert await parts.link.wait_for_acks(1) == [message]
        assert (await parts.record("t1")).reply_state is Confirmation.CONFIRMED
        await parts.crash()

    run(scenario())


def test_action_then_reply_then_ack_in_that_order():
    """The reply waits for the action's PUBACK: its `dispatched` says what the broker did."""

    async def scenario():
        parts = await Parts.on(link=FakeLink(auto_confirm=False)).start()
        parts.link.deliver(ACTION_TASK)
        (action,) = await parts.link.wait_for_publish(ACTION)
        assert action.body == {
            "id": "t1",
            "device": "dev1",
            "action": "set_irrigation",
            "args": {"zone": 3, "minutes": 20},
        }
        await asyncio.sleep(0.05)
        assert parts.link.on(RESULT) == []  # the reply waits for the action's PUBACK
        parts.link.confirm(action)
        (reply,) = await parts.link.wait_for_publish(RESULT)
        assert reply.body["dispatched"] is True
        assert reply.body["output"] == {k: action.body[k] for k in ("action", "args")}
        assert parts.link.acked == []
        parts.link.confirm(reply)
        await parts.link.wait_for_acks(1)
        record = await parts.record("t1")
        assert (record.reply_state, record.action_state) == (
            Confirmation.CONFIRMED,
            Confirmation.CONFIRMED,
        )
        await parts.crash()

    run(scenario())


def test_a_refused_reply_is_reported_and_never_marked_replied():
    async def scenario():
        parts = await Parts.on().start()
        parts.link.refuse[RESULT] = NOT_AUTHORIZED
        with capture_logs() as logs:
            message = parts.link.deliver(SCHEMA_TASK)
            await parts.link.wait_for_acks(1)
        assert parts.link.acked == [message]  # sending it again would be refused again
        assert (await parts.record("t1")).reply_state is Confirmation.REFUSED
        (report,) = parts.link.bodies(ERRORS)
        assert report["id"] == "t1"
        assert report["error"]["code"] == "REPLY_REFUSED"
        assert report["error"]["details"] == {"topic": RESULT, "reason_code": NOT_AUTHORIZED}
        (refused,) = [e for e in logs if e["event"] == "broker refused a publish"]
        assert refused["reason_code"] == NOT_AUTHORIZED
        assert refused["log_level"] == "error"
        await parts.crash()

    run(scenario())


def test_a_refused_action_is_recorded_reported_and_the_reply_says_not_dispatched():
    async def scenario():
        parts = await Parts.on().start()
        parts.link.refuse[ACTION] = NOT_AUTHORIZED
        with capture_logs():
            parts.link.deliver(ACTION_TASK)
            await parts.link.wait_for_acks(1)
        record = await parts.record("t1")
        assert (record.reply_state, record.action_state) == (
            Confirmation.CONFIRMED,
            Confirmation.REFUSED,
        )
        assert parts.link.bodies(ERRORS)[0]["error"]["details"]["topic"] == ACTION
        (reply,) = parts.link.bodies(RESULT)
        assert reply["status"] == "ok"
        assert reply["dispatched"] is False
        assert reply["dispatch_refused"] == {"topic": ACTION}
        assert list(reply)[:5] == ["id", "status", "output", "confidence", "dispatched"]
        # A client's re-send: the same reply, byte for byte, and no second dispatch.
        parts.link.deliver(ACTION_TASK)
        await parts.link.wait_for_acks(2)
        first, again = parts.link.on(RESULT)
        assert again.payload == first.payload
        assert len(parts.link.on(ACTION)) == 1
        await parts.crash()

    run(scenario())


def test_a_redelivery_after_a_refused_action_sends_the_same_refused_reply(tmp_path):
    """Crash after the broker refused the action, before the reply's PUBACK."""
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await Parts.on(path, link=FakeLink(auto_confirm=False)).start()
        message = first.link.deliver(ACTION_TASK)
        (action,) = await first.link.wait_for_publish(ACTION)
        with capture_logs():
            first.link.refuse_publish(action)
            (reply,) = await first.link.wait_for_publish(RESULT)
        await first.crash()
        second = await Parts.on(path).start()
        second.link.redeliver(message)
        await second.link.wait_for_acks(1)
        (again,) = second.link.on(RESULT)
        assert again.payload == reply.payload
        assert again.body["dispatch_refused"] == {"topic": ACTION}
        assert second.link.on(ACTION) == []  # refused once, not dispatched again
        assert second.engine.tasks == []
        await second.crash()

    run(scenario())


def test_a_refused_error_report_is_not_reported_again():
    async def scenario():
        parts = await Parts.on().start()
        parts.link.refuse[ERRORS] = NOT_AUTHORIZED
        with capture_logs():
            parts.link.deliver(b"{not json")  # answered on the errors topic
            await parts.link.wait_for_acks(1)
        assert len(parts.link.on(ERRORS)) == 1
        await parts.crash()

    run(scenario())


def test_disconnect_between_reply_and_ack_leaves_the_task_to_the_broker():
    async def scenario():
        parts = await Parts.on(link=FakeLink(auto_confirm=False)).start()
        message = parts.link.deliver(ACTION_TASK)
        (action,) = await parts.link.wait_for_publish(ACTION)
        parts.link.confirm(action)
        (reply,) = await parts.link.wait_for_publish(RESULT)
        parts.link.disconnect()
        parts.link.confirm(reply)  # paho resent it on the new connection
        await parts.link.wait_until(lambda: len(parts.link.ack_attempts) == 1)
        assert parts.link.acked == []  # that packet id belongs to the dropped connection
        parts.link.reconnect()
        parts.link.redeliver(message)
        await parts.link.wait_for_acks(1)
        assert len(parts.link.on(RESULT)) == 1
        assert len(parts.link.on(ACTION)) == 1
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


@pytest.mark.parametrize(
    ("confirmed_before_crash", "published_after"),
    [
        (0, {RESULT: 1, ACTION: 1}),  # crash before the action's PUBACK: both again
        (1, {RESULT: 1, ACTION: 0}),  # action confirmed, reply not: only the reply
        (2, {RESULT: 0, ACTION: 0}),  # both confirmed, ack lost: only the ack
    ],
)
def test_redelivery_after_a_crash_at_each_step(tmp_path, confirmed_before_crash, published_after):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await Parts.on(path, link=FakeLink(auto_confirm=False)).start()
        message = first.link.deliver(ACTION_TASK)
        for topic in (ACTION, RESULT)[:confirmed_before_crash]:
            (published,) = await first.link.wait_for_publish(topic)
            first.link.confirm(published)
        if confirmed_before_crash < 2:
            await first.link.wait_for_publish((ACTION, RESULT)[confirmed_before_crash])
        else:
            await first.link.wait_until(lambda: len(first.link.ack_attempts) == 1)
        await first.crash()

        second = await Parts.on(path).start()
        again = second.link.redeliver(message)
        assert await second.link.wait_for_acks(1) == [again]
        published = {t: len(second.link.on(t)) for t in (RESULT, ACTION)}
        assert published == published_after
        assert second.engine.tasks == []  # answered from the store, never run again
        if published[RESULT] and first.link.on(RESULT):
            assert second.link.on(RESULT)[0].payload == first.link.on(RESULT)[0].payload
        await second.crash()

    run(scenario())


def test_a_crash_while_running_runs_the_task_again(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await Parts.on(path).start()
        first.engine.hold = True
        message = first.link.deliver(ACTION_TASK)
        await first.engine.running.wait()
        await first.crash()
        second = await Parts.on(path).start()
        second.link.redeliver(message)
        await second.link.wait_for_acks(1)
        assert len(second.engine.tasks) == 1
        assert len(second.link.on(ACTION)) == 1
        assert first.link.on(RESULT) == []
        await second.crash()

    run(scenario())


def test_a_client_resend_gets_the_reply_again_but_the_action_only_once():
    async def scenario():
        parts = await Parts.on().start()
        parts.link.deliver(ACTION_TASK)
        await parts.link.wait_for_acks(1)
        parts.link.deliver(ACTION_TASK)  # a new message, not a redelivery
        await parts.link.wait_for_acks(2)
        first, second = parts.link.on(RESULT)
        assert first.payload == second.payload
        assert len(parts.link.on(ACTION)) == 1
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


def test_a_client_resend_while_the_reply_awaits_its_puback_gets_the_reply_again():
    """The re-send joins the task in flight after its address was served (reply
    published, PUBACK not yet in): it is answered again, not acknowledged in silence."""

    async def scenario():
        parts = await Parts.on(link=FakeLink(auto_confirm=False)).start()
        parts.link.deliver(ACTION_TASK)
        (action,) = await parts.link.wait_for_publish(ACTION)
        parts.link.confirm(action)
        (reply,) = await parts.link.wait_for_publish(RESULT)
        parts.link.deliver(ACTION_TASK)  # the client did not see it yet, and asks again
        await parts.link.wait_until(lambda: len(parts.link.ack_attempts) == 1)
        parts.link.confirm(reply)
        first, again = await parts.link.wait_for_publish(RESULT, count=2)
        parts.link.confirm(again)
        await parts.link.wait_for_acks(2)
        assert again.payload == first.payload
        assert len(parts.link.on(ACTION)) == 1
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


def test_a_full_outgoing_queue_is_retried_not_dropped():
    async def scenario():
        link = FakeLink()
        link.connected.set()
        store = AsyncTaskStore(TaskStore(":memory:", max_age_s=60, max_rows=100))
        delivery = Delivery(
            link=link,
            store=store,
            ledger=Ledger(link),
            topics=TOPICS,
            device="dev1",
            queue_full_backoff_s=0,
        )
        link.queue_full = True
        message = link.message({"id": "x"})
        error = EdgeAgentError(ErrorCode.INVALID_REQUEST, "bad")
        with capture_logs() as logs:
            delivery.answer_once(
                Waiting(message, ReplyRoute(RESULT)), ErrorReply.of("x", "dev1", error)
            )
            await link.wait_until(lambda: link.queue_full_attempts > 0)
            link.queue_full = False
            await link.wait_for_acks(1)
        assert "mqtt outgoing queue full; retrying" in {e["event"] for e in logs}
        assert len(link.on(RESULT)) == 1
        store.close()

    run(scenario())


class FailingAt:
    """A real store whose calls named `failing` raise like a read-only SD card."""

    def __init__(self, failing: str) -> None:
        self._store = TaskStore(":memory:", max_age_s=60, max_rows=100)
        self._failing = failing

    def __getattr__(self, name):
        call = getattr(self._store, name)
        if name != self._failing:
            return call

        def fail(*_args):
            raise sqlite3.OperationalError("attempt to write a readonly database")

        return fail


@pytest.mark.parametrize("failing", ["get", "accept", "finish", "mark_reply", "mark_action"])
def test_store_errors_at_each_call_degrade_but_every_task_is_answered(failing):
    async def scenario():
        store = AsyncTaskStore(FailingAt(failing))
        parts = await Parts.on(store=store).start()
        with capture_logs() as logs:
            parts.link.deliver(ACTION_TASK)
            await parts.link.wait_for_acks(1)
        assert store.degraded is not None
        assert failing in store.degraded
        assert any(e["event"].startswith("task store failed") for e in logs)
        (reply,) = parts.link.bodies(RESULT)
        assert reply["status"] == "ok"
        if failing in {"get", "accept", "finish"}:  # failed before the reply was sent
            assert reply["exactly_once"] is False
        assert len(parts.link.on(ACTION)) == 1
        # Later tasks say it too, refusals included.
        parts.link.deliver({**ACTION_TASK, "id": "t2"})
        with capture_logs():
            parts.link.deliver(b"{not json")
            await parts.link.wait_for_acks(3)
        assert parts.link.bodies("edgeagent/dev1/results/t2")[0]["exactly_once"] is False
        assert parts.link.bodies(ERRORS)[0]["exactly_once"] is False
        await parts.crash()

    run(scenario())


def test_a_task_that_took_the_process_down_twice_is_answered_instead_of_run(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        message = None
        for crash in range(2):
            parts = await Parts.on(path).start()
            parts.engine.hold = True
            if message is None:
                message = parts.link.deliver(ACTION_TASK)
            else:
                parts.link.redeliver(message)
            await parts.engine.running.wait()
            assert (await parts.record("t1")).runs == crash + 1  # counted before it ran
            await parts.crash()
        last = await Parts.on(path).start()
        with capture_logs() as logs:
            again = last.link.redeliver(message)
            await last.link.wait_for_acks(1)
        assert last.link.acked == [again]
        assert last.engine.tasks == []  # not run a third time
        (reply,) = last.link.bodies(RESULT)
        assert reply["error"]["code"] == "INTERNAL"
        assert reply["error"]["message"] == "task aborted the daemon 2 times"
        assert reply["error"]["details"] == {"aborts": 2}
        assert last.link.on(ACTION) == []
        (line,) = [e for e in logs if e["event"].startswith("task aborted the daemon")]
        assert line["log_level"] == "error"
        # A client re-sending it gets the same answer: it would take the daemon down again.
        with capture_logs():
            last.link.deliver(ACTION_TASK)
            await last.link.wait_for_acks(2)
        assert last.link.bodies(RESULT)[1] == reply
        assert last.engine.tasks == []
        await last.crash()

    run(scenario())


def test_queued_tasks_are_not_counted_when_another_one_takes_the_process_down(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def scenario():
        first = await Parts.on(path).start()
        first.engine.hold = True
        first.link.deliver(ACTION_TASK)
        await first.engine.running.wait()
        queued = first.link.deliver({**SCHEMA_TASK, "id": "q"})
        await first.link.wait_until(lambda: len(first.queue) == 1)
        assert (await first.record("q")).runs == 0
        await first.crash()
        # With a limit of one abort, the waiting task still runs: it never ran.
        second = await Parts.on(path, queue={"max_task_aborts": 1}).start()
        second.link.redeliver(queued)
        await second.link.wait_for_acks(1)
        assert second.link.bodies("edgeagent/dev1/results/q")[0]["status"] == "ok"
        await second.crash()

    run(scenario())


def test_a_task_that_aborted_the_process_runs_alone_when_others_are_batched(tmp_path):
    path = tmp_path / "journal.sqlite3"

    def task(n: str) -> dict:
        return {**SCHEMA_TASK, "id": n, "input": f"task {n}"}

    async def scenario():
        first = await Parts.on(path).start()
        first.engine.hold = True
        suspect = first.link.deliver(task("a"))
        await first.engine.running.wait()
        await first.crash()  # "a" was running: counted once
        second = await Parts.on(path).start()
        engine = second.engine
        engine.hold = True
        engine.batching = BatchRule(min_batch=2, max_parallel=4)  # 2..4 tasks together
        second.link.deliver(task("b"))
        second.link.deliver(task("c"))
        await second.link.wait_until(lambda: len(engine.active) == 2)  # b and c together
        second.link.redeliver(suspect)
        # A lane takes "a" from the queue, and it waits for b and c to end.
        gate = second.worker._gate
        await second.link.wait_until(lambda: gate._lone_waiting == 1)
        # In either order: each lane commits its run count off the loop before it starts.
        assert sorted(t.content for t in engine.active) == ["task b", "task c"]
        engine.release()
        await second.link.wait_until(lambda: [t.content for t in engine.active] == ["task a"])
        second.link.deliver(task("d"))  # arrives while "a" runs alone: it waits
        await second.link.wait_until(lambda: len(second.queue) == 0)
        assert [t.content for t in engine.active] == ["task a"]
        assert gate._alone
        engine.release()
        await second.link.wait_until(lambda: [t.content for t in engine.active] == ["task d"])
        engine.release()
        await second.link.wait_for_acks(4)
        assert {t.content for t in engine.beside} == {"task b", "task c"}
        assert (await second.record("a")).runs == 2
        await second.crash()

    run(scenario())


def test_a_held_action_is_stored_without_its_message_and_never_dispatched(tmp_path):
    """Even handed an action message, delivery publishes a held reply only: the store has
    no action for it, so a redelivery after a crash or a re-send cannot dispatch it."""
    path = tmp_path / "journal.sqlite3"
    output = {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}
    hold = Hold(HoldReason.CONFIDENCE, 0.41, 0.8, ACTION)
    reply = OkReply(
        "t1",
        output,
        Usage(100, 10, 0),
        Timing(0.1, 1.0, 2.0, 3.1),
        "dev1",
        action=ActionInfo(0.41, dispatched=False, held=hold),
    )

    async def scenario():
        link = FakeLink()
        link.connected.set()
        store = AsyncTaskStore(TaskStore(path, max_age_s=60, max_rows=100))
        ledger = Ledger(link)
        delivery = Delivery(link=link, store=store, ledger=ledger, topics=TOPICS, device="dev1")
        message = link.message(ACTION_TASK)
        await store.accept("t1", "fp")
        entry = ledger.open("t1", "fp", Waiting(message, ReplyRoute(RESULT)))
        with capture_logs() as logs:
            await delivery.finish(entry, reply, ActionMessage("t1", "dev1", output))
            await link.wait_for_acks(1)
        assert "a held action was handed to delivery; not dispatched" in {e["event"] for e in logs}
        (published,) = link.on(RESULT)
        assert published.body["held"]["reason"] == "confidence"
        assert published.body["dispatched"] is False
        assert link.on(ACTION) == []
        record = await store.get("t1")
        assert record.outcome.action is None
        assert record.action_state is None  # nothing to dispatch, ever
        # A redelivery of the same message gets what the store has: no action.
        plan = Plan.from_record(record, redelivery=True)
        assert plan.action is None
        assert plan.action_topic is None
        store.close()

    run(scenario())


def test_an_action_below_its_floor_is_answered_held_and_never_dispatched(tmp_path):
    """Through the worker: the fake engine knows no confidence, and a floor is set, so the
    action is held; neither a client's re-send nor a redelivery after a crash sends it."""
    path = tmp_path / "journal.sqlite3"
    floor = {"min_confidence": 0.8}

    async def scenario():
        first = await Parts.on(path, catalog=floor).start()
        with capture_logs() as logs:
            message = first.link.deliver(ACTION_TASK)
            await first.link.wait_for_acks(1)
        (line,) = [e for e in logs if e["event"] == "task"]
        assert (line["dispatched"], line["held"]) == (False, "confidence_unknown")
        (reply,) = first.link.bodies(RESULT)
        assert reply["output"] == {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}
        assert reply["confidence"] is None
        assert reply["dispatched"] is False
        assert reply["held"] == {
            "reason": "confidence_unknown",
            "confidence": None,
            "min_confidence": 0.8,
            "topic": ACTION,
        }
        record = await first.record("t1")
        assert record.action_state is None
        first.link.deliver(ACTION_TASK)  # a client's re-send: the stored reply, no action
        await first.link.wait_for_acks(2)
        assert first.link.on(ACTION) == []
        await first.crash()

        second = await Parts.on(path, catalog=floor).start()
        second.link.redeliver(message)
        await second.link.wait_for_acks(1)
        assert second.link.on(ACTION) == []
        assert second.engine.tasks == []
        await second.crash()

    run(scenario())


def test_without_a_floor_the_reply_says_dispatched():
    async def scenario():
        parts = await Parts.on().start()
        parts.link.deliver(ACTION_TASK)
        await parts.link.wait_for_acks(1)
        (reply,) = parts.link.bodies(RESULT)
        assert reply["dispatched"] is True
        assert reply["confidence"] is None
        assert "held" not in reply
        assert len(parts.link.on(ACTION)) == 1
        await parts.crash()

    run(scenario())
