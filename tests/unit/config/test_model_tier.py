"""The Ansible role's model tier filter (ansible/roles/edgeagent/filter_plugins/model_tier.py).

Which model a host gets from its memory; tests/integration/test_ansible_model_tier.py
runs the same choice through ansible-playbook and the role's defaults.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[3] / "ansible" / "roles" / "edgeagent"


def _load_filter() -> Any:
    spec = importlib.util.spec_from_file_location(
        "model_tier", ROLE / "filter_plugins" / "model_tier.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()["edgeagent_model_tier"]


choose = _load_filter()
# The role's own tiers, as shipped.
TIERS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())["edgeagent_model_tiers"]


@pytest.mark.parametrize(
    ("memtotal_mb", "tier"),
    [
        (8059, "qwen-coder-1.5b"),  # Pi 5 / Pi 4, 8 GB
        (3796, "qwen-coder-1.5b"),  # Pi 4, 4 GB: reports less than 4,096
        ("3552", "qwen-coder-1.5b"),  # the same with gpu_mem=256 (facts may be strings)
        (3071, "qwen-coder"),
        (1848, "qwen-coder"),  # Pi 4, 2 GB
        (416, "qwen-coder"),  # Pi Zero 2 W: the governor decides whether it fits
    ],
)
def test_the_tier_follows_the_memory(memtotal_mb: Any, tier: str) -> None:
    assert choose(TIERS, memtotal_mb)["name"] == tier


def test_the_shipped_tiers_are_the_fetched_models() -> None:
    script = (ROLE.parents[2] / "scripts" / "fetch_model.py").read_text()
    for tier in TIERS:
        assert tier["filename"] in script
        assert tier["sha256"] in script


def test_a_named_tier_wins_over_the_memory() -> None:
    assert choose(TIERS, 8059, "qwen-coder")["name"] == "qwen-coder"
    assert choose(TIERS, 1848, "qwen-coder-1.5b")["name"] == "qwen-coder-1.5b"
    assert choose(TIERS, None, "qwen-coder")["name"] == "qwen-coder"  # memory not needed


@pytest.mark.parametrize(
    ("tiers", "memtotal_mb", "forced", "message"),
    [
        (TIERS, 8059, "qwen-coder-7b", "is not one of the tiers: qwen-coder-1.5b, qwen-coder"),
        (TIERS, None, "", "the host's memory (ansible_memtotal_mb) is unknown"),
        (TIERS[:1], 1848, "", "no model tier fits 1848 MB (smallest needs 3072 MB)"),
        ([], 1848, "", "edgeagent_model_tiers is empty"),
        ([{"name": "x", "filename": "x.gguf"}], 1848, "", "lacks min_memtotal_mb, sha256"),
    ],
)
def test_what_cannot_be_chosen_says_why(
    tiers: Any, memtotal_mb: Any, forced: str, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        choose(tiers, memtotal_mb, forced)
    assert message in str(caught.value)
