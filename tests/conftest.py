"""Shared fixtures: the real test model, a real mosquitto, config files, daemons.

Nothing here fakes a broker or a model: `mosquitto` starts the real broker on a free
loopback port, `model_path` is the real SmolLM2 GGUF (fetched and sha256-checked by
scripts/fetch_model.py when EDGEAGENT_TEST_MODEL is not set).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.models import fetched_model
from support.mosquitto import Mosquitto, MqttProbe

# A run started in the background (nohup, `cmd &` in a script) inherits SIGINT ignored,
# and so would every process the tests start: the watch commands' tests stop theirs with
# Ctrl-C. A handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def model_path() -> Path:
    env = os.environ.get("EDGEAGENT_TEST_MODEL")
    if env:
        return Path(env)
    return fetched_model("smollm2")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Mosquitto(workdir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def probe(mosquitto: Mosquitto) -> Iterator[MqttProbe]:
    """An MQTT v5 client on `mosquitto` that records what its subscriptions receive."""
    client = MqttProbe(mosquitto.port)
    yield client
    client.close()
