from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from structlog.testing import capture_logs
from support.store_files import write_v3_store

from edgeagent.service.pipeline.asyncstore import AsyncTaskStore, open_task_store
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.task_records import Confirmation, Outcome, TaskState
from edgeagent.service.pipeline.task_retention import StoreClock
from edgeagent.service.pipeline.taskstore import DEATHS_KEPT, TaskStore

OK = Outcome('{"id": "t1", "status": "ok"}')
ACTION = Outcome(
    '{"id": "t1", "status": "ok"}',
    action_topic="edgeagent/dev1/actions/set_irrigation",
    action='{"id": "t1", "action": "set_irrigation"}',
)


def store_at(path, **kwargs) -> TaskStore:
    return TaskStore(
        path, max_age_s=kwargs.get("max_age_s", 3600), max_rows=kwargs.get("max_rows", 100)
    )


def test_lifecycle_survives_reopen(tmp_path):
    path = tmp_path / "j.sqlite3"
    store = store_at(path)
    store.accept("t1", "fp")
    assert store.get("t1").state is TaskState.ACCEPTED
    assert store.get("t1").outcome is None
    store.finish("t1", "fp", ACTION)
    store.close()
    reopened = store_at(path)
    record = reopened.get("t1")
    assert record.state is TaskState.FINISHED
    assert record.outcome == ACTION
    assert (record.reply_state, record.action_state) == (Confirmation.PENDING, Confirmation.PENDING)
    reopened.mark_reply("t1", Confirmation.CONFIRMED)
    reopened.mark_action("t1", Confirmation.REFUSED)
    record = reopened.get("t1")
    assert (record.reply_state, record.action_state) == (
        Confirmation.CONFIRMED,
        Confirmation.REFUSED,
    )
    assert reopened.get("missing") is None


def test_no_action_means_no_action_state(tmp_path):
    store = store_at(tmp_path / "j.sqlite3")
    store.finish("t1", "fp", OK)
    store.mark_action("t1", Confirmation.CONFIRMED)  # nothing to mark
    assert store.get("t1").action_state is None


def test_accept_starts_a_rerun_over(tmp_path):
    store = store_at(tmp_path / "j.sqlite3")
    store.finish("t1", "fp", Outcome('{"status": "error"}', replayable=False))
    store.accept("t1", "fp")
    record = store.get("t1")
    assert record.state is TaskState.ACCEPTED
    assert record.outcome is None
    assert record.reply_state is None


def test_forget_only_unfinished(tmp_path):
    store = store_at(tmp_path / "j.sqlite3")
    store.accept("a", "fp")
    store.accept("b", "fp")
    store.finish("b", "fp", OK)
    store.forget("a")
    store.forget("b")
    assert store.get("a") is None
    assert store.get("b") is not None


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_prune_by_count_and_by_store_clock_age():
    store = store_at(":memory:", max_age_s=3600, max_rows=100)
    clock = Clock()
    store.clock = StoreClock(0.0, clock)
    for i in range(150):
        store.finish(f"t{i}", "fp", OK)
    store.accept("running", "fp")
    assert store.prune() == 50
    assert store.get("t149") is not None
    assert store.get("t0") is None
    clock.now += 3601  # an hour of service later
    store.finish("fresh", "fp", OK)
    assert store.prune() == 100
    assert store.get("running") is not None  # unfinished work is never pruned
    assert store.get("fresh") is not None
    assert store.count() == 2


def test_the_store_clock_continues_from_the_file_not_the_wall_clock(tmp_path, monkeypatch):
    path = tmp_path / "j.sqlite3"
    store = store_at(path)
    store.finish("old", "fp", OK)
    store.close()
    # A Pi without a real-time clock: the wall clock jumps by years (NTP sync) between runs.
    monkeypatch.setattr("time.time", lambda: 4_000_000_000.0)
    reopened = store_at(path, max_age_s=60)
    assert reopened.prune() == 0
    assert reopened.get("old") is not None


def test_a_first_schema_file_is_upgraded(tmp_path):
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL,"
        " reply TEXT, accepted_at REAL NOT NULL, updated_at REAL NOT NULL);"
    )
    busy = {"id": "b", "status": "error", "error": {"code": "BUSY", "message": "full"}}
    rows = [
        ("done", "replied", '{"id": "done", "status": "ok"}'),
        ("sent", "finished", '{"id": "sent", "status": "ok"}'),
        ("b", "finished", json.dumps(busy)),
        ("run", "accepted", None),
    ]
    for task_id, state, reply in rows:
        db.execute(
            "INSERT INTO tasks VALUES (?, 'fp', ?, ?, 1.7e9, 1.7e9)", (task_id, state, reply)
        )
    db.commit()
    db.close()
    store = store_at(path)
    assert store.get("done").reply_state is Confirmation.CONFIRMED
    assert store.get("done").state is TaskState.FINISHED
    assert store.get("sent").reply_state is Confirmation.PENDING
    assert store.get("sent").outcome.replayable
    assert not store.get("b").outcome.replayable  # a retryable error runs again on a re-send
    assert store.get("run").state is TaskState.ACCEPTED


def test_a_corrupt_file_is_moved_aside_and_a_fresh_one_started(tmp_path):
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with capture_logs() as logs:
        store, degraded = open_task_store(path, max_age_s=60, max_rows=100)
    assert degraded is None
    store.accept("t1", "fp")
    assert store.get("t1") is not None
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("journal.sqlite3.corrupt-")]
    assert len(kept) == 1
    assert kept[0].read_bytes().startswith(b"this is not a database")
    assert [e["event"] for e in logs] == [
        "task store was unreadable; moved it aside and started a fresh one"
    ]
    assert logs[0]["log_level"] == "error"


def test_an_unwritable_directory_gives_a_degraded_memory_store(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    with capture_logs() as logs:
        store, degraded = open_task_store(blocker / "journal.sqlite3", max_age_s=60, max_rows=100)
    assert degraded is not None
    assert "not-a-dir" in degraded
    store.accept("t1", "fp")  # still remembers within this process
    assert store.get("t1") is not None
    assert logs[0]["log_level"] == "error"


class Broken:
    """A store whose every call fails like a full or read-only SD card."""

    def __getattr__(self, name):
        def fail(*_args):
            raise sqlite3.OperationalError("attempt to write a readonly database")

        return fail


def test_async_store_degrades_instead_of_raising():
    async def scenario():
        store = AsyncTaskStore(Broken())
        with capture_logs() as logs:
            assert await store.get("t1") is None
            await store.accept("t1", "fp")
            await store.finish("t1", "fp", OK)
            assert await store.prune() == (0, 0)
        assert store.degraded is not None
        assert store.degraded.startswith("get:")
        assert store.failures == 4
        assert [e["log_level"] for e in logs] == ["error", "debug", "debug", "debug"]
        store.close()

    asyncio.run(scenario())


def test_async_store_call_that_hangs_times_out():
    class Stuck:
        def __init__(self) -> None:
            import threading  # noqa: PLC0415 - only this test blocks a thread

            self.release = threading.Event()

        def get(self, _task_id):
            self.release.wait(5)

        def close(self):
            pass

    async def scenario():
        stuck = Stuck()
        store = AsyncTaskStore(stuck, timeout_s=0.05)
        with capture_logs():
            assert await store.get("t1") is None
            assert await store.get("t2") is None  # answered at once, not queued behind
        assert "no answer" in store.degraded
        assert store.failures == 1
        stuck.release.set()
        store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("capacity", [1, 3])
def test_queue_priority_order_and_bound(capacity):
    async def scenario():
        queue: TaskQueue[str] = TaskQueue(capacity)
        items = [("low", -1), ("normal", 0), ("high", 5)][:capacity]
        for item, priority in items:
            assert queue.offer(item, priority)
        assert queue.full
        assert not queue.offer("overflow", 100)
        got = [await queue.take() for _ in range(capacity)]
        assert got == [i for i, _ in sorted(items, key=lambda x: -x[1])]
        queue.offer("a")
        assert queue.drain() == ["a"]
        assert len(queue) == 0

    asyncio.run(scenario())


def test_runs_of_an_accepted_task_survive_a_reaccept_but_not_a_finish(tmp_path):
    path = tmp_path / "j.sqlite3"
    store = store_at(path)
    store.accept("t1", "fp")
    store.start_run("t1")
    store.close()
    store = store_at(path)  # the process died during the run
    assert store.get("t1").runs == 1
    store.accept("t1", "fp")  # the redelivery is accepted again
    store.start_run("t1")
    assert store.get("t1").runs == 2
    store.finish("t1", "fp", OK)
    store.start_run("t1")  # only accepted tasks count runs
    assert store.get("t1").runs == 2
    store.accept("t1", "fp")  # a client's re-send after the answer starts over
    assert store.get("t1").runs == 0
    store.start_run("missing")
    assert store.get("missing") is None


def test_a_second_schema_file_gets_the_run_count(tmp_path):
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL,"
        " reply TEXT, accepted_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " replayable INTEGER NOT NULL DEFAULT 1, reply_state TEXT, action_topic TEXT,"
        " action TEXT, action_state TEXT); PRAGMA user_version=2;"
    )
    db.execute("INSERT INTO tasks (id, fingerprint, state, accepted_at, updated_at)"
               " VALUES ('run', 'fp', 'accepted', 1.7e9, 1.7e9)")  # fmt: skip
    db.commit()
    db.close()
    store = store_at(path)
    assert store.get("run").runs == 0
    store.start_run("run")
    assert store.get("run").runs == 1


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda path: write_v3_store(path, updated_at="soon"), id="non-numeric updated_at"
        ),
        pytest.param(
            lambda path: sqlite3.connect(path).executescript(
                "CREATE TABLE tasks (id INTEGER); PRAGMA user_version=1;"
            ),
            id="a tasks table of another shape",
        ),
    ],
)
def test_any_file_the_store_cannot_open_is_moved_aside(tmp_path, damage):
    """Not only corrupt pages: a file that passes quick_check but holds what the store
    cannot read (a ValueError at open, a foreign schema) is moved aside too, instead of
    stopping the daemon at every start."""
    path = tmp_path / "journal.sqlite3"
    damage(path)
    with pytest.raises(Exception):  # noqa: B017 - whatever TaskStore raises on it
        store_at(path)
    with capture_logs() as logs:
        store, degraded = open_task_store(path, max_age_s=60, max_rows=100)
    assert degraded is None
    store.accept("t2", "fp")
    assert store.get("t2") is not None
    assert [p.name.startswith("journal.sqlite3.corrupt-") for p in tmp_path.iterdir()].count(
        True
    ) == 1
    (event,) = [e for e in logs if e["log_level"] == "error"]
    assert event["event"] == "task store was unreadable; moved it aside and started a fresh one"
    store.close()


def test_a_run_still_running_at_open_is_recorded_as_a_death(tmp_path):
    path = tmp_path / "j.sqlite3"
    store = store_at(path)
    assert store.death_ages() == []
    store.accept("a", "fp")
    store.start_run("a")
    store.accept("b", "fp")
    store.start_run("b")  # a batch: one death, whatever runs beside
    store.close()
    store = store_at(path)  # the process died during the runs
    (age,) = store.death_ages()
    assert 0 <= age < 5
    store.start_run("a")
    store.finish("a", "fp", OK)  # a run that ends is no death
    store.accept("c", "fp")
    store.start_run("c")
    store.forget("c")  # nor is one handed back at a stop
    store.close()
    store = store_at(path)
    assert len(store.death_ages()) == 1
    store.accept("b", "fp")
    store.start_run("b")
    store.close()
    store = store_at(path)
    ages = store.death_ages()
    assert len(ages) == 2
    assert ages[0] <= ages[1]  # youngest first


def test_deaths_age_on_the_store_clock_and_the_newest_are_kept(tmp_path):
    path = tmp_path / "j.sqlite3"
    clock = Clock()
    for _ in range(DEATHS_KEPT + 3):
        store = store_at(path)
        store.clock = StoreClock(store.clock.now(), clock)
        store.accept("a", "fp")
        store.start_run("a")
        clock.now += 100  # service time passes while it runs
        store.start_run("a")  # stamps updated_at: the clock the next open starts from
        store.close()
    store = store_at(path)
    ages = store.death_ages()
    assert len(ages) == DEATHS_KEPT
    # The store clock starts at the newest time in the file: a death is as old as the
    # service time since it, never the hours the device may have been off.
    assert ages[0] < 5
    assert 99 < ages[1] - ages[0] < 101


def test_a_third_schema_file_gets_the_running_mark(tmp_path):
    path = tmp_path / "j.sqlite3"
    write_v3_store(path)
    store = store_at(path)
    assert store.get("t1").runs == 0
    assert store.death_ages() == []
    store.start_run("t1")
    store.close()
    assert len(store_at(path).death_ages()) == 1


def test_async_store_without_deaths_to_tell_runs_on():
    store = AsyncTaskStore(Broken())
    with capture_logs():
        assert store.death_ages() == []
    store.close()
