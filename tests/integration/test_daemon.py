"""The MQTT daemon end to end: real mosquitto, real model, `edgeagent run` as a process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.daemon import ROOT, DaemonProcess, write_config
from support.mosquitto import MqttProbe

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

WEDGED_DAEMON = Path(__file__).resolve().parents[1] / "support" / "wedged_daemon.py"

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
}
# Long enough to still be generating when a test interferes (SIGKILL, broker stop).
SLOW_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 600, "maxLength": 700}},
    "required": ["story"],
}


def body(message: mqtt.MQTTMessage) -> dict:
    return json.loads(message.payload)


def wait_for_body(
    probe: MqttProbe, topic: str, wanted: Callable[[dict], bool], timeout: float = 30
) -> dict:
    """The first message on `topic` whose JSON body satisfies `wanted`, as it arrives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in list(probe.messages):
            if message.topic == topic and wanted(body(message)):
                return body(message)
        time.sleep(0.05)
    pytest.fail(f"no matching message on {topic} within {timeout} s")


@pytest.fixture
def daemon_factory(tmp_path, model_path, mosquitto):
    started: list[DaemonProcess] = []

    def make(
        device: str = "dev1",
        sections: dict | None = None,
        state_dir: Path | None = None,
        start: bool = True,
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        cfg = write_config(
            tmp_path / f"{device}.toml",
            model=model_path,
            port=mosquitto.port,
            device=device,
            state_dir=state_dir,
            log_level="debug",
            sections=sections,
        )
        proc = DaemonProcess(cfg, tmp_path / f"{device}.log", env=env)
        if start:
            proc.start()
            proc.wait_event("mqtt connected")
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def probe(mosquitto):
    client = MqttProbe(mosquitto.port)
    yield client
    client.close()


def v5_request(
    probe: MqttProbe, topic: str, payload: dict, reply_topic: str, correlation: bytes
) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = correlation
    probe.publish(topic, payload, properties=props)


def test_schema_task_with_response_topic_and_heartbeat(daemon_factory, probe):
    daemon = daemon_factory()
    probe.subscribe("replies/#")
    probe.subscribe("edgeagent/dev1/status")
    probe.subscribe("edgeagent/dev1/heartbeat")
    v5_request(
        probe,
        "edgeagent/dev1/tasks",
        {"id": "t1", "input": "Porto reports 31.5 degrees.", "schema": SCHEMA},
        "replies/a",
        b"corr-1",
    )
    (reply,) = probe.wait_for("replies/a")
    assert reply.properties.CorrelationData == b"corr-1"
    answer = body(reply)
    assert answer["status"] == "ok", answer
    assert answer["id"] == "t1"
    assert answer["device"] == "dev1"
    assert set(answer["output"]) == {"city", "celsius"}
    assert answer["usage"]["completion_tokens"] > 0
    assert set(answer["timing"]) == {"queue_ms", "prompt_ms", "decode_ms", "total_ms"}
    assert answer["context"]["budget"] == 2048
    status = probe.wait_for("edgeagent/dev1/status")
    assert status[-1].payload == b"online"
    assert status[-1].retain
    # The heartbeat after the answer counts it (heartbeats come every second here).
    beat = wait_for_body(probe, "edgeagent/dev1/heartbeat", lambda b: b["tasks"]["done"] == 1)
    assert beat["state"] == "serving"
    assert beat["tasks"] == {"done": 1, "failed": 0, "busy": 0}
    assert beat["queue"] == {"depth": 0, "capacity": 16}
    assert beat["store"] == {"state": "ok"}
    # One canonical log line for the task, with its fields.
    (line,) = [e for e in daemon.events("task") if e.get("task_id") == "t1"]
    assert line["status"] == "ok"
    assert line["completion_tokens"] == answer["usage"]["completion_tokens"]


def test_catalog_task_results_topic_and_dispatch(daemon_factory, probe):
    # The argument check off: SmolLM2 often writes minutes the input does not hold,
    # which the gate would hold (test_naming_the_action_... below).
    daemon_factory(sections={"catalog": {"unsupported_arguments": "allow"}})
    probe.subscribe("edgeagent/dev1/results/#")
    probe.subscribe("edgeagent/dev1/actions/#")
    probe.publish(
        "edgeagent/dev1/tasks",
        {
            "id": "c1",
            "input": "Zone 3 is bone dry. Water zone 3 for 20 minutes.",
            "action": "set_irrigation",
        },
    )
    answer = body(probe.wait_for("edgeagent/dev1/results/c1")[0])
    assert answer["status"] == "ok", answer
    assert answer["output"]["action"] == "set_irrigation"
    assert 1 <= answer["output"]["args"]["zone"] <= 8
    dispatched = body(probe.wait_for("edgeagent/dev1/actions/set_irrigation")[0])
    assert dispatched == {"id": "c1", "device": "dev1", **answer["output"]}


IRRIGATION_ACTIONS = "edgeagent/dev1/actions/set_irrigation"


def test_a_held_action_is_answered_and_not_dispatched(daemon_factory, probe):
    # A catalog floor of 1.0: no choice among the catalog's three actions reaches it
    # (the argument check off: SmolLM2 often writes numbers the input does not hold).
    daemon_factory(sections={"catalog": {"min_confidence": 1.0, "unsupported_arguments": "allow"}})
    probe.subscribe("edgeagent/dev1/results/#")
    probe.subscribe("edgeagent/dev1/actions/#")
    task = {"input": "Zone 3 is dry. Water zone 3 for 20 minutes.", "max_tokens": 64}
    probe.publish(
        "edgeagent/dev1/tasks", {"id": "h1", **task, "actions": ["set_irrigation", "notify"]}
    )
    held = json.loads(probe.wait_for("edgeagent/dev1/results/h1")[0].payload)
    assert held["status"] == "ok", held
    assert held["dispatched"] is False
    assert 0.0 <= held["confidence"] < 1.0
    assert held["held"] == {
        "reason": "confidence",
        "confidence": held["confidence"],
        "min_confidence": 1.0,
        **({"topic": IRRIGATION_ACTIONS} if held["output"]["action"] == "set_irrigation" else {}),
    }
    assert not [m for m in probe.messages if "/actions/" in m.topic]


NICE_WEATHER = {"input": "The weather is nice today.", "max_tokens": 64}


@pytest.mark.parametrize(
    "allowed",
    [
        {"action": "set_irrigation"},
        {"actions": ["set_irrigation"]},
        {"actions": ["set_irrigation", "notify"]},
    ],
    ids=["action", "actions-one", "actions-two"],
)
def test_naming_the_action_does_not_raise_its_confidence_past_the_floor(
    daemon_factory, probe, allowed
):
    # A request that allows only set_irrigation gets it answered, but the gate weighs
    # the name against the whole catalog (notify, no_action): nothing in the input asks
    # for water, so the confidence stays under the floor and the action is held.
    daemon_factory(sections={"catalog": {"min_confidence": 0.99}})
    probe.subscribe("edgeagent/dev1/results/#")
    probe.subscribe("edgeagent/dev1/actions/#")
    probe.publish("edgeagent/dev1/tasks", {"id": "w1", **NICE_WEATHER, **allowed})
    reply = json.loads(probe.wait_for("edgeagent/dev1/results/w1")[0].payload)
    assert reply["status"] == "ok", reply
    assert reply["output"]["action"] in {"set_irrigation", "notify"}
    assert reply["confidence"] < 0.99
    assert reply["dispatched"] is False
    assert reply["held"]["reason"] in {"confidence", "unsupported_argument"}
    # A task after it is answered too: had the held action been published, it would
    # have been before this reply (per task: reply, then action, one after the other).
    probe.publish("edgeagent/dev1/tasks", {"id": "w2", **NICE_WEATHER, "action": "notify"})
    probe.wait_for("edgeagent/dev1/results/w2")
    assert not [m for m in probe.messages if m.topic == IRRIGATION_ACTIONS]


def test_the_confidence_floor_alone_holds_a_named_action(daemon_factory, probe):
    # The same with the argument check off: the confidence floor alone holds it.
    catalog = {"min_confidence": 0.99, "unsupported_arguments": "allow"}
    daemon_factory(sections={"catalog": catalog})
    probe.subscribe("edgeagent/dev1/results/#")
    probe.subscribe("edgeagent/dev1/actions/#")
    probe.publish("edgeagent/dev1/tasks", {"id": "w1", **NICE_WEATHER, "action": "set_irrigation"})
    reply = json.loads(probe.wait_for("edgeagent/dev1/results/w1")[0].payload)
    assert reply["status"] == "ok", reply
    assert reply["held"] == {
        "reason": "confidence",
        "confidence": reply["confidence"],
        "min_confidence": 0.99,
        "topic": IRRIGATION_ACTIONS,
    }
    probe.publish("edgeagent/dev1/tasks", {"id": "w2", **NICE_WEATHER, "action": "notify"})
    probe.wait_for("edgeagent/dev1/results/w2")
    assert not [m for m in probe.messages if m.topic == IRRIGATION_ACTIONS]


def test_reason_goes_to_the_reply_not_the_output_or_the_action(daemon_factory, probe):
    # `[model] reason`: the model writes a short reason before it chooses; the reply
    # carries it apart, and the action message is the plain {"action", "args"}.
    # The argument check off: the action message is what this test looks at.
    catalog = {"unsupported_arguments": "allow"}
    daemon_factory(sections={"model": {"reason": True}, "catalog": catalog})
    probe.subscribe("edgeagent/dev1/results/#")
    probe.subscribe("edgeagent/dev1/actions/#")
    task = {"id": "r1", "input": "Zone 3 is dry. Water zone 3 for 20 minutes.", "max_tokens": 96}
    probe.publish("edgeagent/dev1/tasks", {**task, "action": "set_irrigation"})
    reply = json.loads(probe.wait_for("edgeagent/dev1/results/r1")[0].payload)
    assert reply["status"] == "ok", reply
    assert isinstance(reply["reason"], str)
    assert 0 < len(reply["reason"]) <= 80
    assert set(reply["output"]) == {"action", "args"}
    (message,) = probe.wait_for(IRRIGATION_ACTIONS)
    assert json.loads(message.payload) == {"id": "r1", "device": "dev1", **reply["output"]}


def test_mosquitto_rr_client(daemon_factory, mosquitto):
    daemon_factory()
    request = json.dumps(
        {"input": "Frost tonight, minus 3 degrees.", "actions": ["notify", "no_action"]}
    )
    done = subprocess.run(
        [
            "mosquitto_rr",
            "-V",
            "5",
            "-p",
            str(mosquitto.port),
            "-h",
            "127.0.0.1",
            "-t",
            "edgeagent/dev1/tasks",
            "-e",
            "replies/rr",
            "-m",
            request,
            "-W",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == "ok"
    assert answer["output"]["action"] in {"notify", "no_action"}


def test_v311_client_with_reply_to(daemon_factory, mosquitto):
    daemon_factory()
    old = MqttProbe(mosquitto.port, protocol=mqtt.MQTTv311)
    try:
        old.subscribe("replies/legacy")
        old.publish(
            "edgeagent/fleet/tasks",
            {
                "id": "v3",
                "input": "Lisbon, 22 degrees.",
                "schema": SCHEMA,
                "reply_to": "replies/legacy",
            },
        )
        answer = body(old.wait_for("replies/legacy")[0])
        assert answer["status"] == "ok"
        assert answer["id"] == "v3"
    finally:
        old.close()


def test_errors_are_typed_and_the_daemon_keeps_serving(daemon_factory, probe):
    daemon = daemon_factory(sections={"queue": {"size": 1}, "mqtt": {"max_payload_bytes": 4096}})
    probe.subscribe("edgeagent/dev1/results/#")
    probe.subscribe("edgeagent/dev1/errors")
    cases = {
        "e-types": ({"id": "e-types", "input": 5}, "INVALID_REQUEST"),
        "e-field": ({"id": "e-field", "input": "x", "colour": "red"}, "INVALID_REQUEST"),
        "e-action": ({"id": "e-action", "input": "x", "action": "launch_rocket"}, "UNKNOWN_ACTION"),
        "e-schema": (
            {"id": "e-schema", "input": "x", "schema": {"type": "array", "uniqueItems": True}},
            "SCHEMA_UNSUPPORTED",
        ),
        "e-short": (
            {"id": "e-short", "input": "Tell a story", "schema": SLOW_SCHEMA, "max_tokens": 5},
            "OUTPUT_INVALID",
        ),
    }
    # Too broken to name an id (an oversized payload is not even read): the errors topic.
    unnamed = [
        {"id": "e-big", "input": "x" * 5000},
        {"id": "e-ctx", "input": "word " * 2100, "schema": SCHEMA},
        b"{not json",
    ]
    for payload, _ in cases.values():
        probe.publish("edgeagent/dev1/tasks", payload)
    for payload in unnamed:
        probe.publish("edgeagent/dev1/tasks", payload)
    for task_id, (_, code) in cases.items():
        answer = body(probe.wait_for(f"edgeagent/dev1/results/{task_id}")[0])
        assert answer["status"] == "error", answer
        assert answer["error"]["code"] == code, answer
    broken = [body(m) for m in probe.wait_for("edgeagent/dev1/errors", count=3)]
    assert all(b["id"] is None for b in broken), broken
    assert sorted(b["error"]["code"] for b in broken) == [
        "INVALID_REQUEST",
        "PAYLOAD_TOO_LARGE",
        "PAYLOAD_TOO_LARGE",
    ]
    # Context budget: fits the payload limit but not the 2048-token context.
    probe.publish(
        "edgeagent/dev1/tasks",
        {"id": "e-ctx2", "input": "你好" * 600, "schema": SCHEMA, "max_tokens": 1000},
    )
    assert (
        body(probe.wait_for("edgeagent/dev1/results/e-ctx2")[0])["error"]["code"]
        == "CONTEXT_BUDGET"
    )
    # Deadline: far shorter than the generation.
    probe.publish(
        "edgeagent/dev1/tasks",
        {
            "id": "e-late",
            "input": "Tell a story",
            "schema": SLOW_SCHEMA,
            "max_tokens": 400,
            "deadline_s": 0.5,
        },
    )
    assert (
        body(probe.wait_for("edgeagent/dev1/results/e-late", timeout=60)[0])["error"]["code"]
        == "DEADLINE_EXCEEDED"
    )
    # BUSY: queue of 1 while a slow task runs.
    probe.publish(
        "edgeagent/dev1/tasks",
        {"id": "b-run", "input": "Tell a story", "schema": SLOW_SCHEMA, "max_tokens": 400},
    )
    daemon.wait_event("task started", task_id="b-run")
    for i in range(3):
        probe.publish(
            "edgeagent/dev1/tasks", {"id": f"b-{i}", "input": "Porto, 20 degrees", "schema": SCHEMA}
        )
    codes = [body(probe.wait_for(f"edgeagent/dev1/results/b-{i}")[0])["status"] for i in range(3)]
    busy = [
        body(m)
        for m in probe.messages
        if m.topic.startswith("edgeagent/dev1/results/b-") and body(m)["status"] == "error"
    ]
    assert busy, codes
    assert all(b["error"]["code"] == "BUSY" for b in busy), codes
    assert "ok" in codes  # the one that fit in the queue was answered
    # Still serving after all that.
    probe.publish(
        "edgeagent/dev1/tasks", {"id": "after", "input": "Faro, 25 degrees.", "schema": SCHEMA}
    )
    assert body(probe.wait_for("edgeagent/dev1/results/after", timeout=90)[0])["status"] == "ok"
    assert daemon.proc.poll() is None


def test_duplicate_id_is_answered_once_from_the_journal(daemon_factory, probe):
    daemon = daemon_factory()
    probe.subscribe("edgeagent/dev1/results/#")
    task = {"id": "dup-1", "input": "Braga, 18 degrees.", "schema": SCHEMA}
    probe.publish("edgeagent/dev1/tasks", task)
    first = probe.wait_for("edgeagent/dev1/results/dup-1")[0]
    probe.publish("edgeagent/dev1/tasks", task)
    second = probe.wait_for("edgeagent/dev1/results/dup-1", count=2)[1]
    assert body(first) == body(second)
    runs = [e for e in daemon.events("task") if e.get("task_id") == "dup-1"]
    assert len(runs) == 1, runs
    assert daemon.events("task answered from journal")
    # The same id for different work is refused.
    probe.publish("edgeagent/dev1/tasks", {**task, "input": "something else"})
    third = body(probe.wait_for("edgeagent/dev1/results/dup-1", count=3)[2])
    assert third["error"]["code"] == "INVALID_REQUEST"


def test_sigkill_during_a_task_reply_arrives_exactly_once(daemon_factory, probe, tmp_path):
    state = tmp_path / "state-kill"
    daemon = daemon_factory(state_dir=state)
    probe.subscribe("edgeagent/dev1/results/#")
    probe.publish(
        "edgeagent/dev1/tasks",
        {
            "id": "k1",
            "input": "Tell a story about a tomato.",
            "schema": SLOW_SCHEMA,
            "max_tokens": 400,
        },
    )
    daemon.wait_event("task started", task_id="k1")
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    assert not daemon.events("task")  # killed before it answered
    revived = daemon_factory(state_dir=state)  # same device id and state dir
    probe.wait_for("edgeagent/dev1/results/k1", timeout=120)
    # A barrier: the revived daemon answers a second task after handling the redelivery,
    # and the broker keeps one publisher's order, so a duplicate of k1 would be here now.
    probe.publish("edgeagent/dev1/tasks", {"id": "k2", "input": "Aveiro, 17 C.", "schema": SCHEMA})
    probe.wait_for("edgeagent/dev1/results/k2", timeout=120)
    replies = [body(m) for m in probe.messages if m.topic == "edgeagent/dev1/results/k1"]
    assert len(replies) == 1, replies
    assert replies[0]["status"] == "ok"
    assert [e for e in revived.events("task") if e.get("task_id") == "k1"]


def test_broker_restart_while_tasks_are_queued_loses_nothing(daemon_factory, probe, mosquitto):
    daemon = daemon_factory()
    probe.subscribe("edgeagent/dev1/results/#")
    ids = [f"q{i}" for i in range(3)]
    probe.publish(
        "edgeagent/dev1/tasks",
        {"id": ids[0], "input": "Tell a story.", "schema": SLOW_SCHEMA, "max_tokens": 400},
    )
    for task_id in ids[1:]:
        probe.publish(
            "edgeagent/dev1/tasks",
            {"id": task_id, "input": "Coimbra, 19 degrees.", "schema": SCHEMA},
        )
    daemon.wait_event("task started", task_id="q0")
    mosquitto.stop()
    daemon.wait_event("mqtt disconnected")  # the daemon noticed, and works on without it
    mosquitto.start()
    for task_id in ids:
        answer = body(probe.wait_for(f"edgeagent/dev1/results/{task_id}", timeout=120)[0])
        assert answer["status"] == "ok", answer
    assert daemon.events("mqtt disconnected")
    assert daemon.proc.poll() is None


def test_three_daemons_share_the_fleet_subscription(daemon_factory, probe):
    devices = ["pi-a", "pi-b", "pi-c"]
    for device in devices:
        daemon_factory(device=device)
    probe.subscribe("replies/fleet")
    for i in range(9):
        v5_request(
            probe,
            "edgeagent/fleet/tasks",
            {"id": f"f{i}", "input": f"Sensor {i}: 2{i} degrees in Evora.", "schema": SCHEMA},
            "replies/fleet",
            f"f{i}".encode(),
        )
    replies = [body(m) for m in probe.wait_for("replies/fleet", count=9, timeout=180)]
    assert sorted(r["id"] for r in replies) == sorted(f"f{i}" for i in range(9))
    assert {r["device"] for r in replies} == set(devices)
    assert all(r["status"] == "ok" for r in replies)


def test_sigterm_publishes_offline_and_exits_zero(daemon_factory, probe):
    daemon = daemon_factory()
    probe.subscribe("edgeagent/dev1/status")
    probe.wait_for("edgeagent/dev1/status")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    statuses = [m.payload for m in probe.wait_for("edgeagent/dev1/status", count=2)]
    assert statuses[-1] == b"offline"
    assert daemon.events("stopped")


def test_submit_and_status_cli(daemon_factory, tmp_path):
    daemon = daemon_factory()
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    cli = [sys.executable, "-m", "edgeagent"]
    done = subprocess.run(
        [
            *cli,
            "submit",
            "--config",
            str(daemon.config),
            "--schema",
            str(schema),
            "--timeout",
            "60",
            "Guarda: 4 degrees",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    bad = subprocess.run(
        [*cli, "submit", "--config", str(daemon.config), "--action", "launch_rocket", "go"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=90,
        check=False,
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"]["code"] == "UNKNOWN_ACTION"
    status = subprocess.run(
        [*cli, "status", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert status.returncode == 0, status.stdout
    shown = json.loads(status.stdout)
    assert shown["status"] == "online"
    assert shown["heartbeat"]["device"] == "dev1"


def test_task_ids_are_generated(daemon_factory, probe):
    daemon_factory()
    probe.subscribe("replies/gen")
    v5_request(
        probe,
        "edgeagent/dev1/tasks",
        {"input": "Beja, 30 degrees", "schema": SCHEMA},
        "replies/gen",
        uuid.uuid4().bytes,
    )
    answer = body(probe.wait_for("replies/gen")[0])
    assert len(answer["id"]) == 32


class WedgedDaemon(DaemonProcess):
    """The daemon with a model whose first call never returns (tests/support/wedged_daemon.py)."""

    def start(self) -> None:
        with self.log_path.open("ab") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, str(WEDGED_DAEMON), "run", "--config", str(self.config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
            )


def test_sigterm_with_a_wedged_inference_thread_still_exits(tmp_path, model_path, mosquitto, probe):
    cfg = write_config(
        tmp_path / "wedged.toml",
        model=model_path,
        port=mosquitto.port,
        log_level="debug",
        sections={"queue": {"shutdown_grace_s": 1}},
    )
    daemon = WedgedDaemon(cfg, tmp_path / "wedged.log")
    try:
        daemon.start()
        daemon.wait_event("mqtt connected")
        probe.subscribe("edgeagent/dev1/status")
        probe.publish("edgeagent/dev1/tasks", {"id": "w1", "input": "x", "schema": SCHEMA})
        daemon.wait_event("task started", task_id="w1")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0  # bounded: grace, hand-back wait, engine close
    finally:
        daemon.stop()
    assert probe.wait_for("edgeagent/dev1/status", count=2)[-1].payload == b"offline"
    assert daemon.events("grace period over; handing the running task back")
    assert daemon.events("the inference thread does not respond; exiting without it")


def test_a_task_that_kills_the_daemon_twice_is_answered_not_run_a_third_time(
    daemon_factory, probe, tmp_path
):
    """A poison task (here: SIGKILLed while it runs, as a llama.cpp crash or an OOM kill
    would end it) costs at most [queue] max_task_aborts (2) restarts, never systemd's
    start limit: the third start answers it INTERNAL and acknowledges it."""
    state = tmp_path / "state-poison"
    probe.subscribe("edgeagent/dev1/results/#")
    task = {"id": "p1", "input": "Tell a story.", "schema": SLOW_SCHEMA, "max_tokens": 400}
    log = tmp_path / "dev1.log"
    for attempt in range(2):
        daemon = daemon_factory(state_dir=state)
        if attempt == 0:
            probe.publish("edgeagent/dev1/tasks", task)  # later starts get the redelivery
        daemon.wait_event("task started", task_id="p1")
        daemon.signal(signal.SIGKILL)
        daemon.wait()
        log.rename(tmp_path / f"dev1-{attempt}.log")  # each start's events on their own
    last = daemon_factory(state_dir=state)
    answer = body(probe.wait_for("edgeagent/dev1/results/p1", timeout=120)[0])
    assert answer["status"] == "error"
    assert answer["error"]["code"] == "INTERNAL"
    assert answer["error"]["message"] == "task aborted the daemon 2 times"
    assert not last.events("task started")  # not run a third time
    assert last.events("task aborted the daemon too often; answered instead of run again")
    # Acknowledged: a task after it is answered, and no redelivery of p1 comes back.
    probe.publish("edgeagent/dev1/tasks", {"id": "p2", "input": "Aveiro, 17 C.", "schema": SCHEMA})
    assert body(probe.wait_for("edgeagent/dev1/results/p2", timeout=120)[0])["status"] == "ok"
    assert len([m for m in probe.messages if m.topic == "edgeagent/dev1/results/p1"]) == 1
