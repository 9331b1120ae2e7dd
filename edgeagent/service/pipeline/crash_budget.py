"""The crash budget: how many deaths of the process during runs systemd's start limit allows.

A task can take the process down (a llama.cpp crash, an OOM kill, a wedge the watchdog
ends); systemd restarts it. `[queue] max_task_aborts` bounds what one task costs, but a
first crash cannot be foreseen, so many different tasks could still add up to the unit's
StartLimitBurst=5 starts in StartLimitIntervalSec=600 and leave it failed for good.

So after CRASH_BUDGET deaths during runs within CRASH_WINDOW_S no task runs (BUSY)
until the oldest of them leaves the window. Starts within any window of systemd's are
at most 1 + the deaths in it (every start but the first follows one) <= 1 + CRASH_BUDGET,
below StartLimitBurst with one start to spare for a death no task caused. The window is
measured on the task store's clock, which stands still while no process runs: CRASH_WINDOW_S
of it are never less than as much real time (docs/operations.md, "Crash budget";
tests/unit/service/pipeline/test_admission.py checks the unit file).
"""

from __future__ import annotations

from collections.abc import Iterable

from edgeagent.errors import EdgeAgentError, ErrorCode

CRASH_BUDGET = 3
CRASH_WINDOW_S = 600.0


def spent(death_ages: Iterable[float]) -> EdgeAgentError | None:
    """BUSY, saying for how long, while the budget is spent; None while tasks may run.

    `death_ages`: seconds (store clock) since each death of the process during a run.
    """
    recent = sorted(age for age in death_ages if age < CRASH_WINDOW_S)
    if len(recent) < CRASH_BUDGET:
        return None
    wait_s = CRASH_WINDOW_S - recent[CRASH_BUDGET - 1]
    return EdgeAgentError(
        ErrorCode.BUSY,
        f"the daemon died during a task {len(recent)} times in the last "
        f"{CRASH_WINDOW_S:g} s; no task runs for another {wait_s:.0f} s",
        retry_after_s=round(wait_s),
    )
