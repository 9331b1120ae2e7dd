"""Session fixtures of the host-booting integration tests (built once, cached on disk)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.fleet import (
    ARM64_ENABLED,
    arm64_harness,
    build_debian_mirror,
    build_fleet_wheelhouse,
    ensure_ansible_venv,
    report_timing,
)


@pytest.fixture(scope="session")
def ansible_bin() -> Path:
    """bin/ of a venv with the pinned controller tools (ansible/requirements-dev.txt)."""
    return ensure_ansible_venv()


@pytest.fixture(scope="session")
def fleet_wheelhouse() -> Path:
    return build_fleet_wheelhouse()


@pytest.fixture(scope="session")
def pi_wheelhouse() -> Path:
    """The same wheelhouse directory as fleet_wheelhouse, with the pi4 profile added
    (llama.cpp cross-compiled for aarch64, the rest aarch64 wheels for CPython 3.11)."""
    return build_fleet_wheelhouse(("pi4",))


@pytest.fixture(scope="session")
def debian_mirror() -> Path:
    return build_debian_mirror()


@pytest.fixture(scope="session")
def arm64_image() -> Any:
    """The cached Debian bookworm arm64 image of the emulated Pi (built on first use)."""
    if not ARM64_ENABLED:
        pytest.skip("the emulated Raspberry Pi is switched off (EDGEAGENT_TEST_ARM64=0)")
    harness = arm64_harness()
    if (reason := harness.arm64_probe()) is not None:
        pytest.skip(f"cannot run the emulated Raspberry Pi: {reason}")
    started = time.monotonic()
    image = harness.ensure_arm64_image()
    report_timing("arm64 image (cached or built)", time.monotonic() - started)
    return image
