"""Eval sets: cases together with the catalog (or schema) they are answered against.

A suite is a TOML manifest naming one or more sets, paths relative to the manifest::

    [[sets]]
    name = "greenhouse"
    catalog = "catalogs/greenhouse.toml"  # a config file, or a fragment with [[actions]]
    no_action = "no_action"               # the "nothing to do" action (default: the
                                          # catalog's nothing_to_do, else no_action)
    cases = "greenhouse.jsonl"

    [[sets]]
    name = "log-events"
    schema = "schemas/log_event.json"     # default schema of the set's schema cases
    cases = "log_events.jsonl"

A single JSONL file can also be evaluated against a config's catalog (`single_set`).
Every case is checked against its set when loaded: expected actions must exist in the
catalog and expected argument names in the action's schema, so a renamed action
fails the load rather than scoring zero.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeagent.config import ActionConfig
from edgeagent.config.catalog import CatalogConfig, effective_min_confidence, nothing_to_do
from edgeagent.evaluation.cases import Case, CaseError, load_cases

DEFAULT_NO_ACTION = "no_action"


@dataclass(frozen=True, slots=True)
class EvalSet:
    name: str
    cases: list[Case]
    catalog: list[ActionConfig]
    no_action: str | None  # the designated "nothing to do" action, if the catalog has one
    schema: dict[str, Any] | None = None  # default schema of schema cases
    settings: CatalogConfig = field(default_factory=CatalogConfig)  # its [catalog] section

    def min_confidence(self, action: str | None) -> float | None:
        """The `min_confidence` below which the daemon would hold `action`."""
        found = next((a for a in self.catalog if a.name == action), None)
        return None if found is None else effective_min_confidence(found, self.settings)


class _SetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    cases: Path
    catalog: Path | None = None
    no_action: str | None = None
    schema_: Path | None = Field(default=None, alias="schema")


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    sets: list[_SetEntry] = Field(min_length=1)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CaseError(f"cannot read {path}: {exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CaseError(f"cannot read {path}: {exc}") from exc


def load_catalog(path: Path) -> list[ActionConfig]:
    """The [[actions]] of a config file or of a fragment holding only them.

    Schema paths are resolved relative to the file, as `load_config` does; the other
    sections of a full config are ignored here (the model comes from the command line).
    """
    return load_catalog_settings(path)[0]


def load_catalog_settings(path: Path) -> tuple[list[ActionConfig], CatalogConfig]:
    """`load_catalog`, with the file's [catalog] section (the default min_confidence)."""
    data = _read_toml(path)
    raw = data.get("actions")
    if not isinstance(raw, list) or not raw:
        raise CaseError(f"{path}: no [[actions]]")
    actions = []
    for index, entry in enumerate(raw):
        item = dict(entry) if isinstance(entry, dict) else entry
        if isinstance(item, dict) and isinstance(item.get("schema"), str):
            schema_path = Path(item["schema"])
            item["schema"] = _read_json(path.parent / schema_path)
        try:
            actions.append(ActionConfig.model_validate(item))
        except ValidationError as exc:
            raise CaseError(f"{path}: actions[{index}]: {exc.errors()[0]['msg']}") from exc
    designated = [a.name for a in actions if a.nothing_to_do]
    if len(designated) > 1:
        raise CaseError(f"{path}: at most one action may be nothing_to_do, not {designated}")
    try:
        settings = CatalogConfig.model_validate(data.get("catalog", {}))
    except ValidationError as exc:
        raise CaseError(f"{path}: catalog: {exc.errors()[0]['msg']}") from exc
    return actions, settings


def check_case(case: Case, catalog: Sequence[ActionConfig], schema: Any, where: str) -> None:
    """Raise CaseError if the case cannot be scored against this set."""
    if case.expect.kind == "schema":
        if case.schema_ is None and schema is None:
            raise CaseError(f"{where}: case {case.id}: expect.output needs a schema")
        return
    by_name = {a.name: a for a in catalog}
    if not by_name:
        raise CaseError(f"{where}: case {case.id}: action cases need a catalog")
    unknown = set(case.actions or []) - set(by_name)
    for alternative in case.expect.alternatives():
        if alternative.action not in by_name:
            unknown.add(alternative.action)
            continue
        props = by_name[alternative.action].schema_.get("properties")
        extra = set(alternative.args) - set(props or {}) if isinstance(props, dict) else set()
        if extra:
            raise CaseError(
                f"{where}: case {case.id}: {alternative.action} has no argument(s) {sorted(extra)}"
            )
    if unknown:
        raise CaseError(f"{where}: case {case.id}: not in the catalog: {sorted(unknown)}")


def make_set(
    name: str,
    cases: list[Case],
    catalog: list[ActionConfig],
    *,
    no_action: str | None = None,
    schema: dict[str, Any] | None = None,
    where: str = "",
    settings: CatalogConfig | None = None,
) -> EvalSet:
    """A checked set. The "nothing to do" action is the catalog's `nothing_to_do` one;
    `no_action` names it for a catalog without one (and must agree with it otherwise);
    the default is an action called no_action, if any."""
    names = {a.name for a in catalog}
    designated = nothing_to_do(catalog)
    if no_action is not None and no_action not in names:
        raise CaseError(f"{where or name}: no_action {no_action!r} is not in the catalog")
    if designated is not None:
        if no_action is not None and no_action != designated.name:
            raise CaseError(
                f"{where or name}: no_action {no_action!r} is not the catalog's "
                f"nothing_to_do action {designated.name!r}"
            )
        no_action = designated.name
    if no_action is None and DEFAULT_NO_ACTION in names:
        no_action = DEFAULT_NO_ACTION
    for case in cases:
        check_case(case, catalog, schema, where or name)
    return EvalSet(name, cases, catalog, no_action, schema, settings or CatalogConfig())


def load_suite(path: Path) -> list[EvalSet]:
    try:
        manifest = _Manifest.model_validate(_read_toml(path))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise CaseError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    if len({s.name for s in manifest.sets}) != len(manifest.sets):
        raise CaseError(f"{path}: set names must be unique")
    base = path.parent
    sets = []
    for entry in manifest.sets:
        catalog, settings = (
            load_catalog_settings(base / entry.catalog) if entry.catalog else ([], None)
        )
        schema = _read_json(base / entry.schema_) if entry.schema_ else None
        cases = load_cases(base / entry.cases)
        sets.append(
            make_set(
                entry.name,
                cases,
                catalog,
                no_action=entry.no_action,
                schema=schema,
                where=str(base / entry.cases),
                settings=settings,
            )
        )
    return sets


def select(sets: list[EvalSet], names: Sequence[str] | None, limit: int | None) -> list[EvalSet]:
    """Only the named sets (all when None), and at most `limit` cases of each."""
    known = {s.name for s in sets}
    unknown = set(names or []) - known
    if unknown:
        raise CaseError(f"unknown set(s) {sorted(unknown)}; known: {sorted(known)}")
    chosen = [s for s in sets if names is None or s.name in names]
    if limit is None:
        return chosen
    return [dataclasses.replace(s, cases=s.cases[:limit]) for s in chosen]
