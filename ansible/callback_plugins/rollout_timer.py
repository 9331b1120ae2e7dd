# ruff: noqa: INP001, SLF001, ARG002 - an Ansible plugin: its API passes results with private parts
"""Rollout timings: how long each host took, and the slowest tasks (per host).

Enabled in ansible/ansible.cfg (callbacks_enabled = rollout_timer). At the end of a
playbook it prints one line per host (from its first to its last task, i.e. the host's
share of the rollout) and the ten slowest task runs. Works with `serial` (the builtin
junit callback adds up a task's time over all batches).
"""

from __future__ import annotations

import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: rollout_timer
    type: aggregate
    short_description: per-host and slowest-task timings of a rollout
    description:
      - Prints how long each host took and the slowest task runs at the end of the playbook.
    requirements:
      - enabled in callbacks_enabled
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "rollout_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._started: dict[tuple[str, str], float] = {}
        self._runs: list[tuple[float, str, str]] = []
        self._hosts: dict[str, list[float]] = {}
        self._play_started = time.monotonic()

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._play_started = time.monotonic()

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        now = time.monotonic()
        self._started[(host.get_name(), task._uuid)] = now
        self._hosts.setdefault(host.get_name(), [now, now])

    def _finish(self, result: Any, *_args: Any, **_kwargs: Any) -> None:
        host = result._host.get_name()
        now = time.monotonic()
        started = self._started.pop((host, result._task._uuid), None)
        if started is not None:
            self._runs.append((now - started, host, result._task.get_name()))
        self._hosts.setdefault(host, [now, now])[1] = now

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = _finish  # type: ignore[assignment]
    v2_runner_on_unreachable = _finish  # type: ignore[assignment]

    def v2_playbook_on_stats(self, stats: Any) -> None:
        total = time.monotonic() - self._play_started
        self._display.banner("ROLLOUT TIMINGS")
        for host, (first, last) in sorted(self._hosts.items(), key=lambda item: item[1][0]):
            self._display.display(
                f"host {host}: {last - first:.1f} s "
                f"(from {first - self._play_started:.1f} s to {last - self._play_started:.1f} s)"
            )
        for seconds, host, name in sorted(self._runs, reverse=True)[:10]:
            self._display.display(f"{seconds:7.2f} s  {host}  {name}")
        self._display.display(f"playbook: {total:.1f} s")
