"""What admission does with a task not in flight, decided from its record alone."""

from __future__ import annotations

from edgeagent.errors import ErrorCode
from edgeagent.service.pipeline.crash_budget import CRASH_WINDOW_S
from edgeagent.service.pipeline.task_records import Confirmation, Outcome, TaskRecord, TaskState
from edgeagent.service.pipeline.verdicts import AnswerFromStore, CoolDown, Poison, Run, verdict

REPLY = '{"id": "t1", "status": "ok"}'


def finished(*, replayable: bool, reply_state: Confirmation) -> TaskRecord:
    outcome = Outcome(REPLY, replayable)
    return TaskRecord("t1", "fp", TaskState.FINISHED, outcome, reply_state, None)


def accepted(runs: int) -> TaskRecord:
    return TaskRecord("t1", "fp", TaskState.ACCEPTED, None, None, None, runs=runs)


def decide(record: TaskRecord | None, *, redelivery: bool = False, deaths=()):
    return verdict(
        record, redelivery=redelivery, max_task_aborts=2, death_ages=lambda: list(deaths)
    )


def test_a_redelivery_gets_the_stored_outcome_a_resend_only_a_final_one():
    retryable = finished(replayable=False, reply_state=Confirmation.PENDING)
    answer = decide(retryable, redelivery=True)
    assert isinstance(answer, AnswerFromStore)
    assert answer.plan.reply == REPLY
    assert decide(retryable) == Run(0)  # the client's re-send runs again
    final = decide(finished(replayable=True, reply_state=Confirmation.CONFIRMED))
    assert isinstance(final, AnswerFromStore)
    assert final.plan.send_reply  # a re-send gets the reply again


def test_a_confirmed_reply_redelivered_is_only_acknowledged():
    confirmed = finished(replayable=True, reply_state=Confirmation.CONFIRMED)
    answer = decide(confirmed, redelivery=True)
    assert isinstance(answer, AnswerFromStore)
    assert answer.plan.idle


def test_a_task_that_aborted_the_process_too_often_is_poison_not_run():
    assert decide(accepted(1)) == Run(1)  # runs again, alone
    poison = decide(accepted(2))
    assert isinstance(poison, Poison)
    assert poison.error.code is ErrorCode.INTERNAL
    assert poison.error.details == {"aborts": 2}


def test_a_spent_crash_budget_cools_down_only_tasks_that_would_run():
    deaths = [1.0, 2.0, 3.0]
    cooling = decide(None, deaths=deaths)
    assert isinstance(cooling, CoolDown)
    assert cooling.error.code is ErrorCode.BUSY
    # Answers from the store and poison need no run: the budget does not stop them.
    confirmed = finished(replayable=True, reply_state=Confirmation.CONFIRMED)
    assert isinstance(decide(confirmed, deaths=deaths), AnswerFromStore)
    assert isinstance(decide(accepted(2), deaths=deaths), Poison)
    assert decide(None, deaths=[1.0, 2.0, CRASH_WINDOW_S]) == Run(0)
