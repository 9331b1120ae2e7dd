"""Running one asyncio test scenario: a fresh event loop, and a ceiling on hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
    """The scenario's result; a scenario still waiting after `timeout` s fails the test
    (TimeoutError) instead of hanging the run."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
