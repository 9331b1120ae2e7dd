"""What the host-booting tests share: the offline fleet wheelhouse, a flat apt repository,
the controller's Ansible venv and timing reports (the Ansible fleet test and the systemd
service test). support/prebuild.py makes these caches in the background."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeagent"
PROFILE = "x86-64-v3"
ANSIBLE_DIR = ROOT / "ansible"
REQUIREMENTS_DEV = ANSIBLE_DIR / "requirements-dev.txt"
# EDGEAGENT_TEST_ARM64=0 leaves the emulated Raspberry Pi out of the fleet test (its tests
# are then skipped, saying so); by default it is part of it wherever the test hosts run.
ARM64_ENABLED = os.environ.get("EDGEAGENT_TEST_ARM64", "1") != "0"


def arm64_harness() -> Any:
    """tests/harness/arm64.py, imported only where the emulated Pi is wanted."""
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import arm64  # noqa: PLC0415 - keeps qemu helpers out of other test runs

    return arm64


# --------------------------------------------------------------------------- wheelhouse


def wheelhouse_key() -> str:
    """The package version, its dependency declarations, the build scripts and the sources."""
    digest = hashlib.sha256()
    parts = [
        ROOT / "pyproject.toml",
        ROOT / "scripts" / "build-fleet-wheelhouse.sh",
        ROOT / "scripts" / "build-wheelhouse.sh",
        ROOT / "scripts" / "aarch64-linux-gnu.cmake",
    ]
    parts += sorted((ROOT / "edgeagent").rglob("*.py"))
    parts += sorted((ROOT / "edgeagent").rglob("*.typed"))
    for path in parts:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(os.environ.get("LLAMA_CPP_PYTHON_VERSION", "").encode())
    return digest.hexdigest()[:16]


def build_fleet_wheelhouse(profiles: tuple[str, ...] = (PROFILE,)) -> Path:
    """~/.cache/edgeagent/fleet-wheelhouse/<key>/PROFILE/ for each profile: built once.

    x86-64-v3 by default; pi4/pi5 cross-compile llama.cpp for aarch64 (several minutes
    the first time, then cached by scripts/build-wheelhouse.sh). Other sessions (and
    tests/test_systemd_service.py) may use other keys at the same time: a build is done
    under a lock, and only keys unused for a day are removed.
    """
    root = CACHE / "fleet-wheelhouse"
    root.mkdir(parents=True, exist_ok=True)
    key = wheelhouse_key()
    target = root / key
    for profile in profiles:
        # A lock per profile: the pi4 cross build (minutes) and the x86 one run side by side.
        with _locked(root / f".lock-{profile}"):
            if (target / profile / "SHA256SUMS").is_file():
                continue
            started = time.monotonic()
            subprocess.run(
                [
                    "bash",
                    str(ROOT / "scripts" / "build-fleet-wheelhouse.sh"),
                    profile,
                    str(target / profile),
                ],
                check=True,
                timeout=3600,
            )
            label = "wheelhouse build" if profile == PROFILE else f"wheelhouse build {profile}"
            report_timing(label, time.monotonic() - started)
    with _locked(root / ".lock"):
        os.utime(target)
        for other in root.iterdir():
            stale = time.time() - other.stat().st_mtime > 86400
            if other.is_dir() and other != target and not other.name.startswith(".") and stale:
                shutil.rmtree(other, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- reporting

_TIMINGS: dict[str, float] = {}
_TIMINGS_LOCK = threading.Lock()  # the background builds report too


def report_timing(what: str, seconds: float) -> None:
    artifacts = Path(os.environ.get("EDGEAGENT_TEST_ARTIFACTS", CACHE / "test-artifacts"))
    target = artifacts / "ansible-timings.json"
    # make test runs two sessions (and a prebuild process) that all report here: merged.
    with _TIMINGS_LOCK, _locked(artifacts / ".ansible-timings.lock"):
        _TIMINGS[what] = round(seconds, 1)
        merged: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            merged = json.loads(target.read_text())
        target.write_text(json.dumps(merged | _TIMINGS, indent=2) + "\n")
        if sys.__stderr__ is not None:
            sys.__stderr__.write(f"\n[ansible timing] {what}: {seconds:.1f} s\n")


# --------------------------------------------------------------------------- package mirror

# What the role installs with apt when missing (the test rootfs has no libgomp1), plus
# python3-apt, which Ansible's apt module installs for itself on a host without it.
MIRROR_PACKAGES = ("libgomp1", "python3-apt", "python-apt-common", "distro-info-data")


def build_debian_mirror() -> Path:
    """A flat apt repository with MIRROR_PACKAGES, for hosts that have no internet."""
    directory = CACHE / "fleet-debs"
    if not (directory / "Packages").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        download = ["apt-get", "download", *MIRROR_PACKAGES]
        if subprocess.run(download, cwd=directory, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True, timeout=600)
            subprocess.run(download, cwd=directory, check=True)
        packages = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "."],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (directory / "Packages").write_text(packages)
    return directory


# --------------------------------------------------------------------------- ansible


def ensure_ansible_venv() -> Path:
    """A venv with exactly ansible/requirements-dev.txt, cached by the file's hash; its bin/."""
    digest = hashlib.sha256(REQUIREMENTS_DEV.read_bytes()).hexdigest()[:12]
    venv = CACHE / "ansible-venv" / digest
    ready = venv / ".installed"
    with _locked(CACHE / "ansible-venv.lock"):
        if not ready.exists():
            if venv.exists():
                shutil.rmtree(venv)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            pip += ["--disable-pip-version-check", "-r", str(REQUIREMENTS_DEV)]
            subprocess.run(pip, check=True)
            ready.write_text(digest + "\n")
            for other in venv.parent.iterdir():  # older pins
                if other != venv:
                    shutil.rmtree(other, ignore_errors=True)
    return venv / "bin"


def ansible_env(ansible_bin: Path, workdir: Path) -> dict[str, str]:
    """The environment ansible-playbook runs with in the tests (ansible/ansible.cfg, no colour)."""
    env = {
        **os.environ,
        "PATH": f"{ansible_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
        # Throwaway hosts reuse addresses: never share SSH masters with another run.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("ANSIBLE_INVENTORY", None)
    return env


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
