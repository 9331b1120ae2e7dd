"""A task admitted for the model: what the worker runs, and the ledger entry it answers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edgeagent.inference.contract import OutputSpec
from edgeagent.protocol.request import Request
from edgeagent.service.pipeline.ledger import InFlight


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
