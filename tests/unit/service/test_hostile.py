"""The hostile corpus and the fuzz generator against the service, with a fake broker.

Every case of support/hostile.py, including the Response Topics no broker would forward
(control characters, surrogates, non-characters), goes through admission, worker and
delivery with a fake engine. Each message must end in exactly one reply at the right
address with a documented code and exactly one ack, nothing may be published outside
the device's own topics and the allowed reply prefix, and nothing may stay in flight.
The live version, with the real model on a real mosquitto, is
tests/integration/test_hostile.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs
from support import aio
from support.fake_engine import service_config
from support.fake_link import FakeLink, Published
from support.hostile import ERRORS, REPLIES, Case, corpus, interleave
from support.hostile_fuzz import draw_cases
from support.service_parts import Parts

from edgeagent.config import ActionConfig
from edgeagent.mqtt.incoming import Incoming

MAX_PAYLOAD = 256 * 1024
WINDOW = 16  # unacknowledged messages at a time, as a broker keeping Receive Maximum would
DEVICE_TOPICS = ("edgeagent/dev1/results/", "edgeagent/dev1/actions/")
DEVICE_FIXED = {ERRORS, "edgeagent/dev1/status", "edgeagent/dev1/heartbeat"}


# The live daemon's catalog has it (support/catalogs.py); the valid tasks use it.
NO_ACTION = ActionConfig(name="no_action", description="Nothing to do.", schema={"type": "object"})


def started_parts() -> Parts:
    cfg = service_config()
    cfg = cfg.model_copy(update={"actions": [*cfg.actions, NO_ACTION]})
    return Parts.on(link=FakeLink(max_payload_bytes=MAX_PAYLOAD), cfg=cfg)


def run(coro, timeout=120):
    return aio.run(coro, timeout)


@dataclass
class Sent:
    case: Case
    task_id: str
    message: Incoming
    correlation: bytes
    replies: list[Published] = field(default_factory=list)


def allowed_topic(topic: str) -> bool:
    return (
        topic in DEVICE_FIXED
        or topic.startswith(DEVICE_TOPICS)
        or topic == "replies"
        or topic.startswith("replies/")
    )


async def drive(parts: Parts, cases: list[Case]) -> list[Sent]:
    sent: list[Sent] = []
    for n, case in enumerate(cases):
        await parts.link.wait_until(lambda: len(sent) - len(parts.link.acked) < WINDOW)
        correlation = f"c{n}".encode()
        task_id = f"h{n}"
        message = parts.link.deliver(
            case.with_id(task_id),
            response_topic=REPLIES if case.response_topic is None else case.response_topic,
            correlation_data=correlation,
        )
        sent.append(Sent(case, task_id, message, correlation))
    await parts.link.wait_until(lambda: len(parts.link.acked) >= len(sent), within_s=60)
    assert await parts.delivery.wait_idle(within_s=5)  # acked: their tasks end now
    by_correlation = {s.correlation: s for s in sent}
    by_id = {s.task_id: s for s in sent}
    for published in parts.link.published:
        if published.topic == ERRORS:
            body = published.body
            owner = by_id.get(body.get("id"))
            assert owner is not None, f"errors-topic reply of no message: {body}"
            owner.replies.append(published)
        elif published.correlation_data in by_correlation:
            by_correlation[published.correlation_data].replies.append(published)
    return sent


def check(parts: Parts, sent: list[Sent]) -> None:
    acks = [id(m) for m in parts.link.acked]
    for item in sent:
        case = item.case
        assert acks.count(id(item.message)) == 1, case.name
        assert len(item.replies) == 1, (case.name, [(r.topic, r.payload) for r in item.replies])
        (reply,) = item.replies
        body = reply.body
        code = "ok" if body["status"] == "ok" else body["error"]["code"]
        # The fake engine answers every task that reaches it.
        expected = case.codes | ({"ok"} if case.runs_model else set())
        assert code in expected, (case.name, body)
        if case.to_errors:
            assert reply.topic == ERRORS, (case.name, reply.topic)
            assert body["id"] == item.task_id, case.name
            assert code == "INVALID_REQUEST", case.name
        else:
            wanted = REPLIES if case.response_topic is None else case.response_topic
            assert reply.topic == wanted, (case.name, reply.topic)
    strays = [p.topic for p in parts.link.published if not allowed_topic(p.topic)]
    assert strays == []
    for published in parts.link.on("edgeagent/dev1/actions/set_irrigation"):
        assert "status" not in published.body  # only action messages, never a reply
    assert parts.link.invalid == []  # the policy refused them before the link had to
    assert len(parts.admission._ledger) == 0
    assert not any(task.done() for task in parts._tasks)  # admission and worker still run


def test_every_hostile_case_is_answered_where_it_may_be_and_acked_once():
    async def scenario():
        parts = await started_parts().start()
        cases = interleave(corpus(MAX_PAYLOAD), every=5)
        with capture_logs():
            sent = await drive(parts, cases)
        check(parts, sent)
        valid = [s for s in sent if "valid" in s.case.tags]
        assert valid
        assert all(s.replies[0].body["status"] == "ok" for s in valid)
        # Sanity of the corpus itself: it has each kind of case the issue lists.
        assert sum(s.case.to_errors for s in sent) >= 60
        assert any(not s.case.broker_forwards for s in sent)
        await parts.crash()

    run(scenario())


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_tasks_are_answered_where_they_may_be_and_acked_once(seed):
    async def scenario():
        parts = await started_parts().start()
        cases = interleave(draw_cases(150, seed=seed, broker_safe=False), every=10)
        with capture_logs() as logs:
            sent = await drive(parts, cases)
        check(parts, sent)
        codes = {s.replies[0].body.get("error", {}).get("code", "ok") for s in sent if s.replies}
        assert "INTERNAL" not in codes
        assert not [e for e in logs if e.get("log_level") in {"error", "critical"}]
        await parts.crash()

    run(scenario())
