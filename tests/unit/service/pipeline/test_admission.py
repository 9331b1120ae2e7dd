"""Admission: every incoming message ends in one reply and one ack (or a deliberate non-ack)."""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.aio import run
from support.fake_engine import SCHEMA, service_config
from support.fake_link import FakeLink
from support.service_parts import Parts, preparations_done

from edgeagent.config import QueueConfig, SchemaLimits
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.batch_rule import MAX_PARALLEL
from edgeagent.inference.contract import compile_contract as real_compile
from edgeagent.protocol.request import Request
from edgeagent.service.pipeline.admission import RUNNING_TASKS, receive_window
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.compile_threads import CompileThreads
from edgeagent.service.pipeline.contracts import ContractCache
from edgeagent.service.pipeline.crash_budget import CRASH_BUDGET, CRASH_WINDOW_S
from edgeagent.service.pipeline.ledger import COPY_ADDRESSES
from edgeagent.service.pipeline.reading import derived_id
from edgeagent.service.pipeline.task_records import Confirmation, TaskState
from edgeagent.service.pipeline.taskstore import TaskStore

RESULTS = "edgeagent/dev1/results"
ERRORS = "edgeagent/dev1/errors"
TASK = {"id": "t1", "input": "Porto, 21 degrees", "schema": SCHEMA}
LIMITS = SchemaLimits()
UNIT_FILE = Path(__file__).resolve().parents[4] / "systemd" / "edgeagent.service"


async def started(contracts: ContractCache | None = None, **kwargs) -> Parts:
    parts = Parts.on(**kwargs)
    if contracts is not None:
        parts.admission.contracts = contracts
    return await parts.start()


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
        assert parts.telemetry.counters.failed == 1
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
        await parts.link.wait_for_acks(2)  # the same packet twice is acknowledged once
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
        again = redelivery(first)  # the same packet (mid) on the same connection
        await parts.admit(again)
        resent = parts.link.message(TASK)  # a client re-sending the same task
        await parts.admit(resent)
        # The copy for an address already waiting is acknowledged at once (its reply is
        # the one in progress); the first delivery only after the reply.
        assert parts.link.ack_attempts == [resent]
        parts.engine.release()
        await parts.link.wait_for_acks(2)
        assert parts.link.acked == [resent, first]  # the same packet is acked once
        assert len(parts.link.on(f"{RESULTS}/t1")) == 1  # one address, one reply
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


def test_copies_of_a_task_in_flight_do_not_hold_back_other_messages():
    """45 copies of a running task id: each is acknowledged at once, so they cannot fill
    the broker's window of unacknowledged messages, and a refusal sent after them is
    answered while the task still runs. The task's reply goes out once."""

    async def scenario():
        parts = await started()
        parts.engine.hold = True
        first = parts.link.deliver(TASK)
        await parts.engine.running.wait()
        copies = [parts.link.deliver(TASK) for _ in range(45)]
        with capture_logs():
            invalid = parts.link.deliver({"id": "bad", "input": 5})
            await parts.link.wait_for_acks(46)
        assert parts.link.acked == [*copies, invalid]
        assert parts.link.bodies(f"{RESULTS}/bad")[0]["error"]["code"] == "INVALID_REQUEST"
        assert parts.engine.tasks  # still running
        assert first not in parts.link.ack_attempts
        parts.engine.release()
        await parts.link.wait_for_acks(47)
        assert parts.link.acked[-1] == first
        assert len(parts.link.on(f"{RESULTS}/t1")) == 1
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


def test_copies_with_their_own_reply_addresses_are_bounded():
    """A copy for another reply address waits for the reply (it gets it on its own
    address), up to COPY_ADDRESSES addresses; further ones are answered BUSY at once."""

    async def scenario():
        parts = await started()
        parts.engine.hold = True
        parts.link.deliver(TASK, response_topic="replies/a", correlation_data=bytes([0]))
        await parts.engine.running.wait()
        for n in range(1, COPY_ADDRESSES + 2):
            parts.link.deliver(TASK, response_topic="replies/a", correlation_data=bytes([n]))
        with capture_logs():
            await parts.link.wait_for_acks(2)
        busy = [p for p in parts.link.on("replies/a") if p.body["status"] == "error"]
        assert [p.correlation_data for p in busy] == [bytes([4]), bytes([5])]
        assert busy[0].body["error"]["code"] == "BUSY"
        assert busy[0].body["id"] == "t1"
        parts.engine.release()
        await parts.link.wait_for_acks(2 + COPY_ADDRESSES)
        answered = [
            p.correlation_data for p in parts.link.on("replies/a") if p.body["status"] == "ok"
        ]
        assert sorted(answered) == [bytes([n]) for n in range(COPY_ADDRESSES)]
        assert len(parts.engine.tasks) == 1
        await parts.crash()

    run(scenario())


def test_a_copy_on_a_new_connection_is_the_one_acknowledged_after_the_reply():
    """After a reconnect the first delivery's ack is void (its connection is gone): the
    broker's redelivery takes its place, and is acknowledged only after the reply, so
    a crash before the reply still finds it unacknowledged."""

    async def scenario():
        parts = await started()
        parts.engine.hold = True
        first = parts.link.deliver(TASK)
        await parts.engine.running.wait()
        parts.link.reconnect()
        again = parts.link.redeliver(first)
        resent = parts.link.deliver(TASK)
        await parts.link.wait_for_acks(1)
        assert parts.link.acked == [resent]
        parts.engine.release()
        await parts.link.wait_for_acks(2)
        assert parts.link.acked == [resent, again]
        assert first not in parts.link.ack_attempts
        assert len(parts.link.on(f"{RESULTS}/t1")) == 1
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
        assert parts.telemetry.counters.busy == 1
        parts.admission.pause("available 80 MB is below the minimum")
        with capture_logs():
            parts.link.deliver({**TASK, "id": "paused"})
            await parts.link.wait_for_acks(2)
        paused = parts.link.bodies(f"{RESULTS}/paused")[0]["error"]
        assert paused["code"] == "BUSY"
        assert "available 80 MB" in paused["message"]
        parts.admission.resume()
        parts.engine.hold = False
        parts.engine.release()
        await parts.link.wait_for_acks(4)
        await parts.crash()

    run(scenario())


def test_the_accept_record_is_written_before_the_task_is_queued():
    async def scenario():
        parts = Parts.on()
        parts.link.start(parts.admission.offer)  # admission only: nothing runs
        await parts.admit(parts.link.message(TASK))
        assert len(parts.queue) == 1
        assert (await parts.record("t1")).state is TaskState.ACCEPTED
        await parts.crash()

    run(scenario())


def test_after_close_messages_are_left_to_the_broker():
    async def scenario():
        parts = await started()
        parts.admission.close()
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

        parts.admission.contracts.spec_for = broken
        with capture_logs() as logs:
            parts.link.deliver(TASK)
            await parts.link.wait_for_acks(1)
        assert parts.link.bodies(f"{RESULTS}/t1")[0]["error"]["code"] == "INTERNAL"
        assert "internal error admitting a task" in [e["event"] for e in logs]
        assert "t1" not in parts.admission._ledger
        await parts.crash()

    run(scenario())


def test_contracts_are_compiled_once_and_the_cache_is_bounded():
    compiled: list[object] = []

    def compile_contract(_catalog, *, schema=None, action_names=None, limits):
        compiled.append(schema)
        return object()

    cache = ContractCache(2, compile_contract=compile_contract)

    def request(n: int) -> Request:
        return Request.model_validate(
            {"input": "x", "schema": {"type": "object", "title": f"s{n}"}}
        )

    async def scenario():
        first = await cache.spec_for(request(1), [], LIMITS)
        assert await cache.spec_for(request(1), [], LIMITS) is first
        await cache.spec_for(request(2), [], LIMITS)
        await cache.spec_for(request(1), [], LIMITS)  # used again: now the most recent
        await cache.spec_for(request(3), [], LIMITS)  # evicts s2, the least recently used
        assert len(cache) == 2
        await cache.spec_for(request(1), [], LIMITS)
        await cache.spec_for(request(2), [], LIMITS)

    run(scenario())
    assert [s["title"] for s in compiled] == ["s1", "s2", "s3", "s2"]


def test_a_refused_schema_is_remembered_and_not_compiled_again():
    calls = 0

    def compile_contract(_catalog, *, schema=None, action_names=None, limits):
        nonlocal calls
        calls += 1
        raise EdgeAgentError(ErrorCode.SCHEMA_UNSUPPORTED, "no", keyword="uniqueItems")

    cache = ContractCache(compile_contract=compile_contract)
    request = Request.model_validate({"input": "x", "schema": {"uniqueItems": True}})

    async def scenario():
        for _ in range(3):
            with pytest.raises(EdgeAgentError) as refused:
                await cache.spec_for(request, [], LIMITS)
            assert refused.value.code is ErrorCode.SCHEMA_UNSUPPORTED
            assert refused.value.details == {"keyword": "uniqueItems"}

    run(scenario())
    assert calls == 1


def test_contracts_compile_off_the_loop_and_admission_goes_on_meanwhile():
    threads: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def compile_contract(catalog, *, schema=None, action_names=None, limits):
        threads.append(threading.current_thread().name)
        if schema is not None and schema.get("title") == "slow":
            entered.set()
            release.wait(5)  # a slow compile: nothing else may wait for it
        return real_compile(catalog, schema=schema, action_names=action_names, limits=limits)

    async def scenario():
        parts = await started(contracts=ContractCache(compile_contract=compile_contract))
        parts.link.deliver({**TASK, "id": "slow", "schema": {**SCHEMA, "title": "slow"}})
        await asyncio.to_thread(entered.wait, 5)
        # Meanwhile: a refusal, another task and a redelivery of the slow one are handled.
        with capture_logs():
            parts.link.deliver(b"{not json")
            fast = parts.link.deliver({**TASK, "id": "fast"})
            await parts.link.wait_for_acks(2)
        assert [m.mid for m in parts.link.acked] == [fast.mid - 1, fast.mid]
        assert parts.link.bodies(f"{RESULTS}/fast")[0]["status"] == "ok"
        release.set()
        await parts.link.wait_for_acks(3)
        assert parts.link.bodies(f"{RESULTS}/slow")[0]["status"] == "ok"
        assert set(threads) == {"edgeagent-compile"}
        await parts.crash()

    run(scenario())


def test_jobs_keep_their_arrival_order_when_contracts_compile_out_of_it():
    release = threading.Event()

    def compile_contract(catalog, *, schema=None, action_names=None, limits):
        if schema is not None and schema.get("title") == "slow":
            release.wait(5)
        return real_compile(catalog, schema=schema, action_names=action_names, limits=limits)

    async def scenario():
        parts = Parts.on()
        parts.admission.contracts = ContractCache(compile_contract=compile_contract)
        queued: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

        def on_queued() -> None:  # the n-th job queued sets the n-th event
            queued[len(parts.queue) - 1].set()

        parts.admission._on_queued = on_queued
        parts.link.start(parts.admission.offer)
        admitting = asyncio.create_task(parts.admission.run())  # no worker: jobs wait
        parts.link.deliver({**TASK, "id": "first", "schema": {**SCHEMA, "title": "slow"}})
        parts.link.deliver({**TASK, "id": "second"})
        await queued[0].wait()  # "second" is queued while "first" compiles
        release.set()
        await queued[1].wait()
        assert [(await parts.queue.take()).task_id for _ in range(2)] == ["first", "second"]
        admitting.cancel()
        await parts.crash()

    run(scenario())


def test_a_compile_thread_that_cannot_start_answers_busy_and_takes_no_slot(monkeypatch):
    """The unit's TasksMax reached: Thread.start raises. The task is answered BUSY, and
    the slot is not lost: once threads can start again, contracts compile (also after a
    reload), instead of every new contract being BUSY for good."""
    refusals = {"left": 3}
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "edgeagent-compile" and refusals["left"] > 0:
            refusals["left"] -= 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)

    async def scenario():
        threads = CompileThreads(size=2, timeout_s=5)
        parts = await started(contracts=ContractCache(threads=threads))
        with capture_logs():
            for n in range(3):
                parts.link.deliver({**TASK, "id": f"s{n}", "schema": {**SCHEMA, "title": f"{n}"}})
            await parts.link.wait_for_acks(3)
            refused = [parts.link.bodies(f"{RESULTS}/s{n}")[0]["error"] for n in range(3)]
            assert [e["code"] for e in refused] == ["BUSY"] * 3
            assert "cannot start a schema compile thread" in refused[0]["message"]
            assert threads.busy == 0
            parts.admission.reconfigure(parts.cfg)  # what SIGHUP does
            parts.link.deliver({**TASK, "id": "later", "schema": {**SCHEMA, "title": "0"}})
            parts.link.deliver({"id": "a1", "input": "x", "action": "notify"})
            await parts.link.wait_for_acks(5)
        assert parts.link.bodies(f"{RESULTS}/later")[0]["status"] == "ok"
        assert parts.link.bodies(f"{RESULTS}/a1")[0]["status"] == "ok"
        await threads.idle.wait()
        assert threads.busy == 0
        await parts.crash()

    run(scenario())


def test_a_compile_that_takes_too_long_is_refused_and_busy_threads_refuse_more():
    release = threading.Event()
    started_compiles: list[object] = []

    def compile_contract(catalog, *, schema=None, action_names=None, limits):
        started_compiles.append(schema)
        release.wait(10)  # stuck: the thread cannot be stopped
        return real_compile(catalog, schema=schema, action_names=action_names, limits=limits)

    async def scenario():
        threads = CompileThreads(size=2, timeout_s=0.05)
        contracts = ContractCache(compile_contract=compile_contract, threads=threads)
        parts = await started(contracts=contracts)
        with capture_logs():
            for n in range(3):
                parts.link.deliver({**TASK, "id": f"s{n}", "schema": {**SCHEMA, "title": f"{n}"}})
            await parts.link.wait_for_acks(3)
        slow = [parts.link.bodies(f"{RESULTS}/s{n}")[0]["error"] for n in range(3)]
        assert [e["code"] for e in slow] == ["SCHEMA_UNSUPPORTED", "SCHEMA_UNSUPPORTED", "BUSY"]
        assert "0.05 s" in slow[0]["message"]
        assert slow[0]["details"]["limit"] == "compile_timeout_s"
        assert len(started_compiles) == 2  # the third never got a thread
        assert threads.busy == 2
        # A contract in the cache needs no thread: the catalog's is compiled once the
        # stuck threads are done, then costs nothing.
        release.set()
        await threads.idle.wait()
        parts.link.deliver({"id": "a1", "input": "x", "action": "notify"})
        await parts.link.wait_for_acks(4)
        assert parts.link.bodies(f"{RESULTS}/a1")[0]["status"] == "ok"
        # A timed-out schema is not remembered as refused: it may compile next time.
        parts.link.deliver({**TASK, "id": "again", "schema": {**SCHEMA, "title": "0"}})
        await parts.link.wait_for_acks(5)
        assert parts.link.bodies(f"{RESULTS}/again")[0]["status"] == "ok"
        await parts.crash()

    run(scenario())


REFUSED_ADDRESSES = [
    "edgeagent/dev1/actions/set_irrigation",
    "edgeagent/dev2/status",
    "edgeagent/dev1/heartbeat",
    "edgeagent/dev2/tasks",
    "$SYS/broker/uptime",
    "replies/#",
    "replies/+/a",
    "replies/\x01x",
    "replies/\ud800",
    "replies/\ufffe",
    "replies/" + "x" * 300,
    "elsewhere/a",
]


@pytest.mark.parametrize(
    ("field", "topic"),
    [("response_topic", t) for t in [*REFUSED_ADDRESSES, ""]]
    + [("reply_to", t) for t in REFUSED_ADDRESSES],  # an empty reply_to names no address
)
def test_a_refused_reply_address_is_answered_on_the_errors_topic_only(field, topic):
    async def scenario():
        parts = await started()
        with capture_logs():
            if field == "response_topic":
                message = parts.link.deliver(TASK, response_topic=topic, correlation_data=b"c")
            else:
                message = parts.link.deliver({**TASK, "reply_to": topic})
            await parts.link.wait_for_acks(1)
        assert parts.link.acked == [message]
        assert [p.topic for p in parts.link.published] == [ERRORS]
        (reply,) = parts.link.bodies(ERRORS)
        assert reply["id"] == "t1"
        assert reply["error"]["code"] == "INVALID_REQUEST"
        assert field in reply["error"]["message"]
        assert parts.engine.tasks == []
        await parts.crash()

    run(scenario())


def test_allowed_reply_addresses_get_the_reply():
    async def scenario():
        parts = await started()
        parts.link.deliver({**TASK, "id": "a", "reply_to": "replies/me/1"})
        parts.link.deliver({**TASK, "id": "b", "reply_to": "edgeagent/dev1/results/mine"})
        # The Response Topic is preferred; the reply_to must be allowed as well.
        parts.link.deliver({**TASK, "id": "c", "reply_to": "replies/x"}, response_topic="replies/y")
        await parts.link.wait_for_acks(3)
        assert parts.link.bodies("replies/me/1")[0]["id"] == "a"
        assert parts.link.bodies("edgeagent/dev1/results/mine")[0]["id"] == "b"
        assert parts.link.bodies("replies/y")[0]["id"] == "c"
        assert parts.link.on("replies/x") == []
        await parts.crash()

    run(scenario())


def test_an_unparseable_request_with_a_refused_reply_to_is_answered_on_the_errors_topic():
    async def scenario():
        parts = await started()
        with capture_logs():
            parts.link.deliver({"id": "x", "input": 5, "reply_to": "edgeagent/dev1/status"})
            parts.link.deliver({"id": "y", "input": 5, "reply_to": "replies/ok"})
            await parts.link.wait_for_acks(2)
        assert parts.link.bodies(ERRORS)[0]["id"] == "x"
        assert parts.link.bodies("replies/ok")[0]["error"]["code"] == "INVALID_REQUEST"
        assert parts.link.on("edgeagent/dev1/status") == []
        await parts.crash()

    run(scenario())


def test_a_payload_dropped_by_the_link_is_answered_without_being_read(monkeypatch):
    def never(*_args):
        raise AssertionError("an oversized payload was read")

    monkeypatch.setattr("edgeagent.service.pipeline.reading.parse_request", never)
    monkeypatch.setattr("edgeagent.service.pipeline.reading.salvage", never)
    monkeypatch.setattr("edgeagent.service.pipeline.admission.salvage", never)

    async def scenario():
        parts = await started(link=FakeLink(max_payload_bytes=1024))
        with capture_logs():
            parts.link.deliver(b"{" * 5000, response_topic="replies/a", correlation_data=b"c")
            parts.link.deliver(b"[" * 5000, response_topic="edgeagent/dev1/status")
            await parts.link.wait_for_acks(2)
        (first,) = parts.link.on("replies/a")
        assert first.correlation_data == b"c"
        assert first.body["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert "5000 bytes" in first.body["error"]["message"]
        assert parts.link.bodies(ERRORS)[0]["error"]["code"] == "PAYLOAD_TOO_LARGE"
        await parts.crash()

    run(scenario())


def test_an_unknown_action_named_with_a_lone_surrogate_is_still_answered():
    async def scenario():
        parts = await started()
        with capture_logs():
            parts.link.deliver(b'{"id": "s", "input": "x", "action": "go\\ud800"}')
            await parts.link.wait_for_acks(1)
        (reply,) = parts.link.on(f"{RESULTS}/s")
        assert reply.payload.isascii()  # escaped: a surrogate has no UTF-8 form
        assert reply.body["error"]["code"] == "UNKNOWN_ACTION"
        assert "go\ud800" in reply.body["error"]["message"]
        await parts.crash()

    run(scenario())


def test_a_link_that_raises_on_publish_still_gets_every_message_acked():
    async def scenario():
        parts = await started()
        parts.link.publish_raises = ValueError("Publish topic cannot contain wildcards.")
        with capture_logs() as logs:
            parts.link.deliver(b"{not json")  # an untracked refusal
            parts.link.deliver(TASK)  # a task run and delivered
            await parts.link.wait_for_acks(2)
        refused = [e for e in logs if e["event"] == "broker refused a publish"]
        assert len(refused) == 2
        assert parts.link.acked[0].payload == b"{not json"
        assert not parts.admission._ledger
        await parts.crash()

    run(scenario())


def test_a_bug_in_delivery_still_ends_in_the_acks(monkeypatch):
    async def scenario():
        parts = await started()

        async def broken(*_args):
            raise RuntimeError("a bug")

        monkeypatch.setattr(parts.store, "mark_reply", broken)
        with capture_logs() as logs:
            message = parts.link.deliver(TASK)
            await parts.link.wait_for_acks(1)
        assert parts.link.acked == [message]
        assert parts.link.bodies(f"{RESULTS}/t1")[0]["status"] == "ok"
        assert parts.link.bodies(ERRORS)[0]["error"]["code"] == "INTERNAL"
        assert "delivery failed; acknowledging its messages" in [e["event"] for e in logs]
        await parts.delivery.wait_idle(within_s=1)
        assert not parts.admission._ledger
        await parts.crash()

    run(scenario())


def test_a_bug_before_any_entry_is_answered_internal_and_acked(monkeypatch):
    async def scenario():
        parts = await started()

        def broken(_message):
            raise RuntimeError("a bug")

        monkeypatch.setattr(parts.admission, "_parse", broken)
        with capture_logs():
            parts.link.deliver({**TASK, "reply_to": "replies/r"})
            await parts.link.wait_for_acks(1)
            assert parts.link.bodies("replies/r")[0]["error"]["code"] == "INTERNAL"
            # Even the last resort failing leaves the ack.
            monkeypatch.setattr("edgeagent.service.pipeline.admission.salvage", broken)
            parts.link.deliver(TASK)
            await parts.link.wait_for_acks(2)
        assert len(parts.link.published) == 1
        assert not parts._tasks[0].done()  # the admission loop lives on
        await parts.crash()

    run(scenario())


def test_a_full_incoming_queue_answers_busy_and_acks(monkeypatch):
    async def scenario():
        parts = Parts.on()
        parts.link.start(parts.admission.offer)  # no admission loop: nothing is taken
        monkeypatch.setattr(parts.admission, "_incoming", asyncio.Queue(1))
        parts.link.deliver(TASK)
        with capture_logs():
            extra = parts.link.deliver(TASK, response_topic="replies/a")
            await parts.link.wait_for_acks(1)
        assert parts.link.acked == [extra]
        assert parts.link.bodies("replies/a")[0]["error"]["code"] == "BUSY"
        await parts.crash()

    run(scenario())


def test_the_receive_window_is_the_queue_the_running_tasks_and_a_margin():
    assert receive_window(service_config()) == 16 + 8 + 16
    assert receive_window(service_config(queue={"size": 10000})) == 10024
    assert receive_window(service_config(queue={"size": 1})) == 25
    # As many tasks may run at once as the engine takes.
    assert RUNNING_TASKS >= MAX_PARALLEL


def test_a_burst_of_tasks_with_new_schemas_waits_for_threads_and_shares_compiles():
    compiled: list[str] = []

    def compile_contract(catalog, *, schema=None, action_names=None, limits):
        compiled.append(schema["title"])
        return real_compile(catalog, schema=schema, action_names=action_names, limits=limits)

    async def scenario():
        contracts = ContractCache(compile_contract=compile_contract, threads=CompileThreads(1))
        parts = await started(contracts=contracts)
        for n in range(6):  # three new schemas, each sent twice at once, one thread
            parts.link.deliver({**TASK, "id": f"b{n}", "schema": {**SCHEMA, "title": f"{n % 3}"}})
        await parts.link.wait_for_acks(6)
        assert [parts.link.bodies(f"{RESULTS}/b{n}")[0]["status"] for n in range(6)] == ["ok"] * 6
        assert sorted(compiled) == ["0", "1", "2"]
        await parts.crash()

    run(scenario())


def test_a_task_still_compiling_at_shutdown_is_left_to_the_broker():
    entered = threading.Event()
    release = threading.Event()

    def compile_contract(catalog, *, schema=None, action_names=None, limits):
        entered.set()
        release.wait(5)
        return real_compile(catalog, schema=schema, action_names=action_names, limits=limits)

    async def scenario():
        parts = await started(contracts=ContractCache(compile_contract=compile_contract))
        message = parts.link.deliver(TASK)
        await asyncio.to_thread(entered.wait, 5)
        assert "t1" in parts.admission._ledger
        parts.admission.close()  # SIGTERM
        await preparations_done(parts.admission)
        release.set()
        assert "t1" not in parts.admission._ledger
        assert parts.link.ack_attempts == []  # not acked: the broker delivers it again
        assert parts.link.published == []
        assert (await parts.record("t1")) is None  # never accepted
        parts.link.redeliver(message)  # closed: not even looked at
        assert parts.link.ack_attempts == []
        await parts.crash()

    run(scenario())


def test_a_refusal_that_cannot_be_recorded_still_ends_in_the_ack(monkeypatch):
    async def scenario():
        parts = await started()

        async def broken(*_args, **_kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(parts.delivery, "finish", broken)
        with capture_logs() as logs:
            message = parts.link.deliver({"id": "r1", "input": "x", "action": "launch_rocket"})
            await parts.link.wait_for_acks(1)
        assert parts.link.acked == [message]
        assert "recording a refusal failed; acknowledging" in [e["event"] for e in logs]
        assert not parts.admission._ledger
        await parts.crash()

    run(scenario())


def test_a_spent_crash_budget_answers_busy_and_runs_nothing():
    """CRASH_BUDGET deaths during runs within CRASH_WINDOW_S: every new task is answered
    BUSY (and acknowledged), none runs, until the oldest death leaves the window."""
    ages = [10.0, 30.0, 200.0, 5000.0]
    store = AsyncTaskStore(TaskStore(":memory:", max_age_s=3600, max_rows=100))
    store.death_ages = lambda: list(ages)  # type: ignore[method-assign]

    async def scenario():
        parts = await Parts.on(store=store).start()
        with capture_logs():
            parts.link.deliver(TASK)
            await parts.link.wait_for_acks(1)
        (busy,) = parts.link.bodies(f"{RESULTS}/t1")
        assert busy["error"]["code"] == "BUSY"
        assert busy["error"]["details"] == {"retry_after_s": CRASH_WINDOW_S - 200}
        assert "died during a task 3 times" in busy["error"]["message"]
        assert parts.engine.tasks == []
        assert await parts.record("t1") is None  # not recorded: a re-send runs later
        ages[2] = CRASH_WINDOW_S  # the third death leaves the window
        parts.link.deliver(TASK)
        await parts.link.wait_for_acks(2)
        assert parts.link.bodies(f"{RESULTS}/t1")[1]["status"] == "ok"
        await parts.crash()

    run(scenario())


def test_the_crash_budget_fits_the_units_start_limit():
    """Starts within systemd's window <= 1 + deaths in it <= 1 + CRASH_BUDGET: below
    StartLimitBurst with one start to spare for a death no task caused, and the budget's
    window at least as long as StartLimitIntervalSec (docs/operations.md)."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(UNIT_FILE.read_text(encoding="utf-8"))
    burst = unit.getint("Unit", "StartLimitBurst")
    interval = unit.getfloat("Unit", "StartLimitIntervalSec")
    assert burst >= 1 + CRASH_BUDGET + 1
    assert interval <= CRASH_WINDOW_S
    # One poison task alone stays within the budget: it is answered, nothing cools down.
    assert QueueConfig().max_task_aborts < CRASH_BUDGET
