"""The in-flight ledger: every delivery of a task id in flight, and its one acknowledgement.

An id is *in flight* from its admission until its reply (and action) are confirmed or
it is handed back. Every delivery of that id meanwhile (a broker redelivery, or a client
re-sending the same task) joins the same entry. The ledger alone opens entries, joins
deliveries to them and ends them, in one of two ways:

    close(entry)      the reply is out: every delivery still waiting is acknowledged
    hand_back(entry)  shutdown or a crash of the run: nothing is acknowledged, so the
                      broker delivers the messages again after the restart

An entry ends once: whichever of the two comes first, the other is then a no-op. So no
caller can end an entry and forget its acks, or acknowledge a message twice. A message
no entry ever held (refused before it could be tracked, or answered from the store with
nothing left to send) gets its ack from `acknowledge_untracked`.

The acks go through the link, which knows whether the message's connection still exists
(an ack on a lost connection is void: the broker redelivers the message). The ledger's
size is bounded by the broker's window of unacknowledged messages
(admission.receive_window), and each entry's by COPY_ADDRESSES. Used on the event loop
only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import ReplyRoute
from edgeagent.service.ports import Acknowledger

log = structlog.get_logger("edgeagent.service.pipeline.ledger")

# Deliveries of one task id in flight held unacknowledged at once, each for its own reply
# address (Response Topic + Correlation Data): copies to a held address are acknowledged
# at once, so copies can never fill the receive window (see Ledger.join).
COPY_ADDRESSES = 4


@dataclass(frozen=True, slots=True)
class Waiting:
    """One delivery of a task: the message to acknowledge and where its reply goes."""

    message: Incoming
    route: ReplyRoute


@dataclass(slots=True, eq=False)
class InFlight:
    """A task id in flight: the deliveries waiting for its reply. Changed by the ledger."""

    task_id: str
    fingerprint: str
    waiting: list[Waiting]
    # Addresses the reply was published to (delivery.py). A client's re-send that joins
    # after its address was served takes it out again: that client asked once more,
    # perhaps because it missed the first copy, and gets the reply again.
    served: set[ReplyRoute] = field(default_factory=set)
    # Closed or handed back: its deliveries are settled, nothing may join or end it again.
    ended: bool = False

    def routes(self) -> list[ReplyRoute]:
        """Each distinct reply address once: a broker redelivery shares its original's."""
        return list(dict.fromkeys(w.route for w in self.waiting))

    def unserved(self) -> list[ReplyRoute]:
        return [r for r in self.routes() if r not in self.served]


class Ledger:
    """Task id -> its entry in flight; the one place task messages are acknowledged."""

    def __init__(self, link: Acknowledger) -> None:
        self._link = link
        self._entries: dict[str, InFlight] = {}

    def get(self, task_id: str) -> InFlight | None:
        return self._entries.get(task_id)

    def open(self, task_id: str, fingerprint: str, first: Waiting) -> InFlight:
        """Track a task id from its first delivery on; admission opens one id at a time,
        so an id is never opened twice (its second delivery joins instead)."""
        assert task_id not in self._entries, task_id
        entry = InFlight(task_id, fingerprint, [first])
        self._entries[task_id] = entry
        return entry

    def join(self, entry: InFlight, copy: Waiting) -> EdgeAgentError | None:
        """Another delivery of a task in flight: held or acknowledged (None), or the BUSY
        error the caller answers it with (which acknowledges it) when it cannot be held.

        Its reply is the one in progress, sent once to each distinct address; but a held
        copy is an unacknowledged message, and enough of them fill the broker's window:
        the device hears nothing else until the task ends (up to its deadline). So one
        delivery per address is held, and only the newest connection's (an ack on a lost
        connection is void: that one must not be the delivery that waits); a copy for an
        address already held is acknowledged at once (a client's re-send there gets the
        reply again if it was already sent), and addresses beyond COPY_ADDRESSES are
        refused.

        Exactly once holds: the held delivery stays unacknowledged until the reply is
        confirmed, so after a crash the broker delivers it again and the task store
        answers it."""
        assert not entry.ended, entry.task_id
        message = copy.message
        held = next((i for i, w in enumerate(entry.waiting) if w.route == copy.route), None)
        if held is not None:
            kept = entry.waiting[held].message
            if kept.generation != message.generation:
                # The old one's ack could not reach the broker: it is dropped, not acked.
                entry.waiting[held] = copy
            elif kept.mid != message.mid:  # (the same mid on one connection: one message)
                # A client's re-send: if its address was already served it gets the
                # reply again (the kept delivery's ack still waits for the reply).
                if not message.dup:
                    entry.served.discard(copy.route)
                self._ack(message)
            log.debug("task already in flight", task_id=entry.task_id, dup=message.dup)
            return None
        if len(entry.waiting) < COPY_ADDRESSES:
            entry.waiting.append(copy)  # acknowledged after the reply in progress
            log.debug("task already in flight", task_id=entry.task_id, dup=message.dup)
            return None
        return EdgeAgentError(
            ErrorCode.BUSY,
            f"{len(entry.waiting)} deliveries of task {entry.task_id!r} with different reply "
            "addresses already wait for its reply",
        )

    def close(self, entry: InFlight) -> None:
        """The reply is out (or cannot be sent): acknowledge every delivery that waited.
        A no-op for an entry already ended."""
        for waiting in self._end(entry):
            self._ack(waiting.message)

    def hand_back(self, entry: InFlight) -> None:
        """Shutdown, or a run given up: end the entry leaving its deliveries unacknowledged,
        so the broker delivers them again. A no-op for an entry already ended."""
        self._end(entry)

    def acknowledge_untracked(self, message: Incoming) -> None:
        """The one ack of a message no entry holds (answered without being tracked)."""
        self._ack(message)

    def holding(self, message: Incoming) -> bool:
        """Whether a delivery of `message` waits in some entry (that entry acknowledges
        it). A scan, for the rare path where admission failed and must not ack twice."""
        return any(w.message is message for e in self._entries.values() for w in e.waiting)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._entries

    def _end(self, entry: InFlight) -> list[Waiting]:
        if entry.ended:
            return []
        entry.ended = True
        del self._entries[entry.task_id]  # open until now, so still the id's entry
        return list(entry.waiting)

    def _ack(self, message: Incoming) -> None:
        try:
            self._link.ack(message)
        except Exception:  # the link's to report; the broker redelivers what stays unacked
            log.exception("acknowledging a task failed", mid=message.mid)
