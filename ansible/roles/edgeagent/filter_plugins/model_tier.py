# ruff: noqa: INP001 - an Ansible filter plugin, loaded by Ansible from this directory
"""Which model tier a host gets (defaults/main.yml, edgeagent_model_tiers).

``tiers | edgeagent_model_tier(memtotal_mb, forced="")`` returns the tier (a mapping with
``name``, ``min_memtotal_mb``, ``filename``, ``sha256``): the one named ``forced`` when it is
set, else the first tier, in the given order (largest model first), whose
``min_memtotal_mb`` the host's memory reaches. An unknown name, a host no tier fits, or a
tier without its fields is an error that says so (the role stops before it copies anything).
Standard library only, so the choice is unit-tested without Ansible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FIELDS = ("name", "min_memtotal_mb", "filename", "sha256")


def _checked(tiers: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if not tiers:
        raise ValueError("edgeagent_model_tiers is empty")
    for index, tier in enumerate(tiers):
        missing = [f for f in FIELDS if f not in tier]
        if missing:
            raise ValueError(f"edgeagent_model_tiers[{index}] lacks {', '.join(missing)}")
    return list(tiers)


def edgeagent_model_tier(
    tiers: Sequence[Mapping[str, Any]], memtotal_mb: Any, forced: str = ""
) -> Mapping[str, Any]:
    checked = _checked(tiers)
    names = ", ".join(str(t["name"]) for t in checked)
    if forced:
        for tier in checked:
            if tier["name"] == forced:
                return tier
        raise ValueError(f"edgeagent_model_tier {forced!r} is not one of the tiers: {names}")
    try:
        memory = int(memtotal_mb)
    except (TypeError, ValueError):
        raise ValueError(
            f"the host's memory (ansible_memtotal_mb) is unknown ({memtotal_mb!r}):"
            f" set edgeagent_model_tier to one of {names}"
        ) from None
    for tier in checked:
        if memory >= int(tier["min_memtotal_mb"]):
            return tier
    smallest = min(int(t["min_memtotal_mb"]) for t in checked)
    raise ValueError(f"no model tier fits {memory} MB (smallest needs {smallest} MB)")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"edgeagent_model_tier": edgeagent_model_tier}
