"""Safe dispatch: what an answered action task replies, and whether its action goes out.

An action answer is dispatched (published on <prefix>/<device>/actions/<name>) when its
action has `dispatch = true` and it is not *held*. It is held, and the reply says why
(docs/protocol.md), when the decoder had to end it early (`cut_short`: its arguments may
be cut), or when the action has a `min_confidence` (its own, else `[catalog]`) and the
model's confidence in the choice is below it or unknown. The "nothing to do" action is
never held. A held action is stored as a reply without an action message, so no
redelivery or re-send can dispatch it (service/delivery.py, service/taskstore.py).

With `[model] reason` the model writes a short reason before the action; it moves from
the output to the reply's `reason`, so `output` stays `{"action", "args"}` and the
action message never carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeagent.config import Config
from edgeagent.inference.task import Answer
from edgeagent.protocol.reply import ActionInfo, ActionMessage, Hold, hold_reason
from edgeagent.protocol.topics import Topics


@dataclass(frozen=True, slots=True)
class Settled:
    """An answer as the reply and the dispatch see it."""

    output: Any  # the reply's output: for an action, {"action", "args"}
    action: ActionInfo | None  # action tasks only
    message: ActionMessage | None  # what to publish on actions/<name>; None: nothing


def settle(cfg: Config, task_id: str, kind: str, answer: Answer) -> Settled:
    """The reply's output and action fields, and the action message if it is dispatched."""
    output = answer.output
    if kind != "action" or not isinstance(output, dict):
        return Settled(output, None, None)
    reason = output.get("reason")
    output = {k: v for k, v in output.items() if k != "reason"}
    action_cfg = cfg.action(str(output.get("action")))
    floor = cfg.min_confidence(action_cfg) if action_cfg is not None else None
    why = None
    if action_cfg is not None and not action_cfg.nothing_to_do:
        why = hold_reason(
            confidence=answer.confidence, cut_short=answer.cut_short, min_confidence=floor
        )
    dispatch = action_cfg is not None and action_cfg.dispatch
    held = None
    if why is not None:
        topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, cfg.mqtt.shared_group)
        topic = topics.action(str(output["action"]))
        held = Hold(why, answer.confidence, floor, topic if dispatch else None)
    message = ActionMessage(task_id, cfg.device.id, output) if dispatch and held is None else None
    info = ActionInfo(
        confidence=answer.confidence,
        dispatched=message is not None,
        held=held,
        reason=reason if isinstance(reason, str) else None,
    )
    return Settled(output, info, message)
