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
    inject = next(n for n in by_id.values() if n["type"] == "inject")
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
    assert route(held) == "held: ask a person (reason, topic)"
    cut_short = {**held, "held": {"reason": "cut_short", "confidence": None}}
    assert route(cut_short) == "held: ask a person (reason, topic)"

    # Someone else's reply on the same topic is dropped.
    stranger = {**ok, "payload": {"id": "x", "status": "ok"}, "correlationData": "not-ours"}
    assert run_function(by_id[match_id], stranger, flow)[0] is None


def test_the_flow_is_in_the_integrations_doc():
    doc = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    assert "examples/node-red/edgeagent-flow.json" in doc
