# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""The memory cgroups of this process, v1 or v2, and its memory pressure (PSI).

A service under systemd's MemoryMax=/MemoryHigh= (or in a container) is killed or
throttled by its cgroup long before the host runs out, so the process's own memory cgroup
and all its ancestors are read and the one with the least headroom is kept; readings.py
sets it against the host's view. Apart from the readings because it is the part that
parses kernel files, with every layout they come in (pure v2, hybrid, v1, a container
that sees only its subtree), and never raises for a missing or unreadable one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX * page size (9223372036854771712 with 4 KiB
# pages), v2 as "max". Anything this large is no limit on any machine that exists.
UNLIMITED_THRESHOLD = 1 << 60


@dataclass(frozen=True, slots=True)
class CgroupSample:
    path: str
    limit: int | None
    usage: int | None

    @property
    def headroom(self) -> int | None:
        if self.limit is None:
            return None
        return max(0, self.limit - (self.usage or 0))


@dataclass(frozen=True, slots=True)
class CgroupView:
    """What the cgroups say of this process."""

    version: int | None  # 1 or 2: which hierarchy holds the memory controller
    tightest: CgroupSample | None  # the least headroom; the own cgroup when none is limited
    psi_some_avg10: float | None  # % of the last 10 s some task stalled on memory


def read_cgroups(proc_root: Path, cgroup_root: Path) -> CgroupView:
    """The tightest limited cgroup on the path from the own one to the root, and the
    memory pressure (the own v2 cgroup's, else the host's)."""
    memberships = _parse_proc_cgroup(_read_text(proc_root / "self" / "cgroup") or "")

    version: int | None = None
    samples: list[CgroupSample] = []
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

    chosen: CgroupSample | None = None
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
    return CgroupView(version, chosen, psi)


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
    mount: Path, cgroup_path: str, sample: Callable[[Path, str], CgroupSample]
) -> Iterator[CgroupSample]:
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


def _sample_v1(directory: Path, path: str) -> CgroupSample:
    stats = _parse_stat(_read_text(directory / "memory.stat"))
    inactive = stats.get("total_inactive_file", stats.get("inactive_file"))
    usage = _parse_int(_read_text(directory / "memory.usage_in_bytes"))
    return CgroupSample(
        path=path,
        limit=_parse_limit(_read_text(directory / "memory.limit_in_bytes")),
        usage=_usage_minus_inactive_file(usage, inactive),
    )


def _sample_v2(directory: Path, path: str) -> CgroupSample:
    limits = [
        limit
        for name in ("memory.max", "memory.high")
        if (limit := _parse_limit(_read_text(directory / name))) is not None
    ]
    stats = _parse_stat(_read_text(directory / "memory.stat"))
    usage = _parse_int(_read_text(directory / "memory.current"))
    return CgroupSample(
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
