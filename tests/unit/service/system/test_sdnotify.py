# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import os
import re
import select
import socket
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from edgeagent.service.system.sdnotify import Notifier, Watchdog, stall_probe, watchdog_interval

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def _nothing_queued(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


@pytest.fixture
def open_notifier() -> Iterator[Callable[[str | None], Notifier]]:
    """Notifier(address), closed after the test (its socket would leak otherwise)."""
    opened: list[Notifier] = []

    def make(address: str | None) -> Notifier:
        opened.append(Notifier(address))
        return opened[-1]

    yield make
    for notifier in opened:
        notifier.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"edgeagent-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    sock.settimeout(2)
    yield sock, "@" + name
    sock.close()


def test_path_socket_datagrams(path_socket):
    sock, path = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert _recv(sock) == b"READY=1"
    assert notifier.ready("model loaded")
    assert _recv(sock) == b"READY=1\nSTATUS=model loaded"
    assert notifier.status("queue 2/16\nsecond line")
    assert _recv(sock) == b"STATUS=queue 2/16 second line"
    assert notifier.watchdog()
    assert _recv(sock) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert _recv(sock) == b"STOPPING=1"
    assert notifier.stopping("draining")
    assert _recv(sock) == b"STOPPING=1\nSTATUS=draining"
    notifier.close()
    assert _nothing_queued(sock)


def test_reloading_carries_monotonic_usec(path_socket, open_notifier):
    sock, path = path_socket
    notifier = open_notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("re-reading config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(
        rb"RELOADING=1\nMONOTONIC_USEC=(\d+)\nSTATUS=re-reading config", _recv(sock)
    )
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_abstract_socket_datagrams(abstract_socket, open_notifier):
    sock, address = abstract_socket
    notifier = open_notifier(address)
    assert notifier.ready("up")
    assert _recv(sock) == b"READY=1\nSTATUS=up"
    assert notifier.watchdog()
    assert _recv(sock) == b"WATCHDOG=1"


def test_unset_is_a_noop():
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert notifier.failures == 0


def test_unset_environment(monkeypatch, path_socket):
    _, path = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_env(unset_environment=True)
    assert notifier.enabled
    assert "NOTIFY_SOCKET" not in os.environ


def test_unsupported_address_disables():
    with capture_logs() as logs:
        notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert not notifier.ready()
    assert [e["event"] for e in logs] == ["sd_notify socket address not supported"]


def test_send_errors_never_raise_and_log_once(tmp_path, open_notifier):
    notifier = open_notifier(str(tmp_path / "missing.sock"))
    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.stopping()
    assert notifier.failures == 3
    assert len(logs) == 1
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["state"] == "READY=1"


def test_recovers_after_socket_appears(tmp_path, open_notifier):
    path = tmp_path / "late.sock"
    notifier = open_notifier(str(path))
    with capture_logs():
        assert not notifier.watchdog()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        assert notifier.watchdog()
        assert _recv(sock) == b"WATCHDOG=1"
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert watchdog_interval(env) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class InferenceThread:
    """The progress attributes the engine exposes to the watchdog, set by hand."""

    def __init__(self, clock: FakeClock) -> None:
        self.busy = False
        self.last_progress = clock()


def test_stall_probe_holds_while_idle_or_progressing():
    clock = FakeClock()
    thread = InferenceThread(clock)
    probe = stall_probe(thread, 30.0, "inference", clock)
    assert probe.__name__ == "inference"
    clock.now += 3600  # idle for an hour: healthy
    assert probe()
    thread.busy, thread.last_progress = True, clock.now
    clock.now += 29
    assert probe()
    thread.last_progress = clock.now  # a decode step
    clock.now += 29
    assert probe()
    clock.now += 2  # 31 s without progress while busy
    assert not probe()
    thread.busy = False
    assert probe()


def test_watchdog_pings_only_while_probes_are_healthy(path_socket, open_notifier):
    sock, path = path_socket
    clock = FakeClock()
    thread = InferenceThread(clock)
    loop_ok = [True]
    watchdog = Watchdog(
        open_notifier(path),
        [lambda: loop_ok[0], stall_probe(thread, 30.0, "inference", clock)],
        interval=15.0,
    )
    assert watchdog.enabled

    assert watchdog.loop_tick()
    assert _recv(sock) == b"WATCHDOG=1"

    thread.busy, thread.last_progress = True, clock.now
    clock.now += 31  # the inference thread is stuck
    with capture_logs() as logs:
        assert not watchdog.loop_tick()
        assert not watchdog.loop_tick()  # logged once, not on every tick
    assert _nothing_queued(sock)
    assert [(e["event"], e["probes"]) for e in logs] == [
        ("watchdog: withholding keep-alive", ["inference"])
    ]
    assert watchdog.unhealthy() == ["inference"]

    thread.last_progress = clock.now  # it moves again
    with capture_logs() as logs:
        assert watchdog.loop_tick()
    assert _recv(sock) == b"WATCHDOG=1"
    assert logs[0]["event"] == "watchdog: healthy again"

    loop_ok[0] = False
    with capture_logs():
        assert not watchdog.loop_tick()
    assert _nothing_queued(sock)


def test_raising_probe_is_unhealthy(path_socket):
    sock, path = path_socket

    def broken() -> bool:
        raise RuntimeError("boom")

    watchdog = Watchdog(Notifier(path), [broken], interval=1.0)
    with capture_logs() as logs:
        assert not watchdog.loop_tick()
    assert _nothing_queued(sock)
    assert {e["event"] for e in logs} == {
        "watchdog probe raised",
        "watchdog: withholding keep-alive",
    }


def test_watchdog_run_ticks_from_the_event_loop(path_socket, open_notifier):
    sock, path = path_socket
    watchdog = Watchdog(open_notifier(path), [], interval=0.01)

    async def main() -> None:
        task = asyncio.create_task(watchdog.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _recv(sock) == b"WATCHDOG=1"
    assert _recv(sock) == b"WATCHDOG=1"


def test_watchdog_disabled_without_interval_or_socket(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Watchdog(Notifier("/run/nonexistent.sock")).interval is None
    watchdog = Watchdog(Notifier(None), interval=5.0)
    assert not watchdog.enabled
    asyncio.run(asyncio.wait_for(watchdog.run(), 1.0))  # returns at once
