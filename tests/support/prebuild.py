"""The fleet tests' slow caches, built in the background while other tests run.

`make test` starts `python3 -m support.prebuild prebuild` (PYTHONPATH=tests, stdlib only)
before it builds the venv; a pytest session starts the builds its tests need as soon as
they are collected (tests/integration/conftest.py). Every build is a cache on disk made
under a file lock, so those started here and the same build asked for elsewhere wait for
each other instead of building twice.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support.fleet import (
    ARM64_ENABLED,
    ROOT,
    arm64_harness,
    build_debian_mirror,
    build_fleet_wheelhouse,
    ensure_ansible_venv,
    report_timing,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def hosts_harness() -> Any:
    """tests/harness/hosts.py, imported only where containers are wanted."""
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import hosts  # noqa: PLC0415 - keeps the container helpers out of other runs

    return hosts


def hosts_unavailable() -> str | None:
    """Why the nspawn fleet cannot run here (the fleet tests skip, saying so), or None."""
    if os.geteuid() != 0:
        return "the fleet tests boot systemd-nspawn containers: they need root"
    if shutil.which("systemd-nspawn") is None and shutil.which("apt-get") is None:
        return "systemd-nspawn is missing (apt-get install systemd-container)"
    if (reason := hosts_harness().probe()) is not None:
        return str(reason)
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return "mosquitto is not installed (scripts/install-system-deps.sh)"
    return None


def arm64_unavailable() -> str | None:
    """Why the emulated Raspberry Pi cannot run here (its tests skip, saying so), or None."""
    if not ARM64_ENABLED:
        return "the emulated Raspberry Pi is switched off (EDGEAGENT_TEST_ARM64=0)"
    if (reason := arm64_harness().arm64_probe()) is not None:
        return f"cannot run the emulated Raspberry Pi: {reason}"
    return None


def _build_arm64_image() -> Any:
    started = time.monotonic()
    image = arm64_harness().ensure_arm64_image()
    report_timing("arm64 image (cached or built)", time.monotonic() - started)
    return image


# What the session fixtures wait for, by name: each is a cache on disk, built once under a
# file lock, so a build started here and the same build asked for elsewhere (another
# session, `scripts/testhosts`) wait for each other instead of building twice.
BUILDS: dict[str, Callable[[], Any]] = {
    "ansible venv": ensure_ansible_venv,
    "debian mirror": build_debian_mirror,
    "x86-64-v3 wheelhouse": build_fleet_wheelhouse,
    "pi4 wheelhouse": lambda: build_fleet_wheelhouse(("pi4",)),
    "nspawn root": lambda: hosts_harness().ensure_rootfs(),
    "arm64 image": _build_arm64_image,
}


def runnable(builds: Iterable[str]) -> list[str]:
    """The builds of those wanted whose tests can run here (none without the nspawn hosts)."""
    if hosts_unavailable() is not None:
        return []
    emulated = {"pi4 wheelhouse", "arm64 image"} if arm64_unavailable() is not None else set()
    return [name for name in dict.fromkeys(builds) if name not in emulated]


class Prebuilds:
    """BUILDS started in threads when the session starts; a fixture waits for its build.

    Cold, the fleet test needs ~25 minutes of builds (the pi4 llama.cpp cross-compile on both
    cores; the emulated Pi's image, one emulated dpkg at a time; the nspawn root) before its
    first rollout. Started at once, they overlap with each other and with the tests that need
    none of them (tests/integration/conftest.py runs those first). A build nobody started is
    made by the fixture itself; a failed one raises in the fixture that waits for it.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: dict[str, Future[Any]] = {}
        self._started = time.monotonic()

    def start(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self._jobs:
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(len(BUILDS), thread_name_prefix="prebuild")
            self._jobs[name] = self._pool.submit(self._timed, name)

    def _timed(self, name: str) -> Any:
        started = time.monotonic()
        result = BUILDS[name]()
        report_timing(f"background build: {name}", time.monotonic() - started)
        return result

    def get(self, name: str) -> Any:
        """The build's result: waited for if it was started, made here if not."""
        job = self._jobs.get(name)
        if job is None:
            return BUILDS[name]()
        waited = time.monotonic()
        result = job.result()
        if (seconds := time.monotonic() - waited) >= 1:
            report_timing(f"waited for the background build: {name}", seconds)
        return result

    def running(self) -> list[str]:
        return [name for name, job in self._jobs.items() if not job.done()]

    def finish(self) -> list[str]:
        """Wait for what is still building (a cache half made is thrown away, so it finishes
        for the next session); the builds that failed and nobody waited for, as text."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        return [
            f"background build {name} failed: {job.exception()!r}"
            for name, job in self._jobs.items()
            if job.exception() is not None
        ]


PREBUILDS = Prebuilds()


# What `make test` starts before the venv's own llama.cpp build (everything but the x86
# wheelhouse, which needs that build).
EARLY = ("pi4 wheelhouse", "arm64 image", "nspawn root", "ansible venv", "debian mirror")


def main(argv: list[str]) -> int:
    """`python3 -m support.prebuild prebuild` (PYTHONPATH=tests; stdlib only): make EARLY.

    `make test` runs it in the background before it builds the venv, so the cold builds
    overlap with the venv's; the session's fixtures then find them cached, or wait for them
    through their file locks. Where the fleet test cannot run, it builds nothing. A failure
    is printed and left to the fixture that needs the build (it builds again and fails there).
    """
    if argv != ["prebuild"]:
        sys.stderr.write("usage: python3 -m support.prebuild prebuild\n")
        return 2
    PREBUILDS.start(runnable(EARLY))
    for problem in PREBUILDS.finish():
        sys.stderr.write(f"prebuild: {problem}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
