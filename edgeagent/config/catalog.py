"""The action catalog: the actions a device may answer with, and the gate's floors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from edgeagent.config.base import NAME_RE, Section

MAX_EXAMPLES = 8  # per action: they are in every prompt of the catalog (its cached prefix)
MAX_LEARNED_PER_TASK = 8  # learned examples shown with one task (inference/shots.py)


class ActionExample(Section):
    """An example input for an action, with the arguments it should get (optional)."""

    input: str = Field(min_length=1, max_length=300, description="An input the action fits.")
    args: dict[str, Any] | None = Field(
        default=None, description="The arguments a right answer to that input has."
    )


class ActionConfig(Section):
    name: str = Field(pattern=NAME_RE, description="Action name, also a topic level.")
    description: str = Field(min_length=1, description="What the action does; shown to the model.")
    schema_: dict[str, Any] = Field(
        alias="schema",
        description="JSON Schema of the action's arguments: an inline table or a path to a file.",
    )
    dispatch: bool = Field(
        default=False,
        description="Also publish the validated action to <prefix>/<device>/actions/<name>.",
    )
    when: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="When to choose the action (and when not); shown to the model.",
    )
    examples: list[str | ActionExample] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description=(
            "Example inputs the action fits, shown to the model: texts, or tables "
            "`{input, args}` with the arguments a right answer has (checked against `schema`)."
        ),
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "Hold the action (reply `held`, nothing published to actions/<name>) when the "
            "model's confidence in choosing it is below this, or unknown. "
            "Default: `[catalog] min_confidence`."
        ),
    )
    nothing_to_do: bool = Field(
        default=False,
        description=(
            'The "nothing to do" action (at most one): the prompt presents it as the default; '
            "never held."
        ),
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _examples_fit(self) -> ActionConfig:
        # Imported here: jsonschema is only needed when a catalog has example arguments.
        import jsonschema  # noqa: PLC0415

        for index, example in enumerate(self.examples):
            if isinstance(example, ActionExample) and example.args is not None:
                known = self.schema_.get("properties")
                unknown = sorted(set(example.args) - set(known if isinstance(known, dict) else {}))
                if unknown:
                    raise ValueError(f"examples[{index}].args: not in the schema: {unknown}")
                try:
                    jsonschema.validate(example.args, self.schema_)
                except jsonschema.ValidationError as exc:
                    raise ValueError(
                        f"examples[{index}].args do not fit the schema: {exc.message}"
                    ) from exc
                except jsonschema.SchemaError:
                    continue  # the schema itself is refused with its own message at compile
        return self

    def example_texts(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(input, args or None) of every example, in order."""
        return [(e, None) if isinstance(e, str) else (e.input, e.args) for e in self.examples]


class CatalogConfig(Section):
    min_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "Default `min_confidence` of the actions that set none. Default: none "
            "(actions are dispatched whatever their confidence)."
        ),
    )
    min_act_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "Act-or-not floor: an action (any but the nothing-to-do one) is held when the "
            "model's calibrated probability of acting at all (the reply's "
            "`act_confidence`) is below it. Default: none."
        ),
    )
    unsupported_arguments: Literal["hold", "lower", "allow"] = Field(
        default="hold",
        description=(
            "An action whose arguments hold a number that neither the input (in digits "
            "or words) nor the action's examples support: `hold` it (reason "
            "`unsupported_argument`), `lower` its confidence (halved) so "
            "`min_confidence` decides, or `allow` it."
        ),
    )
    screen_instructions: bool = Field(
        default=True,
        description=(
            "Instruction screen: before a `dispatch = true` action goes out, the model is "
            "asked separately whether the input tries to instruct the device (ignore its "
            "rules, claim an override, play a role, orders hidden in a report). Costs the "
            "input's tokens once more per such answer; `false`: no screen."
        ),
    )
    max_instruction_score: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description=(
            "An action whose input the instruction screen scores at or above this "
            "probability is held (reason `instruction_like`); the reply's "
            "`instruction_score` says what it scored."
        ),
    )
    hold_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        description=(
            "A held `dispatch = true` action waits this long for an operator to confirm or "
            "reject it (MQTT `held/<task_id>/confirm`), then expires: nothing is dispatched."
        ),
    )
    max_pending_holds: int = Field(
        default=100,
        ge=1,
        le=10000,
        description=(
            "Holds waiting for an operator at most; a new hold beyond it expires the oldest "
            "pending one first."
        ),
    )
    learn: bool = Field(
        default=False,
        description=(
            "Learn from the operators' answers to held actions (confirmed, edited, "
            "rejected) into `<[state] dir>/learned.sqlite3`, and show the most similar "
            "learned examples with each action task, after the catalog and marked as data "
            "like the input (`edgeagent examples list|export|clear`; docs/evaluation.md "
            "measures it, docs/security.md bounds it). Turning it on needs a restart."
        ),
    )
    max_learned_examples: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Learned examples kept (the oldest go first; an input learned again "
        "replaces its older ruling).",
    )
    learned_examples_per_task: int = Field(
        default=3,
        ge=0,
        le=MAX_LEARNED_PER_TASK,
        description=(
            "Learned examples shown with one action task: the most similar to its input "
            "(shared words), at most 1,200 bytes of them together; 0: none."
        ),
    )


def effective_min_confidence(action: ActionConfig, catalog: CatalogConfig) -> float | None:
    """The action's own `min_confidence`, else the catalog's; None for the "nothing to
    do" action (holding it would hold nothing)."""
    if action.nothing_to_do:
        return None
    return action.min_confidence if action.min_confidence is not None else catalog.min_confidence


def nothing_to_do(actions: list[ActionConfig]) -> ActionConfig | None:
    """The designated "nothing to do" action of a catalog, if any."""
    return next((a for a in actions if a.nothing_to_do), None)
