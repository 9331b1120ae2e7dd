"""Session fixtures of the host-booting integration tests (built once, cached on disk).

The slow ones are started in the background as soon as the session knows its tests
(support.prebuild.Prebuilds), and the tests that wait for the emulated Pi's builds run last,
so the builds overlap with everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.acl_broker import acl_broker, clients  # noqa: F401 - fixtures of test_broker_acl*
from support.fleet import ARM64_ENABLED
from support.prebuild import PREBUILDS, arm64_unavailable, runnable

# Fixture -> the background builds it waits for. A test that uses a fixture of the last
# group (its builds take the longest) runs at the end of the session.
NEEDS: dict[str, tuple[str, ...]] = {
    "ansible_bin": ("ansible venv",),
    "debian_mirror": ("debian mirror",),
    "fleet_wheelhouse": ("x86-64-v3 wheelhouse",),
    "pi_wheelhouse": ("pi4 wheelhouse",),
    "arm64_image": ("arm64 image",),
    "arm64_host_image": ("pi4 wheelhouse", "arm64 image") if ARM64_ENABLED else (),
}
LAST = frozenset({"pi_wheelhouse", "arm64_image", "arm64_host_image"})


def _fixtures(item: pytest.Item) -> set[str]:
    return set(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that wait for the pi4 cross build and the arm64 image go last (stable), so
    in one session their builds overlap with every other test. (`make test` runs the fleet
    test in a session of its own beside the rest.)"""
    items.sort(key=lambda item: bool(_fixtures(item) & LAST))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the builds the selected tests will wait for (where those tests can run)."""
    if session.config.option.collectonly:
        return
    used = set().union(*(_fixtures(item) for item in session.items)) if session.items else set()
    wanted = [build for fixture in sorted(used & NEEDS.keys()) for build in NEEDS[fixture]]
    if any(item.get_closest_marker("container") for item in session.items):
        wanted.append("nspawn root")
    if wanted:
        PREBUILDS.start(runnable(wanted))


def pytest_sessionfinish(session: pytest.Session) -> None:
    writer = session.config.get_terminal_writer()
    if running := PREBUILDS.running():
        writer.line(f"waiting for the background builds to finish (cached): {', '.join(running)}")
    for problem in PREBUILDS.finish():
        writer.line(problem, red=True)


@pytest.fixture(scope="session")
def ansible_bin() -> Path:
    """bin/ of a venv with the pinned controller tools (ansible/requirements-dev.txt)."""
    path: Path = PREBUILDS.get("ansible venv")
    return path


@pytest.fixture(scope="session")
def fleet_wheelhouse() -> Path:
    path: Path = PREBUILDS.get("x86-64-v3 wheelhouse")
    return path


@pytest.fixture(scope="session")
def pi_wheelhouse() -> Path:
    """The same wheelhouse directory as fleet_wheelhouse, with the pi4 profile added
    (llama.cpp cross-compiled for aarch64, the rest aarch64 wheels for CPython 3.11)."""
    path: Path = PREBUILDS.get("pi4 wheelhouse")
    return path


@pytest.fixture(scope="session")
def debian_mirror() -> Path:
    path: Path = PREBUILDS.get("debian mirror")
    return path


@pytest.fixture(scope="session")
def arm64_image() -> Any:
    """The cached Debian bookworm arm64 image of the emulated Pi (built on first use)."""
    if (reason := arm64_unavailable()) is not None:
        pytest.skip(reason)
    return PREBUILDS.get("arm64 image")
