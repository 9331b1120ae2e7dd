# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from edgeagent.memory.readings import MemoryReading, MemorySource, format_bytes, read_memory

if TYPE_CHECKING:
    from collections.abc import Iterator

MiB = 1024 * 1024
GiB = 1024 * MiB
V1_UNLIMITED = 9223372036854771712  # what cgroup v1 reports for "no limit" with 4 KiB pages
REPO = Path(__file__).resolve().parents[3]


# --- fake trees ----------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _proc(tmp_path: Path, cgroup_lines: str, pressure: str | None = None) -> Path:
    root = tmp_path / "proc"
    _write(root / "self" / "cgroup", cgroup_lines)
    if pressure is not None:
        _write(root / "pressure" / "memory", pressure)
    return root


def _v1(
    cg_root: Path,
    path: str,
    *,
    limit: int = V1_UNLIMITED,
    usage: int = 0,
    inactive_file: int | None = None,
) -> None:
    directory = cg_root / "memory" / path.strip("/")
    _write(directory / "memory.limit_in_bytes", f"{limit}\n")
    _write(directory / "memory.usage_in_bytes", f"{usage}\n")
    stat = f"cache 0\nrss {usage}\n"
    if inactive_file is not None:
        # v1 has both; the hierarchical total_ one is the one to use.
        stat += f"inactive_file 1\ntotal_inactive_file {inactive_file}\n"
    _write(directory / "memory.stat", stat)


def _v2_mount(cg_root: Path, *, unified: bool = False) -> Path:
    mount = cg_root / "unified" if unified else cg_root
    _write(mount / "cgroup.controllers", "cpu io memory pids\n")
    return mount


def _v2(
    mount: Path,
    path: str,
    *,
    max_: str = "max",
    high: str = "max",
    current: int = 0,
    inactive_file: int | None = None,
    pressure: str | None = None,
) -> None:
    directory = mount / path.strip("/")
    _write(directory / "memory.max", f"{max_}\n")
    _write(directory / "memory.high", f"{high}\n")
    _write(directory / "memory.current", f"{current}\n")
    stat = "anon 0\nfile 0\n"
    if inactive_file is not None:
        stat += f"active_file 7\ninactive_file {inactive_file}\n"
    _write(directory / "memory.stat", stat)
    if pressure is not None:
        _write(directory / "memory.pressure", pressure)


def _psi(avg10: float) -> str:
    return (
        f"some avg10={avg10:.2f} avg60=1.00 avg300=0.50 total=12345\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )


def headroom(reading: MemoryReading) -> int | None:
    """Limit minus usage of the tightest cgroup, never negative (None: no limit)."""
    if reading.cgroup_limit_bytes is None or reading.cgroup_usage_bytes is None:
        return None
    return max(0, reading.cgroup_limit_bytes - reading.cgroup_usage_bytes)


def _read(
    tmp_path: Path,
    proc: Path,
    *,
    available: int = 4 * GiB,
    total: int = 8 * GiB,
    swap_free: int = 100 * MiB,
    rss: int = 50 * MiB,
) -> MemoryReading:
    return read_memory(
        proc_root=proc,
        cgroup_root=tmp_path / "cgroup",
        vm=lambda: SimpleNamespace(available=available, total=total),
        swap=lambda: SimpleNamespace(free=swap_free),
        rss=lambda: rss,
    )


V1_LINES = (
    "12:pids:/system.slice/edgeagent.service\n"
    "4:memory:/system.slice/edgeagent.service\n"
    "3:cpu,cpuacct:/system.slice/edgeagent.service\n"
    "1:name=systemd:/system.slice/edgeagent.service\n"
)
V2_LINES = "0::/system.slice/edgeagent.service\n"
HYBRID_LINES = V1_LINES + V2_LINES


# --- no cgroups ----------------------------------------------------------------------------


def test_no_cgroup_information_means_host_memory(tmp_path: Path) -> None:
    reading = _read(tmp_path, _proc(tmp_path, ""), available=3 * GiB, swap_free=7, rss=11)
    assert reading.source is MemorySource.HOST
    assert reading.available_bytes == 3 * GiB
    assert reading.host_available_bytes == 3 * GiB
    assert reading.host_total_bytes == 8 * GiB
    assert reading.swap_free_bytes == 7
    assert reading.process_rss_bytes == 11
    assert reading.cgroup_version is None
    assert reading.cgroup_path is None
    assert reading.cgroup_limit_bytes is None
    assert reading.cgroup_usage_bytes is None
    assert headroom(reading) is None
    assert reading.psi_some_avg10 is None


def test_missing_proc_file_is_not_an_error(tmp_path: Path) -> None:
    reading = _read(tmp_path, tmp_path / "no-proc")
    assert reading.source is MemorySource.HOST
    assert reading.available_bytes == 4 * GiB


# --- cgroup v1 -----------------------------------------------------------------------------


def test_v1_limit_minus_usage_minus_inactive_file(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/")
    _v1(cg, "/system.slice")
    _v1(
        cg,
        "/system.slice/edgeagent.service",
        limit=300 * MiB,
        usage=200 * MiB,
        inactive_file=50 * MiB,
    )
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES), available=1 * GiB)
    assert reading.cgroup_version == 1
    assert reading.cgroup_path == "/system.slice/edgeagent.service"
    assert reading.cgroup_limit_bytes == 300 * MiB
    assert reading.cgroup_usage_bytes == 150 * MiB  # the inactive file cache is reclaimable
    assert headroom(reading) == 150 * MiB
    assert reading.source is MemorySource.CGROUP
    assert reading.available_bytes == 150 * MiB


def test_v1_unlimited_sentinel_means_no_limit(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/", usage=5 * GiB)
    _v1(cg, "/system.slice", usage=1 * GiB)
    _v1(cg, "/system.slice/edgeagent.service", usage=100 * MiB, inactive_file=10 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES), available=2 * GiB)
    assert reading.source is MemorySource.HOST
    assert reading.available_bytes == 2 * GiB
    assert reading.cgroup_version == 1
    # Unlimited everywhere: the own cgroup is described, for information.
    assert reading.cgroup_path == "/system.slice/edgeagent.service"
    assert reading.cgroup_limit_bytes is None
    assert reading.cgroup_usage_bytes == 90 * MiB
    assert headroom(reading) is None


def test_v1_tightest_ancestor_wins_by_headroom(tmp_path: Path) -> None:
    # The slice's limit is larger but its other services leave less room than the unit's.
    cg = tmp_path / "cgroup"
    _v1(cg, "/")
    _v1(cg, "/system.slice", limit=1 * GiB, usage=950 * MiB, inactive_file=10 * MiB)
    _v1(cg, "/system.slice/edgeagent.service", limit=800 * MiB, usage=100 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES))
    assert reading.cgroup_path == "/system.slice"
    assert reading.cgroup_limit_bytes == 1 * GiB
    assert reading.cgroup_usage_bytes == 940 * MiB
    assert reading.available_bytes == 84 * MiB
    assert reading.source is MemorySource.CGROUP


def test_v1_limit_on_an_ancestor_only(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/")
    _v1(cg, "/system.slice", limit=600 * MiB, usage=100 * MiB)
    _v1(cg, "/system.slice/edgeagent.service", usage=80 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES))
    assert reading.cgroup_path == "/system.slice"
    assert reading.available_bytes == 500 * MiB


def test_v1_host_tighter_than_cgroup(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/")
    _v1(cg, "/system.slice/edgeagent.service", limit=2 * GiB, usage=100 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES), available=700 * MiB)
    assert reading.source is MemorySource.HOST
    assert reading.available_bytes == 700 * MiB
    # The cgroup numbers are still reported.
    assert reading.cgroup_limit_bytes == 2 * GiB
    assert headroom(reading) == 2 * GiB - 100 * MiB


def test_v1_usage_over_limit_gives_zero_not_negative(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/system.slice/edgeagent.service", limit=100 * MiB, usage=130 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES))
    assert reading.available_bytes == 0
    assert headroom(reading) == 0


def test_v1_controller_in_a_combined_line(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/")
    _v1(cg, "/app", limit=256 * MiB, usage=56 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, "5:cpu,memory:/app\n1:name=systemd:/app\n"))
    assert reading.cgroup_path == "/app"
    assert reading.available_bytes == 200 * MiB


def test_v1_garbage_files_are_ignored(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    directory = cg / "memory" / "system.slice" / "edgeagent.service"
    _write(directory / "memory.limit_in_bytes", "lots\n")
    _write(directory / "memory.usage_in_bytes", "\n")
    _write(directory / "memory.stat", "total_inactive_file many\nnonsense\n")
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES))
    assert reading.source is MemorySource.HOST
    assert reading.cgroup_limit_bytes is None
    assert reading.cgroup_usage_bytes is None


def test_container_without_cgroup_namespace(tmp_path: Path) -> None:
    # /proc/self/cgroup names the host's path; the container sees its cgroup as the mount root.
    cg = tmp_path / "cgroup"
    _v1(cg, "/", limit=512 * MiB, usage=112 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, "4:memory:/docker/0123abcd\n"))
    assert reading.cgroup_path == "/"
    assert reading.available_bytes == 400 * MiB


def test_container_path_with_host_prefix_is_resolved_by_suffix(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/")
    _v1(cg, "/app", limit=256 * MiB, usage=6 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, "4:memory:/kubepods/pod1/app\n"))
    assert reading.cgroup_path == "/app"
    assert reading.available_bytes == 250 * MiB


def test_v1_psi_from_proc_pressure(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/system.slice/edgeagent.service", limit=300 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V1_LINES, pressure=_psi(3.25)))
    assert reading.psi_some_avg10 == 3.25


# --- cgroup v2 -----------------------------------------------------------------------------


def test_v2_high_tighter_than_max(tmp_path: Path) -> None:
    mount = _v2_mount(tmp_path / "cgroup")
    _write(mount / "system.slice" / "memory.current", "0\n")  # a slice without limits
    _v2(
        mount,
        "/system.slice/edgeagent.service",
        max_="524288000",
        high=str(400 * MiB),
        current=250 * MiB,
        inactive_file=50 * MiB,
        pressure=_psi(12.5),
    )
    reading = _read(tmp_path, _proc(tmp_path, V2_LINES, pressure=_psi(1.0)))
    assert reading.cgroup_version == 2
    assert reading.cgroup_path == "/system.slice/edgeagent.service"
    assert reading.cgroup_limit_bytes == 400 * MiB
    assert reading.cgroup_usage_bytes == 200 * MiB
    assert reading.available_bytes == 200 * MiB
    assert reading.source is MemorySource.CGROUP
    # The cgroup's own PSI is preferred over the system-wide one.
    assert reading.psi_some_avg10 == 12.5


def test_v2_max_only(tmp_path: Path) -> None:
    mount = _v2_mount(tmp_path / "cgroup")
    _v2(mount, "/system.slice/edgeagent.service", max_=str(300 * MiB), current=100 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V2_LINES))
    assert reading.cgroup_limit_bytes == 300 * MiB
    assert reading.available_bytes == 200 * MiB


def test_v2_unlimited_and_no_psi_in_cgroup_falls_back_to_proc(tmp_path: Path) -> None:
    mount = _v2_mount(tmp_path / "cgroup")
    _v2(mount, "/system.slice/edgeagent.service", current=100 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, V2_LINES, pressure=_psi(0.5)))
    assert reading.source is MemorySource.HOST
    assert reading.cgroup_version == 2
    assert reading.cgroup_limit_bytes is None
    assert reading.cgroup_usage_bytes == 100 * MiB
    assert reading.psi_some_avg10 == 0.5


def test_v2_tightest_ancestor(tmp_path: Path) -> None:
    mount = _v2_mount(tmp_path / "cgroup")
    _v2(mount, "/edge.slice", max_=str(1 * GiB), current=900 * MiB, inactive_file=100 * MiB)
    _v2(mount, "/edge.slice/edgeagent.service", high=str(700 * MiB), current=300 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, "0::/edge.slice/edgeagent.service\n"))
    assert reading.cgroup_path == "/edge.slice"
    assert reading.available_bytes == 224 * MiB


def test_v2_without_memory_controller(tmp_path: Path) -> None:
    mount = _v2_mount(tmp_path / "cgroup")
    (mount / "system.slice" / "edgeagent.service").mkdir(parents=True)
    reading = _read(tmp_path, _proc(tmp_path, V2_LINES))
    assert reading.cgroup_version is None
    assert reading.cgroup_path is None
    assert reading.source is MemorySource.HOST


# --- hybrid --------------------------------------------------------------------------------


def test_hybrid_uses_v1_memory_and_unified_psi(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _v1(cg, "/")
    _v1(cg, "/system.slice/edgeagent.service", limit=300 * MiB, usage=40 * MiB, inactive_file=0)
    unified = _v2_mount(cg, unified=True)
    # In hybrid mode the unified tree has no memory controller, but it has PSI.
    _write(unified / "system.slice" / "edgeagent.service" / "memory.pressure", _psi(7.0))
    reading = _read(tmp_path, _proc(tmp_path, HYBRID_LINES, pressure=_psi(1.0)))
    assert reading.cgroup_version == 1
    assert reading.cgroup_limit_bytes == 300 * MiB
    assert reading.available_bytes == 260 * MiB
    assert reading.psi_some_avg10 == 7.0


def test_hybrid_with_memory_in_unified(tmp_path: Path) -> None:
    # No v1 memory hierarchy: the memory controller lives in /sys/fs/cgroup/unified.
    cg = tmp_path / "cgroup"
    (cg / "cpu").mkdir(parents=True)
    unified = _v2_mount(cg, unified=True)
    _v2(unified, "/system.slice/edgeagent.service", max_=str(256 * MiB), current=56 * MiB)
    lines = "3:cpu,cpuacct:/system.slice/edgeagent.service\n" + V2_LINES
    reading = _read(tmp_path, _proc(tmp_path, lines))
    assert reading.cgroup_version == 2
    assert reading.available_bytes == 200 * MiB


def test_hybrid_v1_line_without_v1_mount_uses_v2(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    mount = _v2_mount(cg)
    _v2(mount, "/system.slice/edgeagent.service", max_=str(128 * MiB), current=28 * MiB)
    reading = _read(tmp_path, _proc(tmp_path, HYBRID_LINES))
    assert reading.cgroup_version == 2
    assert reading.available_bytes == 100 * MiB


def test_format_bytes() -> None:
    assert format_bytes(None) == "unlimited"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(300 * MiB) == "300.0 MiB"
    assert format_bytes(3 * 1024 * GiB) == "3072.0 GiB"


# --- this machine --------------------------------------------------------------------------


def test_real_machine_reading_is_sane() -> None:
    reading = read_memory()
    assert 0 < reading.host_available_bytes <= reading.host_total_bytes
    assert reading.swap_free_bytes >= 0
    assert 1 * MiB < reading.process_rss_bytes < reading.host_total_bytes
    assert 0 <= reading.available_bytes <= reading.host_available_bytes
    if reading.cgroup_limit_bytes is not None:
        assert reading.cgroup_limit_bytes > 0
        room = headroom(reading)
        assert room is not None
        assert reading.available_bytes <= room
    if reading.cgroup_usage_bytes is not None:
        assert reading.cgroup_usage_bytes >= 0
    if reading.psi_some_avg10 is not None:
        assert 0.0 <= reading.psi_some_avg10 <= 100.0
    print(reading)


CHILD = """
import dataclasses, json, sys
from edgeagent.memory.readings import read_memory
sys.stdin.readline()  # wait until the parent has moved us into the cgroup
print(json.dumps(dataclasses.asdict(read_memory())), flush=True)
"""
LIMIT = 300 * MiB


def _make_cgroup(parent: Path, limit_file: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    if not (parent / limit_file).exists() and not (parent / "cgroup.subtree_control").exists():
        pytest.skip(f"no memory cgroup hierarchy at {parent}")
    directory = parent / f"edgeagent-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        directory.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {parent}: {exc}")
    try:
        (directory / limit_file).write_text(str(LIMIT), encoding="utf-8")
    except OSError as exc:
        directory.rmdir()
        pytest.skip(f"cannot set {limit_file} in {directory}: {exc}")
    return directory


def _remove_cgroup(directory: Path) -> None:
    # A cgroup is removable once its processes are gone; an exited child may linger briefly.
    for _ in range(50):
        try:
            directory.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
        else:
            return
    directory.rmdir()


def _read_inside(directory: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        (directory / "cgroup.procs").write_text(str(child.pid), encoding="utf-8")
        out, _ = child.communicate("go\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == 0
    result: dict[str, object] = json.loads(out)
    return result


@pytest.fixture
def v1_cgroup() -> Iterator[Path]:
    directory = _make_cgroup(Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")
    try:
        yield directory
    finally:
        _remove_cgroup(directory)


@pytest.fixture
def v2_cgroup() -> Iterator[Path]:
    root = Path("/sys/fs/cgroup")
    controllers = root / "cgroup.subtree_control"
    if not controllers.exists() or "memory" not in controllers.read_text(encoding="utf-8").split():
        pytest.skip("no cgroup v2 hierarchy with the memory controller at /sys/fs/cgroup")
    directory = _make_cgroup(root, "memory.max")
    try:
        yield directory
    finally:
        _remove_cgroup(directory)


@pytest.mark.cgroup
def test_real_v1_cgroup_limit_is_seen_inside(v1_cgroup: Path) -> None:
    reading = _read_inside(v1_cgroup)
    print(reading)
    assert reading["cgroup_version"] == 1
    assert reading["cgroup_path"] == "/" + v1_cgroup.name
    assert reading["cgroup_limit_bytes"] == LIMIT
    assert reading["source"] == "cgroup"
    assert 0 < reading["available_bytes"] <= LIMIT  # type: ignore[operator]


@pytest.mark.cgroup
def test_real_v2_cgroup_limit_is_seen_inside(v2_cgroup: Path) -> None:
    reading = _read_inside(v2_cgroup)
    assert reading["cgroup_version"] == 2
    assert reading["cgroup_path"] == "/" + v2_cgroup.name
    assert reading["cgroup_limit_bytes"] == LIMIT
    assert reading["source"] == "cgroup"
    assert 0 < reading["available_bytes"] <= LIMIT  # type: ignore[operator]
