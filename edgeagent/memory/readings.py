# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""Memory readings: how much memory this process may still use, as the kernel sees it.

psutil's "available" is the host's view. A service under systemd's MemoryMax=/MemoryHigh=
(or in a container) is killed or throttled by its cgroup long before the host runs out,
so the reading also walks the process's memory cgroup and all its ancestors and keeps
the one with the least headroom. See docs/memory.md for the operator's view.

Everything is read through `proc_root` and `cgroup_root` (and injectable psutil
callables), so tests can drive it with fake trees; the cgroup files are parsed in
cgroups.py. Nothing here needs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psutil

from edgeagent.memory.cgroups import read_cgroups

if TYPE_CHECKING:
    from collections.abc import Callable


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
    view = read_cgroups(proc_root, cgroup_root)
    version, chosen, psi = view.version, view.tightest, view.psi_some_avg10

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


__all__ = [
    "MemoryReading",
    "MemorySource",
    "format_bytes",
    "read_memory",
]
