# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""sd_notify(3) without libsystemd, and a watchdog that only pings while the daemon works.

systemd hands a Type=notify service the address of its notification socket in
$NOTIFY_SOCKET: a file system path, or an abstract socket written with a leading
"@". A notification is one datagram of newline-separated VAR=value assignments.
Without $NOTIFY_SOCKET (run by hand, in tests) every call is a no-op.

Sending never raises: a daemon must not die because systemd's socket went away.
The first failure is logged; later ones are counted silently.

`Watchdog` pings WATCHDOG=1 only while every health probe holds, so a wedged
inference thread (or a blocked event loop, which stops calling `loop_tick`)
makes systemd restart the service after WatchdogSec=.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

Probe = Callable[[], bool]
"""A health probe: returns True while the part it watches is healthy."""


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _parse_address(raw: str) -> str | None:
    """$NOTIFY_SOCKET -> a sendto() address; None for a form this client does not speak."""
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # e.g. "vsock:..." (systemd >= 254 in VMs): not used on a Pi


def _one_line(text: str) -> str:
    # A newline would start a new assignment: STATUS must stay one line.
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; does nothing when it is unset."""

    def __init__(self, address: str | None) -> None:
        """`address` is $NOTIFY_SOCKET's value (path or "@abstract"), or None to disable."""
        self._address = _parse_address(address) if address else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failures = 0
        if address and self._address is None:
            log.warning("sd_notify socket address not supported", notify_socket=address)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False
    ) -> Notifier:
        """Read $NOTIFY_SOCKET; `unset_environment` removes it so children do not inherit it."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET") or None)
        if unset_environment and environ is None:
            os.environ.pop("NOTIFY_SOCKET", None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def failures(self) -> int:
        """How many notifications could not be sent."""
        return self._failures

    def notify(self, *assignments: str) -> bool:
        """Send "VAR=value" assignments as one datagram. True if it was sent."""
        if self._address is None or not assignments:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                # MSG_DONTWAIT: never block the event loop on a full systemd queue.
                self._sock.sendto(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self._address)
        except OSError as exc:
            self._failures += 1
            if self._failures == 1:
                log.warning(
                    "sd_notify failed; further failures are not logged",
                    notify_socket=self._address.replace("\0", "@"),
                    state=assignments[0],
                    error=str(exc),
                )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished (Type=notify: systemctl start returns now)."""
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by `systemctl status`."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive for WatchdogSec=."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began."""
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """Reload began; send `ready()` when done. MONOTONIC_USEC is required by systemd >= 253."""
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *self._status(status)
        )

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    @staticmethod
    def _status(status: str | None) -> tuple[str, ...]:
        return () if status is None else (f"STATUS={_one_line(status)}",)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alives (half of WatchdogSec=), or None when the watchdog is off.

    Like sd_watchdog_enabled(3): $WATCHDOG_USEC must be a positive integer and, when
    $WATCHDOG_PID is set, it must name this process.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2_000_000


class ProgressSource(Protocol):
    """Anything with the progress attributes of a worker thread (the engine)."""

    @property
    def busy(self) -> bool: ...
    @property
    def last_progress(self) -> float: ...


def stall_probe(
    source: ProgressSource,
    max_stall: float,
    name: str = "progress",
    clock: Callable[[], float] = time.monotonic,
) -> Probe:
    """A probe healthy while `source` is idle or made progress within `max_stall` seconds.

    `last_progress` must come from the same clock (time.monotonic by default).
    """

    def healthy() -> bool:
        return not source.busy or clock() - source.last_progress <= max_stall

    healthy.__name__ = name
    return healthy


def _probe_name(probe: Probe) -> str:
    return str(getattr(probe, "__name__", None) or repr(probe))


class Watchdog:
    """Sends WATCHDOG=1 from the event loop, but only while every probe is healthy.

    Call `loop_tick()` from the event loop (or run `run()` as a task): a blocked
    loop does not tick, an unhealthy probe suppresses the ping, and in both cases
    systemd kills and restarts the service after WatchdogSec=. A probe that raises
    counts as unhealthy.
    """

    def __init__(
        self,
        notifier: Notifier,
        probes: Sequence[Probe] = (),
        *,
        interval: float | None = None,
    ) -> None:
        """`interval`: seconds between pings; default `watchdog_interval()` from the environment."""
        self._notifier = notifier
        self._probes = list(probes)
        self.interval = interval if interval is not None else watchdog_interval()
        self._failing: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.interval is not None and self._notifier.enabled

    def add_probe(self, probe: Probe) -> None:
        self._probes.append(probe)

    def unhealthy(self) -> list[str]:
        """Names of the probes that fail now."""
        failing: list[str] = []
        for probe in self._probes:
            try:
                ok = probe()
            except Exception:
                log.exception("watchdog probe raised", probe=_probe_name(probe))
                ok = False
            if not ok:
                failing.append(_probe_name(probe))
        return failing

    def loop_tick(self) -> bool:
        """Check the probes and ping when all are healthy. True if WATCHDOG=1 was sent."""
        failing = self.unhealthy()
        newly = set(failing) - self._failing
        if newly:
            log.error("watchdog: withholding keep-alive", probes=sorted(newly))
        elif self._failing and not failing:
            log.warning("watchdog: healthy again", probes=sorted(self._failing))
        self._failing = set(failing)
        if failing:
            return False
        return self._notifier.watchdog()

    async def run(self) -> None:
        """Tick every `interval` seconds until cancelled; returns at once when disabled."""
        if self.interval is None or not self._notifier.enabled:
            return
        while True:
            self.loop_tick()
            await asyncio.sleep(self.interval)
