"""The holds table: what a crash between a hold's record and its task's reply leaves,
resolutions, marks, pruning, and opening a file again (schema version)."""

from __future__ import annotations

import sqlite3

from edgeagent.protocol.reply import ReplyRoute
from edgeagent.service.holds.holdstore import SCHEMA_VERSION, HoldStore
from edgeagent.service.holds.records import Decision, Draft, HoldState, Resolved
from edgeagent.service.pipeline.task_records import Confirmation, Outcome
from edgeagent.service.pipeline.taskstore import TaskStore


def draft(task_id: str = "t1", text: str = "Water zone 3 for 20 minutes") -> Draft:
    return Draft(
        task_id=task_id,
        action="set_irrigation",
        args={"zone": 3, "minutes": 20},
        confidence=0.41,
        action_topic="edgeagent/dev1/actions/set_irrigation",
        notice='{"task_id": "%s"}' % task_id,  # noqa: UP031 - a fixed stand-in
        reply='{"id": "%s", "dispatched": false}' % task_id,  # noqa: UP031
        routes=(
            ReplyRoute("replies/a", b"\x00\xff"),
            ReplyRoute(f"edgeagent/dev1/results/{task_id}"),
        ),
        text=text,
        held_at=100.0,
        expires_at=3700.0,
    )


def tasks(path, task_id: str, *, finished: bool) -> None:
    store = TaskStore(path, max_age_s=3600, max_rows=100)
    store.accept(task_id, "fp")
    if finished:
        store.finish(task_id, "fp", Outcome('{"id": "t"}'))
    store.close()


def test_a_hold_is_opening_until_promoted_and_keeps_its_routes(tmp_path):
    store = HoldStore(tmp_path / "j.sqlite3")
    store.prepare(draft())
    assert store.get("t1").state is HoldState.OPENING
    assert store.pending() == []
    held = store.promote("t1")
    assert held.state is HoldState.PENDING
    assert held.draft == draft()
    assert held.notice_state is Confirmation.PENDING
    assert store.promote("t1") is None  # once
    assert [r.draft.text for r in store.pending()] == [""]  # what the desk keeps in memory


def test_opening_settles_what_a_crash_left_between_the_hold_and_the_reply(tmp_path):
    path = tmp_path / "journal.sqlite3"
    tasks(path, "stored", finished=True)
    tasks(path, "running", finished=False)
    store = HoldStore(path)
    store.prepare(draft("stored"))
    store.prepare(draft("running"))
    store.close()
    again = HoldStore(path)
    assert again.get("stored").state is HoldState.PENDING  # its reply went out: it stands
    assert again.get("running") is None  # it runs again, and holds anew
    assert [r.task_id for r in again.owing()] == ["stored"]  # its notice is still owed


def test_a_new_run_replaces_a_leftover_but_never_a_pending_hold(tmp_path):
    store = HoldStore(tmp_path / "j.sqlite3")
    store.prepare(draft(text="first"))
    store.prepare(draft(text="second"))
    assert store.get("t1").draft.text == "second"
    store.promote("t1")
    store.prepare(draft(text="third"))
    assert store.get("t1").state is HoldState.PENDING
    assert store.get("t1").draft.text == "second"


def test_a_resolution_is_committed_once_and_drops_the_input(tmp_path):
    store = HoldStore(tmp_path / "j.sqlite3")
    store.prepare(draft())
    store.promote("t1")
    decided = Resolved(Decision.EDITED, "alice", 200.0, {"zone": 4, "minutes": 20}, "d1")
    assert store.resolve("t1", decided) == "Water zone 3 for 20 minutes"
    assert store.resolve("t1", decided) is None
    held = store.get("t1")
    assert held.resolved == decided
    assert held.draft.text == ""
    assert (held.action_state, held.followup_state, held.notice_state) == (
        Confirmation.PENDING,
    ) * 3
    assert store.by_command("d1").task_id == "t1"
    store.mark("t1", "action_state", Confirmation.CONFIRMED, hold=HoldState.RESOLVED)
    # A late mark of the pending hold's notice must not pass for its clearing.
    store.mark("t1", "notice_state", Confirmation.CONFIRMED, hold=HoldState.PENDING)
    held = store.get("t1")
    assert held.action_state is Confirmation.CONFIRMED
    assert held.notice_state is Confirmation.PENDING
    assert held.owes


def test_a_rejection_owes_no_action(tmp_path):
    store = HoldStore(tmp_path / "j.sqlite3")
    store.prepare(draft())
    store.promote("t1")
    store.resolve("t1", Resolved(Decision.REJECTED, "bob", 200.0, None))
    assert store.get("t1").action_state is None


def test_resolved_holds_are_pruned_with_their_task_and_beyond_max_rows(tmp_path):
    path = tmp_path / "journal.sqlite3"
    tasks(path, "kept", finished=True)
    store = HoldStore(path)
    for task_id in ("kept", "gone", "owing", "pending"):
        store.prepare(draft(task_id))
        store.promote(task_id)
    for n, task_id in enumerate(("kept", "gone", "owing")):
        store.resolve(task_id, Resolved(Decision.REJECTED, "bob", 200.0 + n, None))
        if task_id != "owing":
            for what in ("followup_state", "notice_state"):
                store.mark(task_id, what, Confirmation.CONFIRMED, hold=HoldState.RESOLVED)
    assert store.prune(max_rows=100) == 1  # "gone": its task is forgotten
    assert {r.task_id for r in store.owing()} == {"owing", "pending"}
    assert store.get("kept") is not None
    assert store.prune(max_rows=0) == 1  # "kept"; never what is pending or still owed
    assert store.get("owing") is not None
    assert store.get("pending") is not None


def test_the_schema_is_versioned_apart_from_the_task_stores(tmp_path):
    path = tmp_path / "journal.sqlite3"
    tasks(path, "t1", finished=True)
    store = HoldStore(path)
    store.prepare(draft())
    store.close()
    store = HoldStore(path)  # opened again: nothing migrated twice, nothing lost
    assert store.get("t1").state is HoldState.PENDING
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM hold_schema").fetchall() == [(SCHEMA_VERSION,)]
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4  # the task store's own
    db.close()
    TaskStore(path, max_age_s=3600, max_rows=100).close()  # and the task store still opens it
