"""The memory governor under real pressure: a real v1 memory cgroup, the real daemon
inside it, and a memory hog in the same cgroup.

The daemon runs with SmolLM2 (trained for 8192 tokens) at `model.n_ctx = 8192`. Once it
serves, the cgroup gets a limit a little above what it uses (its usage U0 + the
reserve + HEADROOM_MB), so the budget stays 8192. Then a hog in the same cgroup
allocates and touches memory gradually until only room for about 2000 context tokens
is left: the daemon must shrink its context faster than the hog takes memory, keep
answering (the reply's `context.budget` says how big the context was), never be
OOM-killed (the cgroup's `memory.oom_control`), and grow back once the hog exits. The
second test drives the budget below `min_ctx`: BUSY with a reason, heartbeat "paused",
then recovery.

Budget arithmetic (docs/memory.md): usable = available + held - reserve - fixed, and
available = limit - usage. With the limit L = U0 + reserve + H and the hog charging X
bytes, usable = H + 8192 x kv - X whatever the context size n > 0 is at that moment
(kv: KV bytes per token; the compute buffer is held and needed alike, so it cancels),
so the hog size sets the budget directly. Only the KV cache is really given back by a
smaller context: llama.cpp's compute buffer (reported ~49 MiB for SmolLM2 at
n_batch 256) is mostly never touched, so it is not resident and not charged (measured:
releasing an 8192-token context frees ~180 MiB, its KV cache, and nothing more).

Needs root and a writable cgroup v1 memory controller (hybrid or legacy layout); it is
skipped with the reason otherwise. The measured numbers are printed (`pytest -s`) and
recorded as junit properties.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.daemon import EDGEAGENT, ROOT, DaemonProcess, write_config
from support.mosquitto import MqttProbe

pytestmark = [pytest.mark.cgroup, pytest.mark.model, pytest.mark.mqtt]

MIB = 2**20
V1_MEMORY = Path("/sys/fs/cgroup/memory")
N_CTX = 8192  # SmolLM2's trained context
RESERVE_MB = 48
MIN_CTX = 512
HEADROOM_MB = 40  # above U0 + reserve: the budget must stay at 8192 before the hog
HOG_STEP = 4 * MIB  # the hog grows by this much ...
HOG_PERIOD_S = 0.1  # ... this often (40 MiB/s; the daemon samples every 0.25 s)

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
}
HEARTBEAT = "edgeagent/dev1/heartbeat"
RESULTS = "edgeagent/dev1/results"

# Allocates `target` bytes in steps of `step` every `period` s, touching every page so
# the memory is really resident (charged to the cgroup), reports progress on stdout,
# then holds it until its stdin is closed.
HOG = r"""
import sys, time
target, step, period = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
chunks, held = [], 0
print("start", flush=True)
while held < target:
    size = min(step, target - held)
    block = bytearray(size)
    block[::4096] = b"\x01" * len(range(0, size, 4096))
    chunks.append(block)
    held += size
    time.sleep(period)
print("holding", held, flush=True)
sys.stdin.read()
print("released", flush=True)
"""


# --- the cgroup ------------------------------------------------------------------------


def _own_v1_memory_path() -> str | None:
    for line in Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


@dataclass
class MemoryCgroup:
    """A v1 memory cgroup created by the test; all sizes in bytes."""

    path: Path

    def _read(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value, encoding="utf-8")

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        return [int(p) for p in self._read("cgroup.procs").split()]

    def usage(self) -> int:
        return int(self._read("memory.usage_in_bytes"))

    def max_usage(self) -> int:
        return int(self._read("memory.max_usage_in_bytes"))

    def failcnt(self) -> int:
        return int(self._read("memory.failcnt"))

    def set_limit(self, limit: int) -> None:
        self._write("memory.limit_in_bytes", str(limit))

    def limit(self) -> int:
        return int(self._read("memory.limit_in_bytes"))

    def stat(self) -> dict[str, int]:
        out = {}
        for line in self._read("memory.stat").splitlines():
            key, _, value = line.partition(" ")
            out[key] = int(value)
        return out

    def oom_control(self) -> dict[str, int]:
        """oom_kill_disable, under_oom and (kernel >= 4.13) oom_kill: kills in this cgroup."""
        out = {}
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            out[key] = int(value)
        return out

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start argv inside this cgroup: the shell joins it, then execs argv (same pid)."""
        script = 'echo $$ > "$0" && exec "$@"'
        return subprocess.Popen(["sh", "-c", script, str(self.procs_file), *argv], **kwargs)

    def kill_all(self) -> None:
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


@pytest.fixture
def memory_cgroup() -> Any:
    """A fresh v1 memory cgroup, removed afterwards (its processes killed first).

    Created below the test's own memory cgroup when that is writable (so everything the
    test starts stays inside whatever limits and accounting the test runs under), else
    at the root of the v1 memory hierarchy.
    """
    if not (V1_MEMORY / "memory.limit_in_bytes").is_file():
        pytest.skip(
            f"no cgroup v1 memory controller at {V1_MEMORY} (a pure cgroup v2 host, or the "
            "memory controller is disabled: cgroup_enable=memory on Raspberry Pi OS); this "
            "test drives memory.limit_in_bytes of a v1 cgroup"
        )
    parents = []
    own = _own_v1_memory_path()
    if own and own != "/":
        parents.append(V1_MEMORY / own.lstrip("/"))
    parents.append(V1_MEMORY)
    name = f"edgeagent-test-{uuid.uuid4().hex[:8]}"
    errors = []
    path = None
    for parent in parents:
        candidate = parent / name
        try:
            candidate.mkdir()
        except OSError as exc:
            errors.append(f"{candidate}: {exc.strerror}")
            continue
        path = candidate
        break
    if path is None:
        pytest.skip(f"cannot create a v1 memory cgroup (needs root): {'; '.join(errors)}")
    cgroup = MemoryCgroup(path)
    try:
        cgroup.set_limit(cgroup.limit())  # writable?
    except OSError as exc:
        path.rmdir()
        pytest.skip(f"{path}/memory.limit_in_bytes is not writable: {exc.strerror}")
    try:
        yield cgroup
    finally:
        cgroup.kill_all()
        for _ in range(100):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


# --- the daemon in the cgroup ----------------------------------------------------------


class CgroupDaemon(DaemonProcess):
    def __init__(self, config: Path, log_path: Path, cgroup: MemoryCgroup) -> None:
        super().__init__(config, log_path)
        self.cgroup = cgroup

    def start(self) -> None:
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with self.log_path.open("ab") as handle:
            self.proc = self.cgroup.spawn(
                [*EDGEAGENT, "run", "--config", str(self.config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Hog:
    """The hog process; its progress lines are read as they come (no polling)."""

    def __init__(self, cgroup: MemoryCgroup, target: int) -> None:
        self.target = target
        self.cgroup = cgroup
        self.lines: list[str] = []
        # Set when the hog says "holding", or its output ends (it exited).
        self.settled = threading.Event()
        self.proc = cgroup.spawn(
            [sys.executable, "-c", HOG, str(target), str(HOG_STEP), str(HOG_PERIOD_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            self.lines.append(line)
            if line.startswith("holding"):
                self.settled.set()
        self.settled.set()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_holding(self, timeout: float) -> None:
        if not self.settled.wait(timeout):
            pytest.fail(
                f"the hog did not reach {self.target} bytes in {timeout} s: {self.output()}"
            )
        if not any(line.startswith("holding") for line in self.lines):
            self.proc.wait(5)
            pytest.fail(
                f"the hog exited ({self.proc.returncode}): {self.output()}; "
                f"oom_control {self.cgroup.oom_control()}"
            )

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)  # the pipe is at its end once the hog is gone
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Session:
    """The daemon, its probe and the cgroup, with the helpers the scenarios share."""

    def __init__(self, daemon: CgroupDaemon, probe: MqttProbe, cgroup: MemoryCgroup) -> None:
        self.daemon = daemon
        self.probe = probe
        self.cgroup = cgroup
        self.rows: list[dict[str, Any]] = []

    def heartbeat(self, timeout: float = 10, **context: Any) -> dict[str, Any]:
        """The next heartbeat (published after now) whose context has these values."""
        seen = len(self.probe.messages)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for message in self.probe.messages[seen:]:
                if message.topic != HEARTBEAT:
                    continue
                last = json.loads(message.payload)
                if all(last["context"].get(k) == v for k, v in context.items()):
                    return last
            seen = len(self.probe.messages)
            self.check_alive()
            time.sleep(0.05)
        pytest.fail(
            f"no heartbeat with context {context} within {timeout} s; last: {last}\n"
            f"{self.daemon.log()[-4000:]}"
        )

    def task(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        self.probe.publish(
            "edgeagent/dev1/tasks",
            {
                "id": task_id,
                "input": "Porto reports 21 degrees.",
                "schema": SCHEMA,
                "max_tokens": 48,
            },
        )
        message = self.probe.wait_for(f"{RESULTS}/{task_id}", timeout=timeout)[0]
        reply: dict[str, Any] = json.loads(message.payload)
        return reply

    def check_alive(self) -> None:
        if not self.daemon.alive():
            oom, proc = self.cgroup.oom_control(), self.daemon.proc
            pytest.fail(
                f"the daemon died ({proc.returncode if proc else None}); oom_control {oom}\n"
                f"{self.daemon.log()[-4000:]}"
            )

    def record(self, phase: str, beat: dict[str, Any], **extra: Any) -> dict[str, Any]:
        stat = self.cgroup.stat()
        row = {
            "phase": phase,
            "state": beat["state"],
            "n_ctx": beat["context"]["n_ctx"],
            "budget": beat["context"].get("budget"),
            "daemon_rss_mb": round(self.daemon.rss() / MIB, 1),
            "cgroup_usage_mb": round(self.cgroup.usage() / MIB, 1),
            "cgroup_rss_mb": round(stat.get("rss", 0) / MIB, 1),
            "cgroup_cache_mb": round(stat.get("cache", 0) / MIB, 1),
            "available_mb": beat["context"].get("available_mb"),
            "source": beat["context"].get("source"),
            **extra,
        }
        self.rows.append(row)
        return row

    def report(self, title: str, record_property: Any) -> None:
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        lines = [f"\n{title}", "  ".join(f"{k:>15}" for k in keys)]
        lines.extend("  ".join(f"{row.get(k, '')!s:>15}" for k in keys) for row in self.rows)
        print("\n".join(lines))
        for row in self.rows:
            record_property(f"memory_{row['phase']}", json.dumps(row))

    def oom_ok(self) -> dict[str, int]:
        oom = self.cgroup.oom_control()
        assert oom.get("oom_kill", 0) == 0, oom
        assert oom["under_oom"] == 0, oom
        return oom


def task_context_at_run(daemon: CgroupDaemon, task_id: str) -> int:
    """n_ctx of the last context resize logged before the task's log line."""
    n_ctx = None
    for line in daemon.log().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if record.get("event") in ("context resized", "memory budget"):
                n_ctx = record["n_ctx"]
            if record.get("event") == "task" and record.get("task_id") == task_id:
                break
    assert n_ctx is not None
    return n_ctx


@pytest.fixture
def session(tmp_path: Path, model_path: Path, mosquitto: Any, memory_cgroup: MemoryCgroup) -> Any:
    cfg = write_config(
        tmp_path / "dev1.toml",
        model=model_path,
        port=mosquitto.port,
        n_ctx=N_CTX,
        log_level="debug",
        sections={
            "model": {"threads": 1},
            "memory": {
                "reserve_mb": RESERVE_MB,
                "min_ctx": MIN_CTX,
                "sample_s": 0.25,
                "grow_samples": 2,
            },
        },
    )
    probe = MqttProbe(mosquitto.port)
    daemon = CgroupDaemon(cfg, tmp_path / "dev1.log", memory_cgroup)
    try:
        probe.subscribe(f"{RESULTS}/#")
        probe.subscribe(HEARTBEAT)
        daemon.start()
        daemon.wait_event("mqtt connected", timeout=60)
        # The daemon connects while the model loads; the scenarios start from a daemon
        # that serves, its memory budget taken and the context sized.
        serving = time.monotonic() + 120
        while not any(
            m.topic == HEARTBEAT and json.loads(m.payload).get("state") == "serving"
            for m in list(probe.messages)
        ):
            assert time.monotonic() < serving, f"not serving: {daemon.log()[-4000:]}"
            time.sleep(0.1)
        assert daemon.proc is not None
        assert daemon.proc.pid in memory_cgroup.pids()
        yield Session(daemon, probe, memory_cgroup)
    finally:
        daemon.stop()
        probe.close()


def per_token_cost(daemon: CgroupDaemon) -> tuple[int, int]:
    """(bytes per context token, fixed bytes) as the daemon measured them at start."""
    (start,) = daemon.events("memory budget")
    per_token = start["kv_bytes_per_token"] + start["compute_bytes_per_token"]
    return per_token, int(start["compute_fixed_mb"] * MIB)


def limit_above_usage(s: Session) -> tuple[int, int]:
    """Sets the limit to U0 + reserve + headroom; returns (U0, limit)."""
    u0 = s.cgroup.usage()
    limit = u0 + (RESERVE_MB + HEADROOM_MB) * MIB
    s.cgroup.set_limit(limit)
    return u0, limit


# --- the scenarios ---------------------------------------------------------------------


def test_context_shrinks_under_a_hog_and_grows_back(  # noqa: PLR0915 - one scenario, in order
    session: Session, record_property: Any
) -> None:
    s = session
    per_token, fixed = per_token_cost(s.daemon)
    beat = s.heartbeat(n_ctx=N_CTX, state="normal")
    assert beat["context"]["cgroup_limit_mb"] is None, beat  # serving at 8192, no limit yet
    first = s.task("before")
    assert first["status"] == "ok", first
    assert first["context"]["budget"] == N_CTX

    u0, limit = limit_above_usage(s)
    beat = s.heartbeat(n_ctx=N_CTX, source="cgroup")
    s.record("before", beat, limit_mb=round(limit / MIB, 1))
    assert beat["context"]["budget"] == N_CTX, beat  # calibrated: no shrink before the hog
    assert beat["context"]["cgroup_limit_mb"] == round(limit / MIB, 1)
    resizes_before = len(s.daemon.events("context resized"))

    # Leave room for ~2300 tokens of context; the hog's interpreter (~10 MiB) takes a
    # few hundred more, so the budget lands near 2000.
    target = HEADROOM_MB * MIB + (N_CTX - 2304) * per_token
    hog = Hog(s.cgroup, target)
    try:
        hog.wait_holding(timeout=30)
        # The second heartbeat after the hog stopped growing comes a heartbeat period
        # (1 s, four memory samples) later: the context has followed the full hog.
        s.heartbeat()
        beat = s.heartbeat()
        during = beat["context"]["n_ctx"]
        s.record("during", beat, hog_mb=round(hog.rss() / MIB, 1))
        shrinks = s.daemon.events("context resized")[resizes_before:]
        assert shrinks, "no context resize under the hog"
        assert all(e["n_ctx"] < N_CTX for e in shrinks), shrinks
        assert MIN_CTX <= during < N_CTX, beat
        assert beat["state"] == "serving", beat
        assert beat["context"]["state"] == "normal", beat
        assert beat["context"]["source"] == "cgroup", beat

        reply = s.task("during")
        assert reply["status"] == "ok", reply
        budget = reply["context"]["budget"]
        assert budget < N_CTX, reply
        assert budget == task_context_at_run(s.daemon, "during"), reply
        s.rows[-1]["task_budget"] = budget
        assert s.daemon.alive()
        assert hog.proc.poll() is None  # the hog was not OOM-killed either
        oom = s.oom_ok()
        s.rows[-1]["failcnt"] = s.cgroup.failcnt()
    finally:
        hog.release()

    # Back to 8192 within a few seconds (grow_samples 2 x 0.25 s + a resize).
    s.daemon.wait_event("context resized", timeout=10, n_ctx=N_CTX)
    beat = s.heartbeat(n_ctx=N_CTX)
    s.record("after", beat)
    reply = s.task("after")
    assert reply["status"] == "ok", reply
    assert reply["context"]["budget"] == N_CTX, reply
    s.rows[-1]["task_budget"] = N_CTX
    oom = s.oom_ok()
    s.rows[-1]["failcnt"] = s.cgroup.failcnt()
    s.rows[-1]["max_usage_mb"] = round(s.cgroup.max_usage() / MIB, 1)
    s.check_alive()
    s.report(
        f"memory pressure (U0 {u0 / MIB:.1f} MiB, limit {limit / MIB:.1f} MiB, hog target "
        f"{target / MIB:.1f} MiB, {per_token} B/token + {fixed / MIB:.1f} MiB fixed, "
        f"shrinks {[e['n_ctx'] for e in shrinks]}, oom_control {oom})",
        record_property,
    )


def test_pause_below_min_ctx_and_recover(session: Session, record_property: Any) -> None:
    s = session
    per_token, _ = per_token_cost(s.daemon)
    beat = s.heartbeat(n_ctx=N_CTX, state="normal")
    assert beat["context"]["cgroup_limit_mb"] is None, beat
    u0, limit = limit_above_usage(s)
    beat = s.heartbeat(n_ctx=N_CTX, source="cgroup")
    s.record("before", beat, limit_mb=round(limit / MIB, 1))

    # The headroom plus what the 8192-token KV cache gives back, less 8 MiB: with the
    # hog's interpreter (~10 MiB) usable memory is ~0, so no context fits, yet once
    # the context is freed the cgroup is still ~the reserve below its limit. (glibc
    # may keep the last small KV cache, up to ~30 MiB, instead of returning it to the
    # kernel; the margin covers that.) A larger hog could only be stopped by the OOM
    # killer: the daemon has nothing more to give back.
    target = HEADROOM_MB * MIB + N_CTX * per_token - 8 * MIB
    hog = Hog(s.cgroup, target)
    try:
        hog.wait_holding(timeout=30)
        s.daemon.wait_event("context resized", timeout=10, n_ctx=0, state="paused")
        beat = s.heartbeat(state="paused")
        assert beat["state"] == "paused", beat
        assert beat["context"]["n_ctx"] == 0, beat
        reason = beat["context"]["reason"]
        assert reason.startswith("paused: memory budget"), beat
        assert "min_ctx 512" in reason, beat
        assert s.cgroup.path.name in reason, beat  # the tightest cgroup: the test's own
        s.record("during", beat, hog_mb=round(hog.rss() / MIB, 1))
        reply = s.task("paused", timeout=15)
        assert reply["status"] == "error", reply
        assert reply["error"]["code"] == "BUSY", reply
        busy_message = reply["error"]["message"]
        assert busy_message.startswith("memory is short"), reply
        assert "min_ctx" in busy_message, reply
        s.rows[-1]["task"] = "BUSY"
        assert s.daemon.alive()
        s.oom_ok()
    finally:
        hog.release()

    s.daemon.wait_event("context resized", timeout=10, n_ctx=N_CTX, state="normal")
    beat = s.heartbeat(n_ctx=N_CTX, state="normal")
    assert beat["state"] == "serving", beat
    s.record("after", beat)
    reply = s.task("recovered")
    assert reply["status"] == "ok", reply
    assert reply["context"]["budget"] == N_CTX, reply
    oom = s.oom_ok()
    s.report(
        f"pause/recover (U0 {u0 / MIB:.1f} MiB, limit {limit / MIB:.1f} MiB, hog target "
        f"{target / MIB:.1f} MiB, oom_control {oom})\nBUSY: {busy_message}",
        record_property,
    )
