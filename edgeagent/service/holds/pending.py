"""The pending holds as the desk keeps them in memory: by task id, oldest to newest.

The store is the truth; this is the desk's index of what is pending, so that `latest`,
the heartbeat, `max_pending_holds` and the expiry loop never need a store call. A hold
is kept without its input text: the text can be long, and only the learner needs it (it
gets it from the store when the hold is resolved). Used on the event loop only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from edgeagent.service.holds import records
from edgeagent.service.holds.records import HoldRecord

EXPIRY_CHECK_MAX_S = 60.0  # re-read the wall clock at least this often (NTP may move it)


class PendingHolds:
    def __init__(self) -> None:
        self._holds: dict[str, HoldRecord] = {}

    def __len__(self) -> int:
        return len(self._holds)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._holds

    def keep(self, record: HoldRecord) -> None:
        self._holds[record.task_id] = dataclasses.replace(
            record, draft=dataclasses.replace(record.draft, text="")
        )

    def drop(self, task_id: str) -> None:
        self._holds.pop(task_id, None)

    def get(self, task_id: str) -> HoldRecord | None:
        return self._holds.get(task_id)

    def newest(self) -> HoldRecord | None:
        """What `latest` names."""
        return max(self._holds.values(), key=lambda r: r.seq, default=None)

    def oldest(self) -> HoldRecord:
        """The one `max_pending_holds` pushes out (there is one: only called when full)."""
        return min(self._holds.values(), key=lambda r: r.seq)

    def due(self, now: float) -> list[HoldRecord]:
        """The holds expired by `now` (wall clock), as a list: expiring changes the index."""
        return [r for r in self._holds.values() if r.draft.expires_at <= now]

    def next_check_s(self, clock: Callable[[], float]) -> float:
        """How long the expiry loop may sleep: until the soonest expiry, at most
        EXPIRY_CHECK_MAX_S (a wall clock NTP moves would else be read too late)."""
        soonest = min((r.draft.expires_at for r in self._holds.values()), default=None)
        wait_s = EXPIRY_CHECK_MAX_S if soonest is None else soonest - clock()
        return min(max(wait_s, 0.01), EXPIRY_CHECK_MAX_S)

    def heartbeat(self) -> dict[str, Any]:
        latest = self.newest()
        return {
            "held": len(self._holds),
            "latest_hold": None if latest is None else records.heartbeat_entry(latest),
        }
