"""Admission: every incoming message ends in one reply and one ack (or a deliberate non-ack)."""

from __future__ import annotations

import asyncio
import dataclasses

from structlog.testing import capture_logs
from support.fake_engine import SCHEMA
from support.service_parts import Parts

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.request import Request
from edgeagent.service.admission import ContractCache, derived_id
from edgeagent.service.taskstore import Confirmation, TaskState

RESULTS = "edgeagent/dev1/results"
ERRORS = "edgeagent/dev1/errors"
TASK = {"id": "t1", "input": "Porto, 21 degrees", "schema": SCHEMA}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def started(**kwargs) -> Parts:
    return await Parts.on(**kwargs).start()


def redelivery(message):
    return dataclasses.replace(message, dup=True)


def test_unparseable_payload_is_answered_on_the_errors_topic_and_acked():
    async def scenario():
        parts = await started()
        with capture_logs() as logs:
            message = parts.link.deliver(b"{not json")
            await parts.link.wait_for_acks(1)
        (reply,) = parts.link.bodies(ERRORS)
        assert reply["id"] is None
        assert reply["error"]["code"] == "INVALID_REQUEST"
        assert parts.link.acked == [message]
        (line,) = [e for e in logs if e["event"] == "task"]
        assert (line["status"], line["error_code"]) == ("error", "INVALID_REQUEST")
        assert parts.daemon.telemetry.counters.failed == 1
        await parts.crash()

    run(scenario())


def test_an_invalid_request_with_an_id_is_answered_on_its_results_topic():
    async def scenario():
        parts = await started()
        with capture_logs():
            parts.link.deliver({"id": "bad", "input": 5})
            await parts.link.wait_for_acks(1)
        (reply,) = parts.link.bodies(f"{RESULTS}/bad")
        assert reply["error"]["code"] == "INVALID_REQUEST"
        assert await parts.record("bad") is None  # nothing to remember about it
        await parts.crash()

    run(scenario())


def test_an_answer_goes_to_the_response_topic_with_its_correlation_data():
    async def scenario():
        parts = await started()
        parts.link.deliver(TASK, response_topic="replies/a", correlation_data=b"c-1")
        await parts.link.wait_for_acks(1)
        (reply,) = parts.link.on("replies/a")
        assert reply.correlation_data == b"c-1"
        assert reply.body["id"] == "t1"
        assert reply.body["output"] == {"city": "Porto", "celsius": 21.5}
        await parts.crash()

    run(scenario())


def test_a_task_without_id_gets_one_derived_from_payload_and_reply_address():
    async def scenario():
        parts = await started()
        task = {"input": "Porto, 21 degrees", "schema": SCHEMA}
        parts.engine.hold = True
        message = parts.link.deliver(task, response_topic="replies/a", correlation_data=b"c-1")
        await parts.engine.running.wait()
        await parts.admit(redelivery(message))  # the broker sends it again while it runs
        other = parts.link.message(task, response_topic="replies/a", correlation_data=b"c-2")
        await parts.admit(other)
        parts.engine.release()
        await parts.link.wait_until(lambda: len(parts.engine.tasks) == 2)
        parts.engine.release()
        await parts.link.wait_for_acks(3)
        ids = [p.body["id"] for p in parts.link.on("replies/a")]
        assert ids == [derived_id(message), derived_id(other)]
        assert len(ids[0]) == 32
        assert derived_id(message) != derived_id(other)  # other correlation data: other task
        await parts.crash()

    run(scenario())


def test_a_duplicate_id_in_flight_is_answered_once_and_every_delivery_acked_once():
    async def scenario():
        parts = await started()
        parts.engine.hold = True
        first = parts.link.deliver(TASK)
        await parts.engine.running.wait()
        again = redelivery(first)
        await parts.admit(again)
        resent = parts.link.message(TASK)  # a client re-sending the same task
        await parts.admit(resent)
        assert parts.link.ack_attempts == []  # nobody is acked before the reply
        parts.engine.release()
        await parts.link.wait_for_acks(3)
        assert sorted(m.mid for m in parts.link.acked) == sorted([first.mid, again.mid, resent.mid])
        assert len(parts.link.on(f"{RESULTS}/t1")) == 1  # one address, one reply
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


def test_the_same_id_from_another_client_gets_the_reply_on_its_own_address():
    async def scenario():
        parts = await started()
        parts.engine.hold = True
        parts.link.deliver(TASK, response_topic="replies/a", correlation_data=b"a")
        await parts.engine.running.wait()
        await parts.admit(
            parts.link.message(TASK, response_topic="replies/b", correlation_data=b"b")
        )
        parts.engine.release()
        await parts.link.wait_for_acks(2)
        assert [p.correlation_data for p in parts.link.on("replies/a")] == [b"a"]
        assert [p.correlation_data for p in parts.link.on("replies/b")] == [b"b"]
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


def test_a_different_task_under_an_id_in_flight_is_refused():
    async def scenario():
        parts = await started()
        parts.engine.hold = True
        first = parts.link.deliver(TASK, response_topic="replies/a")
        await parts.engine.running.wait()
        with capture_logs():
            intruder = parts.link.deliver(
                {**TASK, "input": "something else"}, response_topic="replies/b"
            )
            await parts.link.wait_for_acks(1)
        assert parts.link.acked == [intruder]
        (refusal,) = parts.link.bodies("replies/b")
        assert refusal["id"] is None  # not to be taken for t1's answer
        assert refusal["error"]["code"] == "INVALID_REQUEST"
        parts.engine.release()
        await parts.link.wait_for_acks(2)
        assert parts.link.acked[1] == first
        assert parts.link.bodies("replies/a")[0]["status"] == "ok"
        # And once t1 is answered, the store refuses the other body too.
        with capture_logs():
            parts.link.deliver({**TASK, "input": "something else"}, response_topic="replies/b")
            await parts.link.wait_for_acks(3)
        assert parts.link.bodies("replies/b")[1]["error"]["code"] == "INVALID_REQUEST"
        await parts.crash()

    run(scenario())


def test_an_answered_task_resent_is_answered_from_the_store():
    async def scenario():
        parts = await started()
        parts.link.deliver(TASK)
        await parts.link.wait_for_acks(1)
        with capture_logs() as logs:
            parts.link.deliver(TASK)
            await parts.link.wait_for_acks(2)
        first, second = parts.link.on(f"{RESULTS}/t1")
        assert first.payload == second.payload
        assert len(parts.engine.tasks) == 1
        assert "task answered from journal" in [e["event"] for e in logs]
        await parts.crash()

    run(scenario())


def test_a_retryable_error_runs_again_on_a_resend_but_not_on_a_redelivery():
    async def scenario():
        parts = await started()
        parts.engine.failure = EdgeAgentError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed")
        late = {**TASK, "deadline_s": 0.5}
        with capture_logs():
            message = parts.link.deliver(late, response_topic="replies/a")
            await parts.link.wait_for_acks(1)
        first = parts.link.on("replies/a")[0]
        assert first.body["error"]["code"] == "DEADLINE_EXCEEDED"
        # The broker redelivers (DUP) the answered message: its reply was confirmed, so
        # it is only acknowledged.
        parts.link.redeliver(message)
        await parts.link.wait_for_acks(2)
        assert len(parts.link.on("replies/a")) == 1
        # Had the crash come before the confirmation was recorded, the redelivery gets
        # the stored error, still without running.
        await parts.store.mark_reply("t1", Confirmation.PENDING)
        parts.link.redeliver(message)
        await parts.link.wait_for_acks(3)
        assert parts.link.on("replies/a")[1].payload == first.payload
        # The client re-sends with a longer deadline (not part of the task's identity).
        parts.link.deliver({**TASK, "deadline_s": 60}, response_topic="replies/a")
        await parts.link.wait_for_acks(4)
        assert parts.link.bodies("replies/a")[2]["status"] == "ok"
        assert len(parts.engine.tasks) == 2  # the first run and the re-send, no redelivery
        await parts.crash()

    run(scenario())


def test_an_unknown_action_is_refused_and_remembered_for_redeliveries():
    async def scenario():
        parts = await started()
        task = {"id": "r1", "input": "x", "action": "launch_rocket"}
        with capture_logs():
            message = parts.link.deliver(task)
            await parts.link.wait_for_acks(1)
        assert parts.link.bodies(f"{RESULTS}/r1")[0]["error"]["code"] == "UNKNOWN_ACTION"
        record = await parts.record("r1")
        assert record.state is TaskState.FINISHED
        assert not record.outcome.replayable  # a re-send is admitted afresh
        await parts.store.mark_reply("r1", Confirmation.PENDING)  # as if cut before the mark
        parts.link.redeliver(message)
        await parts.link.wait_for_acks(2)
        assert len(parts.link.on(f"{RESULTS}/r1")) == 2
        with capture_logs():
            parts.link.deliver(task)  # the client's re-send: admitted (and refused) again
            await parts.link.wait_for_acks(3)
        assert len(parts.link.on(f"{RESULTS}/r1")) == 3
        assert parts.engine.tasks == []
        await parts.crash()

    run(scenario())


def test_paused_and_full_queue_answer_busy():
    async def scenario():
        parts = await started(queue={"size": 1})
        parts.engine.hold = True
        parts.link.deliver({**TASK, "id": "run"})
        await parts.engine.running.wait()
        parts.link.deliver({**TASK, "id": "waits"})
        with capture_logs():
            parts.link.deliver({**TASK, "id": "full"})
            await parts.link.wait_for_acks(1)
        full = parts.link.bodies(f"{RESULTS}/full")[0]
        assert full["error"] == {"code": "BUSY", "message": "queue full (1 tasks waiting)"}
        assert parts.daemon.telemetry.counters.busy == 1
        parts.daemon.admission.pause("available 80 MB is below the minimum")
        with capture_logs():
            parts.link.deliver({**TASK, "id": "paused"})
            await parts.link.wait_for_acks(2)
        paused = parts.link.bodies(f"{RESULTS}/paused")[0]["error"]
        assert paused["code"] == "BUSY"
        assert "available 80 MB" in paused["message"]
        parts.daemon.admission.resume()
        parts.engine.hold = False
        parts.engine.release()
        await parts.link.wait_for_acks(4)
        await parts.crash()

    run(scenario())


def test_the_accept_record_is_written_before_the_task_is_queued():
    async def scenario():
        parts = Parts.on()
        parts.link.start(parts.daemon.admission.offer)  # admission only: nothing runs
        await parts.admit(parts.link.message(TASK))
        assert len(parts.daemon.queue) == 1
        assert (await parts.record("t1")).state is TaskState.ACCEPTED
        await parts.crash()

    run(scenario())


def test_after_close_messages_are_left_to_the_broker():
    async def scenario():
        parts = await started()
        parts.daemon.admission.close()
        parts.link.deliver(TASK)
        await parts.admit(parts.link.message(TASK))
        assert parts.link.published == []
        assert parts.link.ack_attempts == []
        await parts.crash()

    run(scenario())


def test_an_internal_error_in_admission_still_ends_in_a_reply_and_an_ack():
    async def scenario():
        parts = await started()

        def broken(_request, _catalog):
            raise RuntimeError("a bug")

        parts.daemon.admission.contracts.spec_for = broken
        with capture_logs() as logs:
            parts.link.deliver(TASK)
            await parts.link.wait_for_acks(1)
        assert parts.link.bodies(f"{RESULTS}/t1")[0]["error"]["code"] == "INTERNAL"
        assert "internal error admitting a task" in [e["event"] for e in logs]
        assert "t1" not in parts.daemon.admission._inflight
        await parts.crash()

    run(scenario())


def test_contracts_are_compiled_once_and_the_cache_is_bounded():
    compiled: list[object] = []

    def compile_schema(schema):
        compiled.append(schema)
        return object()

    cache = ContractCache(2, compile_schema=compile_schema)

    def request(n: int) -> Request:
        return Request.model_validate(
            {"input": "x", "schema": {"type": "object", "title": f"s{n}"}}
        )

    first = cache.spec_for(request(1), [])
    assert cache.spec_for(request(1), []) is first
    cache.spec_for(request(2), [])
    cache.spec_for(request(1), [])  # used again: now the most recent
    cache.spec_for(request(3), [])  # evicts s2, the least recently used
    assert len(cache) == 2
    cache.spec_for(request(1), [])
    cache.spec_for(request(2), [])
    assert [s["title"] for s in compiled] == ["s1", "s2", "s3", "s2"]
