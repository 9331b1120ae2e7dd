# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""Memory readings: how much memory this process may still use, as the kernel sees it.

psutil's "available" is the host's view. A service under systemd's MemoryMax=/MemoryHigh=
(or in a container) is killed or throttled by its cgroup long before the host runs out,
so the reading also walks the process's memory cgroup and all its ancestors and keeps
the one with the least headroom. See docs/memory.md for the operator's view.

Everything is read through `proc_root` and `cgroup_root` (and injectable psutil
callables), so tests can drive it with fake trees. Nothing here needs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX * page size (9223372036854771712 with 4 KiB
# pages), v2 as "max". Anything this large is no limit on any machine that exists.
UNLIMITED_THRESHOLD = 1 << 60


class MemorySource(StrEnum):
    """Which constraint `available_bytes` came from."""

    HOST = "host"  # the whole machine (psutil's MemAvailable)
    CGROUP = "cgroup"  # a cgroup limit of this process (or one of its ancestors)


class _VirtualMemory(Protocol):
    @property
    def available(self) -> int: ...
    @property
    def total(self) -> int: ...


class _SwapMemory(Protocol):
    @property
    def free(self) -> int: ...


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One sample. All sizes in bytes.

    cgroup_* describe the tightest limited cgroup on the path from the process's own
    memory cgroup to the root; when no cgroup is limited they describe the process's own
    cgroup (limit None), and when no memory controller is found at all they are None.
    """

    host_available_bytes: int  # MemAvailable: free + reclaimable cache, whole machine
    host_total_bytes: int  # physical RAM of the machine
    swap_free_bytes: int  # free swap (informational; never counted as available)
    process_rss_bytes: int  # resident set of the process that took the reading
    cgroup_version: int | None  # 1 or 2: which hierarchy holds the memory controller
    cgroup_path: str | None  # e.g. "/system.slice/edgeagent.service"
    cgroup_limit_bytes: int | None  # tightest of memory.max/memory.high (v2), limit_in_bytes (v1)
    cgroup_usage_bytes: int | None  # usage of that cgroup minus its reclaimable inactive file cache
    psi_some_avg10: float | None  # % of the last 10 s some task stalled on memory; None: no PSI
    source: MemorySource  # which of host / cgroup is the tighter one
    available_bytes: int  # min(host available, cgroup limit - cgroup usage), never negative


@dataclass(frozen=True, slots=True)
class _CgroupSample:
    path: str
    limit: int | None
    usage: int | None

    @property
    def headroom(self) -> int | None:
        if self.limit is None:
            return None
        return max(0, self.limit - (self.usage or 0))


def _process_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def read_memory(
    proc_root: Path = Path("/proc"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    vm: Callable[[], _VirtualMemory] = psutil.virtual_memory,
    swap: Callable[[], _SwapMemory] = psutil.swap_memory,
    rss: Callable[[], int] = _process_rss,
) -> MemoryReading:
    """Take one reading. Never raises for missing or unreadable cgroup files."""
    host = vm()
    host_available = int(host.available)
    memberships = _parse_proc_cgroup(_read_text(proc_root / "self" / "cgroup") or "")

    version: int | None = None
    samples: list[_CgroupSample] = []
    v1_mount = cgroup_root / "memory"
    v2_mount = _v2_mount(cgroup_root)
    v2_path = memberships.get("")
    if "memory" in memberships and v1_mount.is_dir():
        version = 1
        samples = list(_walk(v1_mount, memberships["memory"], _sample_v1))
    elif v2_path is not None and v2_mount is not None:
        samples = list(_walk(v2_mount, v2_path, _sample_v2))
        # Without the memory controller enabled there is no memory.current anywhere.
        version = 2 if any(s.usage is not None or s.limit is not None for s in samples) else None

    chosen: _CgroupSample | None = None
    limited = [s for s in samples if s.headroom is not None]
    if limited:
        # min() keeps the first of equals, and samples run from the own cgroup upwards.
        chosen = min(limited, key=lambda s: s.headroom or 0)
    elif version is not None and samples:
        chosen = samples[0]

    psi = None
    if v2_path is not None and v2_mount is not None:
        own_v2, _ = _resolve(v2_mount, v2_path)
        psi = _parse_psi(_read_text(own_v2 / "memory.pressure"))
    if psi is None:
        psi = _parse_psi(_read_text(proc_root / "pressure" / "memory"))

    available, source = host_available, MemorySource.HOST
    headroom = chosen.headroom if chosen is not None else None
    if headroom is not None and headroom < host_available:
        available, source = headroom, MemorySource.CGROUP

    return MemoryReading(
        host_available_bytes=host_available,
        host_total_bytes=int(host.total),
        swap_free_bytes=int(swap().free),
        process_rss_bytes=int(rss()),
        cgroup_version=version if chosen is not None else None,
        cgroup_path=chosen.path if chosen is not None else None,
        cgroup_limit_bytes=chosen.limit if chosen is not None else None,
        cgroup_usage_bytes=chosen.usage if chosen is not None else None,
        psi_some_avg10=psi,
        source=source,
        available_bytes=max(0, available),
    )


def format_bytes(size: int | None) -> str:
    """1536 -> '1.5 KiB'; for log lines and human reasons."""
    if size is None:
        return "unlimited"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# --- parsing -------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # missing, EACCES, ENODEV on a vanished cgroup: all mean "unknown"
        return None


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """`ID:CONTROLLERS:PATH` lines -> {controller: path}; the v2 line `0::PATH` maps "" -> PATH."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and controllers == "":
            result[""] = path
            continue
        for controller in controllers.split(","):
            if controller:
                result.setdefault(controller, path)
    return result


def _v2_mount(cgroup_root: Path) -> Path | None:
    """The unified hierarchy: /sys/fs/cgroup itself (pure v2) or /sys/fs/cgroup/unified (hybrid)."""
    for candidate in (cgroup_root, cgroup_root / "unified"):
        if (candidate / "cgroup.controllers").is_file():
            return candidate
    return None


def _resolve(mount: Path, cgroup_path: str) -> tuple[Path, str]:
    """The directory of `cgroup_path` under `mount`.

    Inside a container without its own cgroup namespace /proc/self/cgroup names the host's
    path (/docker/<id>/...) while the mount shows only the container's subtree, so leading
    components are dropped until a directory exists; the mount itself is the last resort.
    """
    parts = [p for p in cgroup_path.split("/") if p and p != ".."]
    for start in range(len(parts) + 1):
        rest = parts[start:]
        candidate = mount.joinpath(*rest)
        if candidate.is_dir():
            return candidate, "/" + "/".join(rest)
    return mount, "/"


def _walk(
    mount: Path, cgroup_path: str, sample: Callable[[Path, str], _CgroupSample]
) -> Iterator[_CgroupSample]:
    """Samples of the own cgroup, then of each ancestor up to the mount's root."""
    directory, path = _resolve(mount, cgroup_path)
    while True:
        yield sample(directory, path)
        if path == "/" or directory == mount:
            return
        directory = directory.parent
        path = path.rsplit("/", 1)[0] or "/"


def _parse_limit(text: str | None) -> int | None:
    """'max', huge v1 sentinels, missing and garbage all mean: no limit."""
    if text is None:
        return None
    value = text.strip()
    if value == "max":
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return None if number >= UNLIMITED_THRESHOLD or number < 0 else number


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _parse_stat(text: str | None) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            stats[key] = int(value)
        except ValueError:
            continue
    return stats


def _usage_minus_inactive_file(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


def _sample_v1(directory: Path, path: str) -> _CgroupSample:
    stats = _parse_stat(_read_text(directory / "memory.stat"))
    inactive = stats.get("total_inactive_file", stats.get("inactive_file"))
    usage = _parse_int(_read_text(directory / "memory.usage_in_bytes"))
    return _CgroupSample(
        path=path,
        limit=_parse_limit(_read_text(directory / "memory.limit_in_bytes")),
        usage=_usage_minus_inactive_file(usage, inactive),
    )


def _sample_v2(directory: Path, path: str) -> _CgroupSample:
    limits = [
        limit
        for name in ("memory.max", "memory.high")
        if (limit := _parse_limit(_read_text(directory / name))) is not None
    ]
    stats = _parse_stat(_read_text(directory / "memory.stat"))
    usage = _parse_int(_read_text(directory / "memory.current"))
    return _CgroupSample(
        path=path,
        limit=min(limits) if limits else None,
        usage=_usage_minus_inactive_file(usage, stats.get("inactive_file")),
    )


def _parse_psi(text: str | None) -> float | None:
    """The avg10 of the `some` line of a PSI file (percent of time some task stalled)."""
    for line in (text or "").splitlines():
        fields = line.split()
        if not fields or fields[0] != "some":
            continue
        for field in fields[1:]:
            key, _, value = field.partition("=")
            if key == "avg10":
                try:
                    return float(value)
                except ValueError:
                    return None
    return None


__all__ = [
    "UNLIMITED_THRESHOLD",
    "MemoryReading",
    "MemorySource",
    "format_bytes",
    "read_memory",
]
