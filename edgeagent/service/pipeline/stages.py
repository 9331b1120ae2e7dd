"""The task pipeline's stages, built together around one queue and one in-flight ledger.

    link -> Admission -> TaskQueue -> Worker (engine) -> Delivery -> Ledger (ack)

They share the queue and the ledger of ids in flight (the one place task messages are
acknowledged), so they are made in one place: the daemon's assembly (service/assembly.py)
with the real collaborators, the unit tests (tests/support/service_parts.py) with fakes.
The daemon only runs and stops them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeagent.config import Config
from edgeagent.protocol.reply import Reply
from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline.admission import Admission
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.delivery import Delivery
from edgeagent.service.pipeline.jobs import Job
from edgeagent.service.pipeline.ledger import Ledger
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.worker import Answerer, HeldActions, LearnedShots, Worker
from edgeagent.service.ports import DeliveryLink
from edgeagent.service.views.telemetry import Telemetry


@dataclass(frozen=True, slots=True)
class Stages:
    queue: TaskQueue[Job]
    admission: Admission
    worker: Worker
    delivery: Delivery


def build_stages(
    cfg: Config,
    *,
    topics: Topics,
    queue: TaskQueue[Job],
    link: DeliveryLink,
    store: AsyncTaskStore,
    engine: Answerer,
    telemetry: Telemetry,
    holds: HeldActions | None = None,
    learned: LearnedShots | None = None,
    on_reply: Callable[[Reply], None] | None = None,
    on_dispatched: Callable[[str, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Stages:
    """`queue` is the one Telemetry reports on; `on_reply`/`on_dispatched` feed the
    operators' views (service/views/operators.py)."""
    ledger = Ledger(link)
    delivery = Delivery(
        link=link,
        store=store,
        ledger=ledger,
        topics=topics,
        device=cfg.device.id,
        on_reply=on_reply,
        on_dispatched=on_dispatched,
    )
    admission = Admission(
        cfg,
        topics=topics,
        queue=queue,
        ledger=ledger,
        store=store,
        delivery=delivery,
        counters=telemetry.counters,
        on_queued=telemetry.refresh_status,
        clock=clock,
    )
    worker = Worker(
        cfg,
        queue=queue,
        engine=engine,
        delivery=delivery,
        store=store,
        ledger=ledger,
        telemetry=telemetry,
        clock=clock,
        holds=holds,
        learned=learned,
    )
    return Stages(queue=queue, admission=admission, worker=worker, delivery=delivery)
