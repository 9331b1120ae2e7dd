"""The daemon's lifecycle with fakes: start, serve, pause, reload, stop."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs
from support.aio import run
from support.fake_engine import (
    SCHEMA,
    FakeDecision,
    FakeEngine,
    FakeMemory,
    FakeNotifier,
    service_config,
)
from support.fake_link import FakeLink
from support.service_parts import make_daemon

from edgeagent.config import ActionConfig
from edgeagent.service.assembly import topics_for, wire
from edgeagent.service.daemon import Daemon, State
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.taskstore import TaskStore

STATUS = "edgeagent/dev1/status"
TASK = {"id": "t1", "input": "Porto, 21 degrees", "schema": SCHEMA}


async def serving(daemon: Daemon) -> asyncio.Task[int]:
    task = asyncio.create_task(daemon.serve())
    link = daemon.link
    assert isinstance(link, FakeLink)
    await link.wait_for_publish(STATUS)  # "online", sent once connected
    return task


def test_start_serve_answer_and_stop():
    async def scenario():
        daemon = make_daemon()
        link, notifier, engine = daemon.link, daemon.notifier, daemon.engine
        task = await serving(daemon)
        assert daemon.state is State.SERVING
        assert "READY=1" in notifier.sent
        assert notifier.statuses[-1].startswith("serving; queue 0/16; ctx 512")
        message = link.deliver(TASK)
        assert await link.wait_for_acks(1) == [message]
        assert link.bodies("edgeagent/dev1/results/t1")[0]["status"] == "ok"
        with capture_logs() as logs:
            daemon.request_stop()
            assert await task == 0
        assert [(p.payload, p.retain) for p in link.on(STATUS)] == [
            ("online", True),
            ("offline", True),
        ]
        assert "STOPPING=1" in notifier.sent
        assert daemon.state is State.STOPPED
        assert link.stopped
        assert engine.closed
        (stopped,) = [e for e in logs if e["event"] == "stopped"]
        assert (stopped["done"], stopped["failed"]) == (1, 0)

    run(scenario())


def test_shutdown_ends_as_soon_as_the_running_task_is_answered():
    async def scenario():
        daemon = make_daemon(queue={"shutdown_grace_s": 600})
        engine, link = daemon.engine, daemon.link
        task = await serving(daemon)
        engine.hold = True
        message = link.deliver(TASK)
        await engine.running.wait()
        daemon.request_stop()
        await asyncio.sleep(0)
        assert not task.done()  # waits for the running task ...
        engine.release()
        assert await task == 0  # ... and no longer than that (the test times out at 10 s)
        assert link.acked == [message]
        assert link.on(STATUS)[-1].payload == "offline"

    run(scenario())


def test_after_the_grace_period_running_and_queued_tasks_are_handed_back(tmp_path):
    async def scenario():
        daemon = make_daemon(tmp_path / "j.sqlite3", queue={"shutdown_grace_s": 0.05})
        engine, link = daemon.engine, daemon.link
        task = await serving(daemon)
        engine.hold = True
        link.deliver(TASK)
        await engine.running.wait()
        await daemon.admission.admit(link.message({**TASK, "id": "t2"}))
        assert len(daemon.queue) == 1
        with capture_logs() as logs:
            daemon.request_stop()
            assert await task == 0
        events = [e["event"] for e in logs]
        assert "grace period over; handing the running task back" in events
        handed = [e["task_id"] for e in logs if e["event"] == "task handed back"]
        assert sorted(handed) == ["t1", "t2"]
        assert link.ack_attempts == []  # the broker delivers both again after the restart
        assert link.bodies("edgeagent/dev1/results/t1") == []

    run(scenario())


def test_messages_during_shutdown_are_left_to_the_broker():
    async def scenario():
        daemon = make_daemon(queue={"shutdown_grace_s": 600})
        engine, link = daemon.engine, daemon.link
        task = await serving(daemon)
        engine.hold = True
        link.deliver(TASK)
        await engine.running.wait()
        daemon.request_stop()
        await daemon.notifier.wait_for("STOPPING=1")
        assert daemon.state is State.DRAINING
        late = link.deliver({**TASK, "id": "late"})
        engine.release()
        assert await task == 0
        assert late not in link.ack_attempts
        assert link.bodies("edgeagent/dev1/results/late") == []

    run(scenario())


def test_memory_pause_answers_busy_and_resumes():
    async def scenario():
        daemon = make_daemon()
        link = daemon.link
        task = await serving(daemon)
        daemon.memory_changed(FakeDecision(paused=True, reason="available 80 MB < min_ctx"))
        assert daemon.state is State.PAUSED
        assert daemon.notifier.statuses[-1].startswith("paused;")
        with capture_logs():
            link.deliver(TASK)
            await link.wait_for_acks(1)
        assert link.bodies("edgeagent/dev1/results/t1")[0]["error"]["code"] == "BUSY"
        daemon.memory_changed(FakeDecision())
        assert daemon.state is State.SERVING
        link.deliver({**TASK, "id": "t2"})
        await link.wait_for_acks(2)
        assert link.bodies("edgeagent/dev1/results/t2")[0]["status"] == "ok"
        daemon.request_stop()
        await task

    run(scenario())


def test_reload_applies_the_new_catalog_without_a_restart(tmp_path):
    async def scenario():
        cfg = service_config()
        vent = ActionConfig(
            name="open_vent", description="Open the vent.", schema={"type": "object"}
        )
        reloaded = cfg.model_copy(update={"actions": [*cfg.actions, vent]})
        link = FakeLink()
        notifier = FakeNotifier()
        daemon = wire(
            cfg,
            topics=topics_for(cfg),
            link=link,
            store=AsyncTaskStore(TaskStore(":memory:", max_age_s=60, max_rows=100)),
            notifier=notifier,
            engine=FakeEngine(),
            memory=FakeMemory(),
            config_path=tmp_path / "config.toml",
            load=lambda _path: reloaded,
        )
        task = await serving(daemon)
        task_body = {"id": "v1", "input": "too hot", "action": "open_vent"}
        with capture_logs():
            link.deliver(task_body)
            await link.wait_for_acks(1)
        assert link.bodies("edgeagent/dev1/results/v1")[0]["error"]["code"] == "UNKNOWN_ACTION"
        daemon.reload()
        assert notifier.sent[-2:][0] == "READY=1"
        link.deliver(task_body)  # a re-send of a refused task is admitted afresh
        await link.wait_for_acks(2)
        assert link.bodies("edgeagent/dev1/results/v1")[1]["output"]["action"] == "open_vent"
        daemon.request_stop()
        await task

    run(scenario())


def test_a_reload_that_fails_in_any_way_keeps_the_config_and_sends_ready(tmp_path):
    """A config error, or a bug while reading it: the running config stays and systemd
    hears READY=1 after RELOADING=1 (else the unit stays "reloading" for good)."""

    def broken(_path):
        raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")

    async def scenario():
        daemon = make_daemon()
        daemon.config_path = tmp_path / "config.toml"
        daemon._load = broken  # the loader a reload calls
        notifier = daemon.notifier
        task = await serving(daemon)
        before = daemon.cfg
        with capture_logs() as logs:
            daemon.reload()
        assert notifier.sent[-3:-1] == ["RELOADING=1", "READY=1"]
        assert daemon.cfg is before
        assert [e["event"] for e in logs] == ["reload failed; keeping the running config"]
        daemon.request_stop()
        await task

    run(scenario())


def test_a_crashed_loop_ends_the_daemon_with_exit_code_1():
    async def scenario():
        memory = FakeMemory()

        async def broken() -> None:
            raise RuntimeError("a bug in the memory loop")

        memory.run = broken
        daemon = make_daemon()
        daemon.memory = memory
        with capture_logs() as logs:
            assert await daemon.serve() == 1
        (crash,) = [e for e in logs if e["event"] == "internal loop crashed; exiting for a restart"]
        assert crash["loop"] == "memory"
        assert daemon.state is State.STOPPED

    run(scenario())
