"""What the task store holds of a task, as the pipeline reads and writes it.

The states a row moves through (taskstore.py has the whole picture):

    accepted -> finished (reply and action message stored)
                 reply_state:  pending -> confirmed | refused   (the broker's PUBACK)
                 action_state: pending -> confirmed | refused   (dispatch actions only)

Kept apart from the store's queries because the holds share Confirmation and admission
and delivery read records without needing SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskState(StrEnum):
    ACCEPTED = "accepted"
    FINISHED = "finished"


class Confirmation(StrEnum):
    PENDING = "pending"  # published (or about to be), no PUBACK yet
    CONFIRMED = "confirmed"  # the broker took it
    REFUSED = "refused"  # the broker answered with a failure reason code


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished task publishes, stored before the first publish."""

    reply: str  # the reply payload, sent byte for byte again on a redelivery
    # A client's re-send of the id gets this reply. False for retryable errors and for
    # refusals before the model ran: a re-send runs the task again.
    replayable: bool = True
    action_topic: str | None = None  # a `dispatch = true` action's topic and payload
    action: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    fingerprint: str
    state: TaskState
    outcome: Outcome | None
    reply_state: Confirmation | None
    action_state: Confirmation | None  # None: nothing to dispatch
    # Runs started since it was accepted; while `accepted`, every one of them ended with
    # the process (the run that finishes it moves it to `finished`).
    runs: int = 0
