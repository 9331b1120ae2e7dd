"""What synchronous=FULL costs the task store per task, against NORMAL, on a given disk.

One task is what the daemon writes for it: accept, finish (reply and action message),
mark the reply, mark the action. Run it on the device's own state directory:

    python -m support.store_durability /var/lib/edgeagent/durability-test [tasks]

(from tests/, or as a plain script). It prints milliseconds per task for both modes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgeagent.service.pipeline.task_records import Confirmation, Outcome
from edgeagent.service.pipeline.taskstore import TaskStore

REPLY = json.dumps({"id": "x", "status": "ok", "output": {"action": "notify", "args": {}}})
OUTCOME = Outcome(REPLY, action_topic="edgeagent/d/actions/notify", action=REPLY)


def per_task_ms(directory: Path, synchronous: str, tasks: int) -> list[float]:
    store = TaskStore(
        directory / f"{synchronous}.sqlite3",
        max_age_s=3600,
        max_rows=10 * tasks,
        synchronous=synchronous,
    )
    costs = []
    try:
        for n in range(tasks):
            started = time.perf_counter()
            store.accept(f"t{n}", "fp")
            store.finish(f"t{n}", "fp", OUTCOME)
            store.mark_reply(f"t{n}", Confirmation.CONFIRMED)
            store.mark_action(f"t{n}", Confirmation.CONFIRMED)
            costs.append((time.perf_counter() - started) * 1000)
    finally:
        store.close()
    return costs


def main(argv: list[str]) -> int:
    base = Path(argv[0]) if argv else Path(tempfile.gettempdir())
    tasks = int(argv[1]) if len(argv) > 1 else 200
    base.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=base, prefix="durability-"))
    try:
        for mode in ("NORMAL", "FULL"):
            costs = sorted(per_task_ms(directory, mode, tasks))
            print(
                json.dumps(
                    {
                        "synchronous": mode,
                        "tasks": tasks,
                        "median_ms": round(statistics.median(costs), 3),
                        "p90_ms": round(costs[int(0.9 * len(costs))], 3),
                        "mean_ms": round(statistics.fmean(costs), 3),
                    }
                )
            )
    finally:
        shutil.rmtree(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
