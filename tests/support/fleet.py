"""What the host-booting tests share: the offline fleet wheelhouse, a flat apt repository
and timing reports (the Ansible fleet test and the systemd service test)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from support.daemon import ROOT

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeagent"
PROFILE = "x86-64-v3"


# --------------------------------------------------------------------------- wheelhouse


def wheelhouse_key() -> str:
    """The package version, its dependency declarations, the build scripts and the sources."""
    digest = hashlib.sha256()
    parts = [
        ROOT / "pyproject.toml",
        ROOT / "scripts" / "build-fleet-wheelhouse.sh",
        ROOT / "scripts" / "build-wheelhouse.sh",
    ]
    parts += sorted((ROOT / "edgeagent").rglob("*.py"))
    parts += sorted((ROOT / "edgeagent").rglob("*.typed"))
    for path in parts:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(os.environ.get("LLAMA_CPP_PYTHON_VERSION", "").encode())
    return digest.hexdigest()[:16]


def build_fleet_wheelhouse() -> Path:
    """~/.cache/edgeagent/fleet-wheelhouse/<key>/, with the x86-64-v3 profile: built once.

    Other sessions (and tests/test_systemd_service.py) may use other keys at the same
    time: a build is done under a lock, and only keys unused for a day are removed.
    """
    root = CACHE / "fleet-wheelhouse"
    root.mkdir(parents=True, exist_ok=True)
    key = wheelhouse_key()
    target = root / key
    with (root / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / PROFILE / "SHA256SUMS").is_file():
            started = time.monotonic()
            subprocess.run(
                [
                    "bash",
                    str(ROOT / "scripts" / "build-fleet-wheelhouse.sh"),
                    PROFILE,
                    str(target / PROFILE),
                ],
                check=True,
                timeout=3600,
            )
            report_timing("wheelhouse build", time.monotonic() - started)
        os.utime(target)
        for other in root.iterdir():
            stale = time.time() - other.stat().st_mtime > 86400
            if other.is_dir() and other != target and not other.name.startswith(".") and stale:
                shutil.rmtree(other, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- reporting

_TIMINGS: dict[str, float] = {}


def report_timing(what: str, seconds: float) -> None:
    _TIMINGS[what] = round(seconds, 1)
    artifacts = Path(os.environ.get("EDGEAGENT_TEST_ARTIFACTS", CACHE / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "ansible-timings.json").write_text(json.dumps(_TIMINGS, indent=2) + "\n")
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
