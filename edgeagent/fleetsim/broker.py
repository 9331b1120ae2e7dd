"""The simulator's own mosquitto: a free loopback port, a config for N clients, restartable.

Sized for the fleet: no connection limit, the file-descriptor limit raised to the hard
limit (the broker holds one socket per client and inherits it), an offline queue large
enough for the meter's persistent session across a restart, $SYS every second (the
simulator's meter reads the broker's own counters there), and persistence, so sessions
and retained messages survive a restart as on a production broker.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0


def binary() -> str | None:
    """The mosquitto binary, if there is one."""
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").is_file():
        found = "/usr/sbin/mosquitto"
    return found


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (at most the hard limit);
    children (the broker) inherit it. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class Broker:
    """mosquitto on 127.0.0.1:<free port>, started and stopped (SIGTERM saves its state)."""

    def __init__(self, workdir: Path, *, clients: int) -> None:
        path = binary()
        if path is None:
            raise FileNotFoundError("mosquitto is not installed (scripts/install-system-deps.sh)")
        self.binary = path
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "max_connections -1\n"
            # The meter's persistent session keeps what arrives while it reconnects.
            f"max_queued_messages {max(1000, 200 * clients)}\n"
            "sys_interval 1\n"
            f"persistence true\npersistence_location {workdir}/\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\n" + ("user root\n" if os.geteuid() == 0 else ""),
            # As root, mosquitto would drop to user "mosquitto", which cannot write here.
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
        return (
            (out.stdout or out.stderr).splitlines()[0].strip() if out.stdout or out.stderr else ""
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with socket.socket() as sock:
                if sock.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "mosquitto.log").read_text(encoding="utf-8", errors="replace")
        return ""
