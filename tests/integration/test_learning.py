"""The operator loop teaches the real daemon (mosquitto, `edgeagent run`, SmolLM2).

A held action is edited by an operator over MQTT; the learner records the ruling; the
next similar task's prompt carries it (after the cached catalog prefix: the cached part
is unchanged), `edgeagent examples list` shows it while the daemon runs, and `clear`
takes it out of the following task's prompt. Not whether answers improve
(docs/evaluation.md measures that): that the ruling reaches the prompt the engine reads.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.daemon import EDGEAGENT, ROOT, DaemonProcess, write_config

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

BASE = "edgeagent/dev1"
TAUGHT = "Zone 2 looks dry, water it for 5 minutes maybe."
SIMILAR = "Zone 4 looks dry, water it for 5 minutes."
UNRELATED = "Fans idle."  # shares no word with the learned input: no example shown


def examples(config: Path, what: str) -> Any:
    done = subprocess.run(
        [*EDGEAGENT, "examples", what, "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def ask(probe, task_id: str, text: str, **request: Any) -> dict[str, Any]:
    probe.publish(f"{BASE}/tasks", {"id": task_id, "input": text, **request})
    reply = json.loads(probe.wait_for(f"{BASE}/results/{task_id}", timeout=180)[0].payload)
    assert reply["status"] == "ok", reply
    return reply


def test_an_edited_hold_teaches_the_next_similar_prompt(tmp_path, model_path, mosquitto, probe):
    config = write_config(
        tmp_path / "dev1.toml",
        model=model_path,
        port=mosquitto.port,
        state_dir=tmp_path / "state",
        # Every action answer is held, so the operator is asked.
        sections={"catalog": {"learn": True, "min_confidence": 1.0}},
    )
    daemon = DaemonProcess(config, tmp_path / "dev1.log")
    probe.subscribe(f"{BASE}/results/#")
    probe.subscribe(f"{BASE}/held/+")
    try:
        daemon.start()
        daemon.wait_event("mqtt connected", timeout=120)
        held = ask(probe, "h1", TAUGHT, actions=["set_irrigation"])
        assert held["dispatched"] is False, held
        probe.wait_for(f"{BASE}/held/h1", timeout=30)
        probe.publish(f"{BASE}/held/h1/confirm", {"by": "alice", "args": {"zone": 2, "minutes": 5}})
        daemon.wait_event("learned", timeout=30, task_id="h1")
        (learned,) = examples(config, "list")["examples"]  # the daemon holds the file open
        assert (learned["input"], learned["action"], learned["args"]) == (
            TAUGHT,
            "set_irrigation",
            {"zone": 2, "minutes": 5},
        )
        assert (learned["decision"], learned["by"]) == ("edited", "alice")
        ask(probe, "warm", UNRELATED)  # the catalog prefix is cached from here on
        taught = ask(probe, "taught", SIMILAR)["usage"]
        assert examples(config, "clear")["cleared"] == 1
        plain = ask(probe, "plain", SIMILAR)["usage"]
    finally:
        daemon.stop()
    # The example's two turns, its input and its answer: some 40 tokens.
    assert 25 <= taught["prompt_tokens"] - plain["prompt_tokens"] <= 80, (taught, plain)
    # Both reused the same cached prefix: the example is not part of it.
    assert taught["cached_prompt_tokens"] == plain["cached_prompt_tokens"] > 0, (taught, plain)
