"""What a hold's resolution tells a learner (an injected collaborator, see desk.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class HoldResolution:
    task_id: str
    text: str
    action: str
    args: dict[str, Any]
    decision: str  # "confirmed" | "edited" | "rejected" | "expired"
    final_args: dict[str, Any] | None
    by: str | None
    at: float
