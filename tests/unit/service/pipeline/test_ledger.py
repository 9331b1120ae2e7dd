"""The in-flight ledger alone, on a fake link: each task message is acknowledged exactly once
(close), or deliberately not at all (hand_back), and the rules for joining copies."""

from __future__ import annotations

import dataclasses

from structlog.testing import capture_logs
from support.fake_link import FakeLink

from edgeagent.errors import ErrorCode
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import ReplyRoute
from edgeagent.service.pipeline.ledger import COPY_ADDRESSES, Ledger, Waiting

TASK = {"id": "t1", "input": "x"}
HERE = ReplyRoute("edgeagent/dev1/results/t1")


def connected_link() -> FakeLink:
    link = FakeLink()
    link.connected.set()
    return link


def address(n: int) -> ReplyRoute:
    return ReplyRoute("replies/a", bytes([n]))


def waiting(message: Incoming, route: ReplyRoute = HERE) -> Waiting:
    return Waiting(message, route)


def test_close_acknowledges_every_waiting_delivery_once_and_ends_the_entry():
    link = connected_link()
    ledger = Ledger(link)
    first, other = link.message(TASK), link.message(TASK)
    entry = ledger.open("t1", "fp", waiting(first))
    assert ledger.join(entry, waiting(other, address(1))) is None
    assert link.ack_attempts == []  # held until the reply
    assert ledger.get("t1") is entry
    assert "t1" in ledger
    assert len(ledger) == 1
    ledger.close(entry)
    assert link.acked == [first, other]
    assert "t1" not in ledger
    assert ledger.get("t1") is None
    ledger.close(entry)  # a second close (a bug's path, a finally) acks nothing again
    ledger.hand_back(entry)
    assert link.ack_attempts == [first, other]


def test_hand_back_leaves_the_deliveries_to_the_broker_for_good():
    link = connected_link()
    ledger = Ledger(link)
    message = link.message(TASK)
    entry = ledger.open("t1", "fp", waiting(message))
    ledger.hand_back(entry)
    assert "t1" not in ledger
    ledger.close(entry)  # ended: a late close must not ack what went back to the broker
    assert link.ack_attempts == []


def test_an_ended_entry_does_not_touch_a_newer_entry_of_its_id():
    link = connected_link()
    ledger = Ledger(link)
    old = ledger.open("t1", "fp", waiting(link.message(TASK)))
    ledger.hand_back(old)
    newer = ledger.open("t1", "fp", waiting(link.message(TASK)))
    ledger.close(old)
    assert ledger.get("t1") is newer
    assert link.ack_attempts == []


def test_a_client_resend_to_a_held_address_is_acknowledged_at_once_and_served_again():
    link = connected_link()
    ledger = Ledger(link)
    first = link.message(TASK)
    entry = ledger.open("t1", "fp", waiting(first))
    entry.served.add(HERE)  # the reply went out; its PUBACK is still pending
    resent = link.message(TASK)
    assert ledger.join(entry, waiting(resent)) is None
    assert link.acked == [resent]
    assert [w.message for w in entry.waiting] == [first]  # the held one still waits
    assert entry.unserved() == [HERE]  # the client asked again: it gets the reply again
    ledger.close(entry)
    assert link.acked == [resent, first]


def test_a_redelivery_with_its_own_mid_does_not_ask_for_the_reply_again():
    link = connected_link()
    ledger = Ledger(link)
    entry = ledger.open("t1", "fp", waiting(link.message(TASK)))
    entry.served.add(HERE)
    copy = link.message(TASK, dup=True)
    assert ledger.join(entry, waiting(copy)) is None
    assert link.acked == [copy]
    assert entry.unserved() == []


def test_the_same_packet_twice_on_one_connection_is_one_message():
    link = connected_link()
    ledger = Ledger(link)
    first = link.message(TASK)
    entry = ledger.open("t1", "fp", waiting(first))
    again = dataclasses.replace(first, dup=True)
    assert ledger.join(entry, waiting(again)) is None
    assert link.ack_attempts == []
    ledger.close(entry)
    assert link.ack_attempts == [first]  # acked once


def test_the_newest_connections_copy_is_the_one_held():
    link = connected_link()
    ledger = Ledger(link)
    first = link.message(TASK)
    entry = ledger.open("t1", "fp", waiting(first))
    link.reconnect()
    again = dataclasses.replace(first, dup=True, generation=link.generation)
    assert ledger.join(entry, waiting(again)) is None
    assert link.ack_attempts == []  # not acknowledged now: it waits for the reply
    ledger.close(entry)
    # The first delivery's ack would be void (its connection is gone): never attempted.
    assert link.ack_attempts == [again]
    assert link.acked == [again]


def test_copies_beyond_copy_addresses_are_refused_busy_and_not_held():
    link = connected_link()
    ledger = Ledger(link)
    entry = ledger.open("t1", "fp", waiting(link.message(TASK), address(0)))
    for n in range(1, COPY_ADDRESSES):
        assert ledger.join(entry, waiting(link.message(TASK), address(n))) is None
    extra = link.message(TASK)
    busy = ledger.join(entry, waiting(extra, address(COPY_ADDRESSES)))
    assert busy is not None
    assert busy.code is ErrorCode.BUSY
    assert f"{COPY_ADDRESSES} deliveries of task 't1'" in busy.message
    assert len(entry.waiting) == COPY_ADDRESSES
    assert link.ack_attempts == []  # the refusal that answers it acknowledges it
    assert not ledger.holding(extra)
    # A copy for an address already held is still taken (acknowledged at once).
    copy = link.message(TASK)
    assert ledger.join(entry, waiting(copy, address(1))) is None
    assert link.acked == [copy]
    ledger.close(entry)
    assert len(link.acked) == 1 + COPY_ADDRESSES


def test_holding_and_untracked_acks():
    link = connected_link()
    ledger = Ledger(link)
    held, loose = link.message(TASK), link.message(TASK)
    entry = ledger.open("t1", "fp", waiting(held))
    assert ledger.holding(held)
    assert not ledger.holding(loose)
    ledger.acknowledge_untracked(loose)
    assert link.acked == [loose]
    ledger.close(entry)
    assert not ledger.holding(held)


def test_a_link_that_raises_on_ack_is_logged_and_the_other_acks_still_go_out():
    class RaisingOnce(FakeLink):
        raised = False

        def ack(self, message: Incoming) -> bool:
            if not self.raised:
                self.raised = True
                raise RuntimeError("a bug in the link")
            return super().ack(message)

    link = RaisingOnce()
    link.connected.set()
    ledger = Ledger(link)
    first, other = link.message(TASK), link.message(TASK)
    entry = ledger.open("t1", "fp", waiting(first))
    ledger.join(entry, waiting(other, address(1)))
    with capture_logs() as logs:
        ledger.close(entry)
    assert "acknowledging a task failed" in [e["event"] for e in logs]
    assert link.acked == [other]
    assert "t1" not in ledger
