"""The Node-RED example flow (examples/node-red/edgeagent-flow.json) is a valid flow that
sends a valid task and routes replies where its labels say.

Checked without a Node-RED install: the export's structure (ids, tabs, wires, outputs,
the broker config node), the function nodes' JavaScript run in Node.js with Node-RED's
`msg`/`flow` API stubbed, the task they build parsed by the daemon's own request parser,
and the switch rules applied to real reply shapes. test_integrations.py sends the flow's
task to a real daemon.
"""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
from support.daemon import ROOT
from support.nodered import flow, nodes_by_id, run_function, switch

from edgeagent.protocol.request import parse_request

CONFIG_NODES = {"mqtt-broker"}
KNOWN_TYPES = {"tab", "mqtt-broker", "inject", "function", "mqtt out", "mqtt in", "switch", "debug"}


def test_flow_structure():
    nodes = flow()
    ids = [n["id"] for n in nodes]
    assert len(ids) == len(set(ids)), "node ids must be unique"
    by_id = dict(zip(ids, nodes, strict=True))
    tabs = [n for n in nodes if n["type"] == "tab"]
    assert len(tabs) == 1
    for node in nodes:
        assert node["type"] in KNOWN_TYPES, node["type"]
        if node["type"] in {"tab", *CONFIG_NODES}:
            assert "z" not in node or not node["z"]
            continue
        assert node["z"] == tabs[0]["id"]
        assert isinstance(node["x"], int)
        assert isinstance(node["y"], int)
        for output in node["wires"]:
            for target in output:
                assert target in by_id, f"{node['id']} wires to missing {target}"
                assert by_id[target]["type"] not in {"inject", "mqtt in"}  # no inputs
        if node["type"] in {"function", "switch"}:
            assert len(node["wires"]) == node["outputs"]
        if node["type"] == "switch":
            assert len(node["rules"]) == node["outputs"]
        if node["type"].startswith("mqtt"):
            assert by_id[node["broker"]]["type"] == "mqtt-broker"
    (broker,) = [n for n in nodes if n["type"] == "mqtt-broker"]
    assert broker["protocolVersion"] == "5"  # response topic + correlation data


def test_every_node_is_reachable_from_the_inject_or_the_reply_subscription():
    by_id = nodes_by_id()
    seen: set[str] = set()
    todo = [n["id"] for n in by_id.values() if n["type"] in {"inject", "mqtt in"}]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += [t for output in by_id[current].get("wires", []) for t in output]
    flow_nodes = {i for i, n in by_id.items() if n["type"] not in {"tab", *CONFIG_NODES}}
    assert flow_nodes == seen


def test_the_flow_sends_a_valid_task_and_routes_its_replies():
    by_id = nodes_by_id()
    inject = by_id["ea_inject"]
    (build_id,) = inject["wires"][0]
    task, flow = run_function(by_id[build_id], {"payload": inject["payload"]}, {})
    (send_id,) = by_id[build_id]["wires"][0]
    send = by_id[send_id]
    assert send["type"] == "mqtt out"
    assert send["topic"] == "edgeagent/greenhouse-01/tasks"  # the example config's device
    # The daemon's own parser accepts what the flow publishes.
    request = parse_request(json.dumps(task["payload"]).encode(), 256 * 1024)
    assert request.input == inject["payload"]
    assert request.id == task["correlationData"]
    # Replies come back on the topic the request named, which names the device the task
    # went to (the broker ACL lets a device write only replies/<sender>/<its id>/...).
    replies = next(n for n in by_id.values() if n["type"] == "mqtt in")
    assert mqtt.topic_matches_sub(replies["topic"], task["responseTopic"])
    assert task["responseTopic"] == "replies/node-red/greenhouse-01"
    assert replies["datatype"] == "json"

    (match_id,) = replies["wires"][0]
    ok = {
        "topic": task["responseTopic"],
        "payload": {
            "id": request.id,
            "status": "ok",
            "device": "greenhouse-01",
            "output": {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}},
            "confidence": 0.97,
            "dispatched": True,
        },
        "correlationData": task["correlationData"],
    }
    # A reply whose body claims another device than the topic it came on is dropped.
    forged = {**ok, "payload": {**ok["payload"], "device": "greenhouse-02"}}
    assert run_function(by_id[match_id], forged, flow)[0] is None
    routed, flow_after = run_function(by_id[match_id], ok, flow)
    assert routed is not None
    assert (routed["topic"], routed["device"]) == (request.id, "greenhouse-01")
    assert flow_after.get("pending", {}) == {}  # answered: forgotten

    def route(payload):
        node = by_id[by_id[match_id]["wires"][0][0]]  # the status switch
        while node["type"] == "switch":
            node = by_id[switch(node, {"payload": payload})]
        return node["name"]

    assert route(ok["payload"]) == "irrigate (args)"
    assert route({**ok["payload"], "output": {"action": "notify", "args": {}}}) == "notify (args)"
    nothing = {**ok["payload"], "output": {"action": "no_action", "args": {}}}
    assert route(nothing) == "other / no action"
    assert route({"id": request.id, "status": "error", "error": {"code": "BUSY"}}) == (
        "error (code, message)"
    )
    # A held action (docs/protocol.md) never reaches the actuator branch: a person decides.
    held = {
        **ok["payload"],
        "confidence": 0.41,
        "dispatched": False,
        "held": {
            "reason": "confidence",
            "confidence": 0.41,
            "min_confidence": 0.8,
            "topic": "edgeagent/greenhouse-01/actions/set_irrigation",
        },
    }
    assert route(held) == "pending hold"  # the approval step, never the actuator branch
    cut_short = {**held, "held": {"reason": "cut_short", "confidence": None}}
    assert route(cut_short) == "pending hold"
    # The follow-up once a person decided (docs/protocol.md): a confirmed or edited hold
    # was dispatched and goes where a dispatched action goes; a rejected or expired one not.
    resolution = {"by": "alice", "at": "2026-12-07T04:20:00Z"}
    confirmed = {**held, "dispatched": True, "resolution": {**resolution, "decision": "confirmed"}}
    assert route(confirmed) == "irrigate (args)"
    edited = {**confirmed, "resolution": {**resolution, "decision": "edited", "args": {}}}
    assert route(edited) == "irrigate (args)"
    for decision in ("rejected", "expired"):
        dropped = {**held, "resolution": {**resolution, "decision": decision}}
        assert route(dropped) == "held, not dispatched (rejected / expired)"

    # Someone else's reply on the same topic is dropped.
    stranger = {**ok, "payload": {"id": "x", "status": "ok"}, "correlationData": "not-ours"}
    assert run_function(by_id[match_id], stranger, flow)[0] is None


def test_the_flow_is_in_the_integrations_doc():
    doc = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    assert "examples/node-red/edgeagent-flow.json" in doc


HOLD = {
    "task_id": "t-7",
    "device": "greenhouse-01",
    "action": "set_irrigation",
    "args": {"zone": 3, "minutes": 20},
    "confidence": 0.62,
    "why": "confidence",
    "held_at": "2026-12-07T04:10:00Z",
    "expires_at": "2026-12-07T05:10:00Z",
}


def test_a_held_reply_stays_pending_until_its_follow_up():
    by_id = nodes_by_id()
    task, flow = run_function(by_id["ea_build"], {"payload": "Zone 3 is dry."}, {})
    task_id = task["payload"]["id"]
    held = {
        "id": task_id,
        "status": "ok",
        "device": "greenhouse-01",
        "output": {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}},
        "dispatched": False,
        "held": {"reason": "confidence", "confidence": 0.41},
    }
    reply = {"topic": task["responseTopic"], "correlationData": task["correlationData"]}
    routed, flow = run_function(by_id["ea_match"], {**reply, "payload": held}, flow)
    assert routed is not None
    assert task_id in flow["pending"]  # the follow-up will come with the same correlation
    resolution = {"decision": "confirmed", "by": "alice", "at": "2026-12-07T04:20:00Z"}
    follow_up = {**held, "dispatched": True, "resolution": resolution}
    routed, flow = run_function(by_id["ea_match"], {**reply, "payload": follow_up}, flow)
    assert routed is not None
    assert flow.get("pending", {}) == {}
    # Its approval entry: the held reply itself, shown to a person; kept for a decision
    # only when the device keeps it pending (a dispatched action: `held.topic`).
    pending = by_id["ea_pending"]
    shown, after = run_function(pending, {**routed, "payload": held}, flow)
    assert (shown["payload"]["task_id"], shown["payload"]["why"]) == (task_id, "confidence")
    assert after.get("holds", {}) == {}
    held["held"]["topic"] = "edgeagent/greenhouse-01/actions/set_irrigation"
    shown, after = run_function(pending, {**routed, "payload": held}, flow)
    assert list(after["holds"]) == [f"greenhouse-01/{task_id}"]


def test_the_approval_step_follows_the_retained_holds_and_publishes_a_decision():
    by_id = nodes_by_id()
    held_in = by_id["ea_held_in"]
    assert held_in["type"] == "mqtt in"
    topic = "edgeagent/greenhouse-01/held/t-7"
    assert mqtt.topic_matches_sub(held_in["topic"], topic)
    pending = by_id[held_in["wires"][0][0]]
    assert by_id[pending["wires"][0][0]]["name"] == "held: ask a person (action, args)"

    def retained(task_id, body, flow):
        return run_function(
            pending, {"topic": f"edgeagent/greenhouse-01/held/{task_id}", "payload": body}, flow
        )

    shown, flow = retained("t-7", json.dumps(HOLD), {})
    assert shown["payload"]["action"] == "set_irrigation"
    newer = {**HOLD, "task_id": "t-8", "held_at": "2026-12-07T04:30:00Z"}
    _, flow = retained("t-8", json.dumps(newer), flow)
    # Not believed: a body naming another device or hold, or not JSON at all.
    for body in (json.dumps({**HOLD, "device": "greenhouse-02"}), json.dumps(HOLD), "[", "null"):
        assert retained("t-9", body, flow)[0] is None
    assert set(flow["holds"]) == {"greenhouse-01/t-7", "greenhouse-01/t-8"}

    # "confirm newest hold" publishes the operator's decision on the newest one.
    confirm = next(n for n in by_id.values() if n.get("name") == "confirm newest hold")
    decide = by_id[confirm["wires"][0][0]]
    decision, _ = run_function(decide, {"payload": confirm["payload"]}, flow)
    assert decision["topic"] == "edgeagent/greenhouse-01/held/t-8/confirm"
    assert decision["payload"] == {"by": "node-red"}
    assert mqtt.topic_matches_sub("edgeagent/+/held/+/confirm", decision["topic"])  # operators
    assert decision["responseTopic"] == "replies/node-red/greenhouse-01/decisions"
    answers = by_id["ea_answers"]
    assert mqtt.topic_matches_sub(answers["topic"], decision["responseTopic"])
    send = by_id[decide["wires"][0][0]]
    assert (send["type"], send["topic"]) == ("mqtt out", "")  # the topic comes from msg
    reject = next(n for n in by_id.values() if n.get("name") == "reject newest hold")
    assert run_function(decide, {"payload": reject["payload"]}, flow)[0]["topic"].endswith(
        "/held/t-8/reject"
    )

    # Cleared (resolved or expired): gone from the list; nothing left, nothing to decide.
    for task_id in ("t-7", "t-8"):
        assert retained(task_id, "", flow)[0] is None
        _, flow = retained(task_id, "", flow)
    assert flow["holds"] == {}
    assert run_function(decide, {"payload": "confirm"}, flow)[0] is None


def test_the_approval_list_is_bounded():
    pending = nodes_by_id()["ea_pending"]
    holds = {f"greenhouse-01/t-{i}": {"task_id": f"t-{i}"} for i in range(100)}
    body = json.dumps({**HOLD, "task_id": "t-x"})
    out, flow = run_function(
        pending, {"topic": "edgeagent/greenhouse-01/held/t-x", "payload": body}, {"holds": holds}
    )
    assert out is None
    assert len(flow["holds"]) == 100
