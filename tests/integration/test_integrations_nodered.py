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
    # Replies come back on the topic the request named.
    replies = next(n for n in by_id.values() if n["type"] == "mqtt in")
    assert replies["topic"] == task["responseTopic"]
    assert replies["datatype"] == "json"

    (match_id,) = replies["wires"][0]
    ok = {
        "payload": {
            "id": request.id,
            "status": "ok",
            "output": {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}},
        },
        "correlationData": task["correlationData"],
    }
    routed, flow_after = run_function(by_id[match_id], ok, flow)
    assert routed is not None
    assert routed["topic"] == request.id
    assert flow_after.get("pending", {}) == {}  # answered: forgotten
    status = by_id[by_id[match_id]["wires"][0][0]]
    action = by_id[switch(status, routed)]
    assert by_id[switch(action, routed)]["name"] == "irrigate (args)"
    notify = {"payload": {**ok["payload"], "output": {"action": "notify", "args": {}}}}
    assert by_id[switch(action, notify)]["name"] == "notify (args)"
    nothing = {"payload": {**ok["payload"], "output": {"action": "no_action", "args": {}}}}
    assert by_id[switch(action, nothing)]["name"] == "other / no action"
    error = {"payload": {"id": request.id, "status": "error", "error": {"code": "BUSY"}}}
    assert by_id[switch(status, error)]["name"] == "error (code, message)"

    # Someone else's reply on the same topic is dropped.
    stranger = {"payload": {"id": "x", "status": "ok"}, "correlationData": "not-ours"}
    assert run_function(by_id[match_id], stranger, flow)[0] is None


def test_the_flow_is_in_the_integrations_doc():
    doc = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    assert "examples/node-red/edgeagent-flow.json" in doc
