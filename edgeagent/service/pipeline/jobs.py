"""Tasks between admission and delivery: jobs for the model and the ids in flight.

An id is *in flight* from its admission until its reply (and action) are confirmed or
it is handed back. Every delivery of that id meanwhile (a broker redelivery, or a
client re-sending the same task) waits on the same entry and is acknowledged exactly
once, after the reply it gets. The registry's size is bounded by the broker's
window of unacknowledged messages (service.admission.receive_window).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edgeagent.inference.contract import OutputSpec
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import ReplyRoute
from edgeagent.protocol.request import Request


@dataclass(frozen=True, slots=True)
class Waiting:
    """One delivery of a task: the message to acknowledge and where its reply goes."""

    message: Incoming
    route: ReplyRoute


@dataclass(slots=True, eq=False)
class InFlight:
    task_id: str
    fingerprint: str
    waiting: list[Waiting]
    # Addresses the reply was published to (delivery.py). A client's re-send that joins
    # after its address was served takes it out again: that client asked once more,
    # perhaps because it missed the first copy, and gets the reply again.
    served: set[ReplyRoute] = field(default_factory=set)

    def routes(self) -> list[ReplyRoute]:
        """Each distinct reply address once: a broker redelivery shares its original's."""
        return list(dict.fromkeys(w.route for w in self.waiting))

    def unserved(self) -> list[ReplyRoute]:
        return [r for r in self.routes() if r not in self.served]


@dataclass(slots=True, eq=False)
class Job:
    """A task admitted for the model."""

    request: Request
    spec: OutputSpec
    entry: InFlight
    received: float  # clock() when admitted
    deadline: float
    cancel: threading.Event = field(default_factory=threading.Event)
    # Earlier runs of this task that ended with the process (the task store's count). A
    # task with any runs alone: if the process dies again, the abort is its own.
    aborts: int = 0

    @property
    def task_id(self) -> str:
        return self.request.id

    @property
    def action_label(self) -> str:
        return "schema" if self.spec.kind == "schema" else ",".join(self.spec.allowed_actions)


class InFlightRegistry:
    """Task id -> the deliveries waiting for its reply. Touched on the event loop only."""

    def __init__(self) -> None:
        self._entries: dict[str, InFlight] = {}

    def get(self, task_id: str) -> InFlight | None:
        return self._entries.get(task_id)

    def open(self, task_id: str, fingerprint: str, first: Waiting) -> InFlight:
        assert task_id not in self._entries, task_id
        entry = InFlight(task_id, fingerprint, [first])
        self._entries[task_id] = entry
        return entry

    def close(self, entry: InFlight) -> list[Waiting]:
        """End an entry; its deliveries, to be acknowledged (or left for the broker)."""
        if self._entries.get(entry.task_id) is entry:
            del self._entries[entry.task_id]
        return list(entry.waiting)

    def holding(self, message: Incoming) -> bool:
        """Whether a delivery of `message` waits in some entry (that entry acknowledges
        it). A scan, for the rare path where admission failed and must not ack twice."""
        return any(w.message is message for e in self._entries.values() for w in e.waiting)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._entries
