"""What is still to be published for a task id the store has an outcome for.

A broker's redelivery gets what the broker does not have yet; a client's re-send gets
the reply again. Both are computed from the stored record alone, so they are the same
bytes after any number of restarts; an action is never dispatched twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgeagent.service.pipeline.task_records import Confirmation, TaskRecord


def refused_dispatch(reply: str, topic: str) -> str:
    """The reply of a task whose action message the broker (or the link) refused:
    `"dispatched": false`, then `"dispatch_refused": {"topic": ...}`, every other key as
    it was. A function of the stored reply alone, so a redelivery sends the same bytes;
    the reason code is on the errors topic (REPLY_REFUSED) and in the log."""
    body: dict[str, Any] = {}
    for key, value in json.loads(reply).items():
        body[key] = False if key == "dispatched" else value
        if key == "dispatched":
            body["dispatch_refused"] = {"topic": topic}
    text = json.dumps(body, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escaped, as protocol.reply.encode does
        return json.dumps(body, ensure_ascii=True)
    return text


@dataclass(frozen=True, slots=True)
class Plan:
    """What is still to be published for one task id."""

    task_id: str
    reply: str  # payload
    # False when the routes waiting now already have this reply (a broker redelivery of
    # a confirmed reply); deliveries that join later with another address still get it.
    send_reply: bool = True
    action_topic: str | None = None  # set only while the action is still to be dispatched
    action: str | None = None

    @classmethod
    def from_record(cls, record: TaskRecord, *, redelivery: bool) -> Plan:
        """From the store. A broker redelivery gets what the broker does not have yet; a
        client's re-send gets the reply again, saying `dispatch_refused` if the broker
        refused the action. An action is never dispatched twice."""
        outcome = record.outcome
        assert outcome is not None
        confirmed = record.reply_state is Confirmation.CONFIRMED
        pending_action = record.action_state is Confirmation.PENDING
        reply = outcome.reply
        if record.action_state is Confirmation.REFUSED and outcome.action_topic is not None:
            reply = refused_dispatch(reply, outcome.action_topic)
        return cls(
            record.id,
            reply,
            send_reply=not (redelivery and confirmed),
            action_topic=outcome.action_topic if pending_action else None,
            action=outcome.action if pending_action else None,
        )

    @property
    def idle(self) -> bool:
        return not self.send_reply and self.action is None
