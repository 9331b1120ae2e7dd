"""Safe dispatch: what an answered action task replies, and whether its action goes out.

An action answer is dispatched (published on <prefix>/<device>/actions/<name>) when its
action has `dispatch = true` and it is not *held*. The gate (inference/gate.py) holds
it, and the reply says why (docs/protocol.md), when the decoder had to end it early,
when its arguments hold a number the input does not support, when the model's
confidence in the choice (weighed against the whole catalog, whatever the request
allowed) is below the action's `min_confidence` or unknown, or when its calibrated
probability of acting at all is below `[catalog] min_act_confidence`. The "nothing to
do" action is never held. A held action is stored as a reply without an action message, so no
redelivery or re-send can dispatch it (service/pipeline/delivery.py, service/pipeline/taskstore.py).

With `[model] reason` the model writes a short reason before the action; it moves from
the output to the reply's `reason`, so `output` stays `{"action", "args"}` and the
action message never carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeagent.config import Config
from edgeagent.inference.gate import judge
from edgeagent.inference.task import Answer
from edgeagent.protocol.hold import Hold
from edgeagent.protocol.reply import ActionInfo, ActionMessage
from edgeagent.protocol.topics import Topics


@dataclass(frozen=True, slots=True)
class DispatchDecision:
    """An answer as the reply and the dispatch see it."""

    output: Any  # the reply's output: for an action, {"action", "args"}
    action: ActionInfo | None  # action tasks only
    message: ActionMessage | None  # what to publish on actions/<name>; None: nothing


def decide_dispatch(
    cfg: Config, task_id: str, kind: str, answer: Answer, content: Any = ""
) -> DispatchDecision:
    """The reply's output and action fields, and the action message if it is dispatched.
    `content`: the task's input, which the arguments' numbers must be supported by."""
    output = answer.output
    if kind != "action" or not isinstance(output, dict):
        return DispatchDecision(output, None, None)
    reason = output.get("reason")
    output = {k: v for k, v in output.items() if k != "reason"}
    action_cfg = cfg.action(str(output.get("action")))
    if action_cfg is None:  # the contract only lets catalog actions out
        return DispatchDecision(output, ActionInfo(answer.confidence, dispatched=False), None)
    verdict = judge(
        cfg.catalog,
        action_cfg,
        output.get("args"),
        content,
        confidence=answer.confidence,
        act=answer.act,
        act_prior=answer.act_prior,
        cut_short=answer.cut_short,
        instruction_score=answer.instruction_score,
    )
    held = None
    if verdict.held is not None:
        topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, cfg.mqtt.shared_group)
        topic = topics.action(str(output["action"]))
        held = Hold(
            verdict.held,
            verdict.confidence,
            verdict.min_confidence,
            topic if action_cfg.dispatch else None,
        )
    dispatch = action_cfg.dispatch and held is None
    message = ActionMessage(task_id, cfg.device.id, output) if dispatch else None
    info = ActionInfo(
        confidence=verdict.confidence,
        dispatched=message is not None,
        held=held,
        reason=reason if isinstance(reason, str) else None,
        act_confidence=verdict.act_confidence,
        instruction_score=verdict.instruction_score,
    )
    return DispatchDecision(output, info, message)
