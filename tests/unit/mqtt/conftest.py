"""The broker play's filter plugin (ansible/roles/edgeagent/filter_plugins/mosquitto.py),
loaded as Ansible loads it: a file of its own, outside the edgeagent package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

PLUGIN = (
    Path(__file__).parents[3]
    / "ansible"
    / "roles"
    / "edgeagent"
    / "filter_plugins"
    / "mosquitto.py"
)


@pytest.fixture(scope="module")
def rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mosquitto_filters", PLUGIN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
