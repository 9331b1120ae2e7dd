"""What admission does with a task not in flight, from its record in the task store.

    finished, and answerable?  -> AnswerFromStore (what the broker is still missing)
    accepted, aborted too often -> Poison (INTERNAL, final: not run again)
    crash budget spent?         -> CoolDown (BUSY, not recorded)
    otherwise                   -> Run (with the runs that ended with the process)

A broker redelivery always gets the stored outcome (exactly once); a client's re-send
only a final one, else the task runs again. A task that took the process down
`[queue] max_task_aborts` times is answered instead of run (docs/protocol.md); while the
crash budget (crash_budget.py) is spent nothing runs, so no task can cost another
restart meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.service.pipeline import crash_budget
from edgeagent.service.pipeline.plan import Plan
from edgeagent.service.pipeline.task_records import TaskRecord, TaskState


@dataclass(frozen=True, slots=True)
class AnswerFromStore:
    plan: Plan  # idle: the broker has it all, the message is only acknowledged


@dataclass(frozen=True, slots=True)
class Poison:
    error: EdgeAgentError
    aborts: int


@dataclass(frozen=True, slots=True)
class CoolDown:
    error: EdgeAgentError  # BUSY with retry_after_s


@dataclass(frozen=True, slots=True)
class Run:
    # Runs that ended with the process: such a task runs alone (see Worker), so a second
    # abort is its own and not a neighbour's in a batch.
    aborts: int = 0


Verdict = AnswerFromStore | Poison | CoolDown | Run


def verdict(
    record: TaskRecord | None,
    *,
    redelivery: bool,
    max_task_aborts: int,
    death_ages: Callable[[], Iterable[float]],
) -> Verdict:
    """`record`: the task's, with the same fingerprint (a different one is a conflict,
    decided before). `death_ages` is only asked when the task would run."""
    if record is not None and answerable(record, redelivery=redelivery):
        return AnswerFromStore(Plan.from_record(record, redelivery=redelivery))
    accepted = record is not None and record.state is TaskState.ACCEPTED
    aborts = record.runs if record is not None and accepted else 0
    if accepted and aborts >= max_task_aborts:
        error = EdgeAgentError(
            ErrorCode.INTERNAL, f"task aborted the daemon {aborts} times", aborts=aborts
        )
        return Poison(error, aborts)
    # Not recorded: an accepted task keeps its run count for when it comes again.
    if (cooldown := crash_budget.spent(death_ages())) is not None:
        return CoolDown(cooldown)
    return Run(aborts)


def answerable(record: TaskRecord, *, redelivery: bool) -> bool:
    """A broker redelivery always gets the stored outcome (exactly once); a client's
    re-send only a final one, else the task runs again."""
    if record.state is not TaskState.FINISHED or record.outcome is None:
        return False  # interrupted by a crash: it runs again
    return redelivery or record.outcome.replayable
