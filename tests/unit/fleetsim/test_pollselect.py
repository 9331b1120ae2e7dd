"""select.select's contract on poll(), past the 1,024 descriptors select() can watch."""

from __future__ import annotations

import resource
import select
import socket

import paho.mqtt.client as paho_client
import pytest

from edgeagent.fleetsim import pollselect
from edgeagent.fleetsim.pollselect import poll_select


@pytest.fixture
def high_pair():
    """A socket pair whose descriptors are above 1,024 (select() raises ValueError)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers: list[socket.socket] = []
    try:
        while True:
            a, b = socket.socketpair()
            fillers += [a, b]
            if b.fileno() > 1030:
                break
        yield fillers.pop(), fillers.pop()
    finally:
        for sock in fillers:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_readiness_like_select_on_descriptors_select_cannot_watch(high_pair):
    reader, writer = high_pair
    with pytest.raises(ValueError, match="out of range"):
        select.select([reader], [], [], 0)
    assert poll_select([reader], [writer], [], 0) == ([], [writer], [])
    writer.send(b"x")
    assert poll_select([reader], [], [], 1.0) == ([reader], [], [])
    reader.close()
    writer.close()


def test_a_closed_socket_raises_value_error_as_select_does():
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(ValueError, match="negative"):
        poll_select([a], [], [], 0)
    b.close()


def test_install_replaces_select_inside_paho_only(monkeypatch):
    monkeypatch.setattr(paho_client, "select", select)  # restored after the test
    pollselect.install()
    assert paho_client.select.select is poll_select
    assert select.select is not poll_select  # the module itself is untouched
