"""What the fleet view reads from another device's retained heartbeat, read defensively.

Every other device is untrusted: its heartbeat may be any bytes. It is parsed only when
small and shallow enough and validated field by field (cli/untrusted_json.py) against
protocol/heartbeat.py's `UntrustedHeartbeat`: a field of the wrong type or out of range
(`"tokens_per_s": "fast"`, a 4,000-digit budget) is dropped and named, the rest of the
heartbeat is still shown, and the device's row says what was wrong with it.
"""

from __future__ import annotations

from edgeagent.cli.untrusted_json import parse_object, validate_dropping
from edgeagent.protocol.heartbeat import UntrustedHeartbeat

# A real heartbeat is about 600 bytes and 3 levels deep.
MAX_HEARTBEAT_BYTES = 16 * 1024
MAX_HEARTBEAT_DEPTH = 8


def read_heartbeat(payload: bytes) -> tuple[UntrustedHeartbeat | None, str | None]:
    """(what could be read, what was wrong with it); (None, None) for a cleared one."""
    if not payload:
        return None, None
    data, problem = parse_object(
        payload, what="heartbeat", max_bytes=MAX_HEARTBEAT_BYTES, max_depth=MAX_HEARTBEAT_DEPTH
    )
    if data is None:
        return None, problem
    beat, dropped = validate_dropping(UntrustedHeartbeat, data)
    if beat is None:
        return None, "heartbeat unreadable"
    return beat, ("bad heartbeat field: " + ", ".join(dropped)) if dropped else None
