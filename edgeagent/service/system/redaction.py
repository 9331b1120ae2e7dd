"""Log redaction: no secrets at any level, no task content above debug.

`redact_sensitive` is a structlog processor that runs before any renderer, so the
journal, JSON lines and the console all see the redacted event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

# Redacted at every level: credentials never belong in a log.
SECRET_KEYS = frozenset({"password", "secret", "token_value"})
# Redacted above debug: task content (prompts, inputs) only shows at debug level.
CONTENT_KEYS = frozenset({"prompt", "input"})
REDACTED = "[REDACTED]"
_MAX_DEPTH = 6


def _redacted(key: str, value: Any) -> Any:
    if key in SECRET_KEYS or not isinstance(value, str):
        return REDACTED
    return f"[REDACTED {len(value)} chars]"


def _redact(value: Any, keys: frozenset[str], depth: int) -> Any:
    """`value` with sensitive keys replaced; containers are copied only when they change."""
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        out: dict[Any, Any] | None = None
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in keys:
                new = _redacted(key.lower(), item)
            else:
                new = _redact(item, keys, depth + 1)
            if new is not item:
                out = dict(value) if out is None else out
                out[key] = new
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = [_redact(item, keys, depth + 1) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return items
    return value


def redact_sensitive(_logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: secrets always, prompts and inputs above debug, at any depth."""
    keys = SECRET_KEYS if method_name == "debug" else SECRET_KEYS | CONTENT_KEYS
    for key, value in list(event_dict.items()):
        if key.lower() in keys:
            event_dict[key] = _redacted(key.lower(), value)
        elif isinstance(value, (Mapping, list, tuple)):
            event_dict[key] = _redact(value, keys, 1)
    return event_dict
