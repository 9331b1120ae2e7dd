from __future__ import annotations

import asyncio
import time

from edgeagent.service.queue import TaskQueue
from edgeagent.service.taskstore import TaskState, TaskStore


def test_journal_lifecycle_survives_reopen(tmp_path):
    path = tmp_path / "j.sqlite3"
    journal = TaskStore(path, max_age_s=3600, max_rows=100)
    journal.accept("t1", "fp")
    assert journal.get("t1").state is TaskState.ACCEPTED
    journal.finish("t1", {"id": "t1", "status": "ok"})
    journal.close()
    reopened = TaskStore(path, max_age_s=3600, max_rows=100)
    entry = reopened.get("t1")
    assert entry.state is TaskState.FINISHED
    assert entry.reply == {"id": "t1", "status": "ok"}
    reopened.mark_replied("t1")
    assert reopened.get("t1").state is TaskState.REPLIED
    assert reopened.get("missing") is None


def test_journal_forget_only_unfinished(tmp_path):
    journal = TaskStore(tmp_path / "j.sqlite3", max_age_s=3600, max_rows=100)
    journal.accept("a", "fp")
    journal.accept("b", "fp")
    journal.finish("b", {"x": 1})
    journal.forget("a")
    journal.forget("b")
    assert journal.get("a") is None
    assert journal.get("b") is not None


def test_journal_prune_by_count_and_age(tmp_path):
    journal = TaskStore(tmp_path / "j.sqlite3", max_age_s=3600, max_rows=100)
    for i in range(150):
        journal.accept(f"t{i}", "fp")
        journal.finish(f"t{i}", {"i": i})
    journal.accept("running", "fp")
    assert journal.prune() == 50
    assert journal.get("t149") is not None
    assert journal.get("t0") is None
    assert journal.get("running") is not None  # unfinished work is never pruned
    journal.max_age_s = 0
    time.sleep(0.01)
    journal.prune()
    assert journal.count() == 1


def test_queue_priority_order_and_bound():
    async def scenario():
        queue: TaskQueue[str] = TaskQueue(3)
        assert queue.offer("low", -1)
        assert queue.offer("normal-1", 0)
        assert queue.offer("high", 5)
        assert not queue.offer("overflow", 100)
        assert len(queue) == 3
        got = [await queue.take() for _ in range(3)]
        assert got == ["high", "normal-1", "low"]
        queue.offer("a")
        queue.offer("b")
        assert queue.drain() == ["a", "b"]
        assert len(queue) == 0

    asyncio.run(scenario())
