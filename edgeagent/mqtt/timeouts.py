"""Deadlines on what the broker may never answer: a timeout becomes a typed error.

Every await that can hang has a timeout; callers catch EdgeAgentError (TIMEOUT) like
any other typed failure instead of a bare TimeoutError.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from edgeagent.errors import EdgeAgentError, ErrorCode

T = TypeVar("T")


async def with_timeout(awaitable: asyncio.Future[T], seconds: float, what: str) -> T:
    """Await with a deadline; a timeout becomes a typed TIMEOUT error."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError as exc:
        raise EdgeAgentError(ErrorCode.TIMEOUT, f"{what} timed out after {seconds:g} s") from exc
