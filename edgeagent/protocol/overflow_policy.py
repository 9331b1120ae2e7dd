"""The overflow policy: what to do with a task whose input does not fit the context.

One enum for the request field, the config default (`[memory] overflow`), the CLI
flag and the engine, so the spelling exists once. It is part of the wire protocol,
which is why it lives here, below config and inference, which both use it.
"""

from __future__ import annotations

from enum import StrEnum


class OverflowPolicy(StrEnum):
    REJECT = "reject"  # answer CONTEXT_BUDGET
    TRUNCATE = "truncate"  # keep head and tail of the input, a marker in between
    CHUNK = "chunk"  # split the input, answer each part, then combine (map-reduce)
