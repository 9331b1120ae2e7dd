"""Session fixtures of the host-booting integration tests (built once, cached on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fleet import build_debian_mirror, build_fleet_wheelhouse


@pytest.fixture(scope="session")
def fleet_wheelhouse() -> Path:
    return build_fleet_wheelhouse()


@pytest.fixture(scope="session")
def debian_mirror() -> Path:
    return build_debian_mirror()
