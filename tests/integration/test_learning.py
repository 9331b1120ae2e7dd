"""Learned examples with the real daemon, broker and SmolLM2: they change the prompt.

Not whether the answer improves (docs/evaluation.md measures that), but that a learned
example reaches the prompt the engine evaluates, after the cached catalog prefix, and
that `edgeagent examples clear` takes it out of the next task's prompt while the daemon
runs.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from support.daemon import EDGEAGENT, ROOT, DaemonProcess, write_config

from edgeagent.service.learning.store import LEARNED_FILE, LearnedExample, LearnedStore

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

LEARNED = "Water zone 2 for 5 minutes."
SIMILAR = "Water zone 4 for 5 minutes."
UNRELATED = "Fans idle."  # shares no word with the learned input: no example shown


def ask(probe, task_id: str, text: str) -> dict:
    probe.publish(
        "edgeagent/dev1/tasks",
        {"id": task_id, "input": text, "actions": ["set_irrigation", "notify", "no_action"]},
    )
    reply = json.loads(probe.wait_for(f"edgeagent/dev1/results/{task_id}", timeout=180)[0].payload)
    assert reply["status"] == "ok", reply
    return reply["usage"]


def test_a_learned_example_enters_the_prompt_after_the_cached_prefix(
    tmp_path, model_path, mosquitto, probe
):
    state = tmp_path / "state"
    state.mkdir()
    store = LearnedStore(state / LEARNED_FILE, max_rows=10)
    store.add(
        LearnedExample(
            text=LEARNED,
            action="set_irrigation",
            args={"zone": 2, "minutes": 5},
            decision="edited",
            model_action="set_irrigation",
            model_args={"zone": 2, "minutes": 50},
            task_id="earlier",
            by="ana",
            at=1_700_000_000.0,
        )
    )
    store.close()
    config = write_config(
        tmp_path / "dev1.toml",
        model=model_path,
        port=mosquitto.port,
        state_dir=state,
        sections={"catalog": {"learn": True}},
    )
    daemon = DaemonProcess(config, tmp_path / "dev1.log")
    probe.subscribe("edgeagent/dev1/results/#")
    try:
        daemon.start()
        daemon.wait_event("mqtt connected", timeout=120)
        warm = ask(probe, "warm", UNRELATED)  # computes the catalog prefix once
        taught = ask(probe, "taught", SIMILAR)
        cleared = subprocess.run(
            [*EDGEAGENT, "examples", "clear", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            timeout=60,
        )
        assert cleared.returncode == 0, cleared.stderr
        assert json.loads(cleared.stdout)["cleared"] == 1
        plain = ask(probe, "plain", SIMILAR)
    finally:
        daemon.stop()
    # The example's two turns: its input and its answer, some 40 tokens.
    assert 25 <= taught["prompt_tokens"] - plain["prompt_tokens"] <= 80, (taught, plain)
    # Both reused the same cached prefix: the example is not part of it.
    assert taught["cached_prompt_tokens"] == plain["cached_prompt_tokens"] > 0, (warm, taught)
    assert warm["prompt_tokens"] < taught["prompt_tokens"]
