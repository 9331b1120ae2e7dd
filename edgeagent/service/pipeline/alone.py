"""A task that aborted the process before runs alone: no job beside it.

Every task running when the process died is counted (worker.py), so a task counted
before runs alone — no other job beside it, none started while it runs: a second abort
is then its own, never a neighbour's from the same batch.
"""

from __future__ import annotations

import asyncio


class AloneGate:
    """Jobs run side by side, except one that must run alone: it waits until none runs,
    and none starts until it is done (a waiting lone job goes before new side-by-side
    ones). Event loop only."""

    def __init__(self) -> None:
        self._beside = 0  # jobs running side by side
        self._alone = False  # a lone job runs
        self._lone_waiting = 0
        self._changed = asyncio.Event()

    def _open(self, *, alone: bool) -> bool:
        if alone:
            return self._beside == 0 and not self._alone
        return not self._alone and self._lone_waiting == 0

    async def enter(self, *, alone: bool) -> None:
        self._lone_waiting += alone
        try:
            while not self._open(alone=alone):
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._lone_waiting -= alone
            self._changed.set()  # a lone job no longer waiting may let others in
        if alone:
            self._alone = True
        else:
            self._beside += 1

    def leave(self, *, alone: bool) -> None:
        if alone:
            self._alone = False
        else:
            self._beside -= 1
        self._changed.set()
