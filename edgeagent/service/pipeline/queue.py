"""Bounded priority queue between the broker and the inference thread.

Higher `priority` first, then arrival order. When full, `offer` refuses at once so the
client gets BUSY immediately instead of waiting behind work that may never finish in
time. Every accepted offer is an event its watchers hear at once (the worker: whether
the queued jobs now make a batch with the running ones), so nobody polls the queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TaskQueue(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: asyncio.PriorityQueue[tuple[int, int, T]] = asyncio.PriorityQueue(capacity)
        self._order = itertools.count()
        self._watchers: list[Callable[[], None]] = []

    def watch(self, on_offer: Callable[[], None]) -> Callable[[], None]:
        """Call on_offer after every accepted offer, on the event loop, before `offer`
        returns (so it must not block); returns the function that stops it."""
        self._watchers.append(on_offer)
        return lambda: self._watchers.remove(on_offer)

    def offer(self, item: T, priority: int = 0, *, order: int | None = None) -> bool:
        """`order` ranks items of one priority (default: the order of offers); pass the
        arrival order when items are offered out of it."""
        try:
            rank = next(self._order) if order is None else order
            self._queue.put_nowait((-priority, rank, item))
        except asyncio.QueueFull:
            return False
        for on_offer in list(self._watchers):
            on_offer()
        return True

    async def take(self) -> T:
        _, _, item = await self._queue.get()
        return item

    @property
    def full(self) -> bool:
        return self._queue.full()

    def drain(self) -> list[T]:
        """Remove and return everything waiting (shutdown: handed back to the broker)."""
        items: list[T] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait()[2])
        return items

    def __len__(self) -> int:
        return self._queue.qsize()
