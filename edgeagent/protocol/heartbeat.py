"""The retained heartbeat, `<prefix>/<device>/heartbeat`: its JSON body as models.

The reference for what a heartbeat holds (docs/protocol.md#heartbeat shows one), in two
views of the one body:

- `Heartbeat`: what this daemon publishes (service/views/telemetry.py builds it, the
  metrics read it). Strict, extra="forbid": a field a producer adds without adding it
  here fails the unit tests instead of reaching the wire unnamed. A key is in the JSON
  exactly when it was given, so the optional parts (`board`, `held` and `latest_hold`,
  the memory governor's `context` fields before its first reading) are left out rather
  than null, and what is null today (`tokens_per_s` before the first task, `latest_hold`
  with nothing pending) says null.
- `UntrustedHeartbeat`: what is read from another device's heartbeat (the fleet view,
  cli/fleet_heartbeat.py parses the bytes). Every other device is untrusted, so every
  field is optional, strictly typed and bounded, and unknown keys (a newer daemon's) are
  ignored. Only the fields a reader shows are checked: a bad field elsewhere is not the
  reader's problem.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# -- what this daemon publishes ---------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class QueueInfo(_Body):
    depth: int  # tasks waiting
    capacity: int


class TaskCounts(_Body):
    """Since this daemon started."""

    done: int
    failed: int
    busy: int  # refused BUSY: the queue was full


class ContextInfo(_Body):
    """The model's context now and, from the memory governor's first reading on, what
    memory allows and why (memory/control.py `snapshot`, docs/memory.md)."""

    n_ctx: int
    state: str | None = None
    budget: int | None = None
    limited_by: str | None = None
    reason: str | None = None
    available_mb: float | None = None  # the tighter of host and cgroup memory
    cgroup_limit_mb: float | None = None  # null without a cgroup limit
    source: str | None = None  # which of the two `available_mb` is


class MemoryInfo(_Body):
    rss_mb: float  # this daemon's resident memory
    host_available_mb: float


class BoardInfo(_Body):
    """What the board tells (service/system/board.py `BoardReading.as_dict`): the SoC
    temperature and, on a Raspberry Pi, the firmware's flags; a part left out is unknown."""

    temp_c: float | None = None
    under_voltage: bool | None = None
    freq_capped: bool | None = None
    throttled: bool | None = None
    soft_temp_limit: bool | None = None
    throttled_since_boot: bool | None = None
    under_voltage_since_boot: bool | None = None
    get_throttled: str | None = None  # the firmware's bits, as `vcgencmd get_throttled`


class LatestHold(_Body):
    """The newest pending hold (service/holds/records.py `heartbeat_entry`)."""

    task_id: str
    action: str
    args: dict[str, Any]
    confidence: float | None
    expires_at: str  # ISO 8601, UTC


class StoreInfo(_Body):
    state: Literal["ok", "degraded"]
    reason: str | None = None  # why exactly-once is not guaranteed (degraded only)


class Heartbeat(_Body):
    """The body, its fields in the order they go out."""

    device: str
    state: str  # service.daemon.State: starting, loading, serving, paused, draining, stopped
    ts: float  # Unix time, seconds
    queue: QueueInfo
    tasks: TaskCounts
    tokens_per_s: float | None  # decode speed over the last tasks; null before the first
    context: ContextInfo
    memory: MemoryInfo
    board: BoardInfo | None = None  # left out where the board tells nothing
    held: int | None = None  # pending holds; `held` and `latest_hold` only with holds
    latest_hold: LatestHold | None = None
    store: StoreInfo

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the fields that were given (see the module docstring)."""
        return self.model_dump(exclude_unset=True)


# -- what is read from another device ---------------------------------------------------

Count = Annotated[int, Field(ge=0, le=10**9)]
Amount = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


class _Untrusted(BaseModel):
    # Strict: "12.5" is not a number, true is not 1. Unknown keys are a newer daemon's.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class UntrustedQueue(_Untrusted):
    depth: Count | None = None
    capacity: Count | None = None


class UntrustedContext(_Untrusted):
    budget: Count | None = None
    available_mb: Amount | None = None


class UntrustedMemory(_Untrusted):
    host_available_mb: Amount | None = None


class UntrustedBoard(_Untrusted):
    temp_c: Annotated[float, Field(ge=-100, le=200, allow_inf_nan=False)] | None = None


class UntrustedHeartbeat(_Untrusted):
    """The fields of `Heartbeat` another device's heartbeat is read for."""

    state: Annotated[str, Field(max_length=256)] | None = None
    ts: Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)] | None = None
    tokens_per_s: Amount | None = None
    queue: UntrustedQueue | None = None
    context: UntrustedContext | None = None
    memory: UntrustedMemory | None = None
    board: UntrustedBoard | None = None
