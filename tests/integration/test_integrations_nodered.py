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
import shutil
import subprocess
from typing import Any

import pytest
from support.daemon import ROOT

from edgeagent.protocol.request import parse_request

FLOW = ROOT / "examples" / "node-red" / "edgeagent-flow.json"
CONFIG_NODES = {"mqtt-broker"}
KNOWN_TYPES = {"tab", "mqtt-broker", "inject", "function", "mqtt out", "mqtt in", "switch", "debug"}

# Node-RED's function sandbox, reduced to what the example uses: msg in, msg (or null)
# out, flow context with dotted keys, Buffer and Date.
RUNNER = r"""
const vm = require("node:vm");
const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const store = input.flow;
const get = (key) => key.split(".").reduce((o, k) => (o == null ? undefined : o[k]), store);
const set = (key, value) => {
  const keys = key.split(".");
  let o = store;
  for (const k of keys.slice(0, -1)) o = o[k] ??= {};
  if (value === undefined) delete o[keys.at(-1)]; else o[keys.at(-1)] = value;
};
const msg = input.msg;
if (msg.correlationData !== undefined) msg.correlationData = Buffer.from(msg.correlationData);
const fn = new vm.Script("(function (msg) {\n" + input.func + "\n})");
const out = fn.runInNewContext({ flow: { get, set }, Buffer, Date, Math, String, node: {} })(msg);
if (out && out.correlationData) out.correlationData = out.correlationData.toString();
process.stdout.write(JSON.stringify({ out: out ?? null, flow: store }));
"""


def _flow() -> list[dict[str, Any]]:
    nodes = json.loads(FLOW.read_text(encoding="utf-8"))
    assert isinstance(nodes, list)
    return nodes


def _by_id() -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in _flow()}


def _run_function(node: dict[str, Any], msg: dict[str, Any], flow: dict[str, Any]):
    node_js = shutil.which("node")
    if node_js is None:
        pytest.skip("Node.js is not installed")
    result = subprocess.run(
        [node_js, "-e", RUNNER],
        input=json.dumps({"func": node["func"], "msg": msg, "flow": flow}),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    data = json.loads(result.stdout)
    return data["out"], data["flow"]


def _switch(node: dict[str, Any], msg: dict[str, Any]) -> str:
    """Where a switch node sends msg (checkall false: the first matching rule)."""
    value: Any = msg
    for key in node["property"].split("."):
        value = value.get(key) if isinstance(value, dict) else None
    for index, rule in enumerate(node["rules"]):
        if rule["t"] == "else" or (rule["t"] == "eq" and value == rule["v"]):
            (target,) = node["wires"][index]
            return str(target)
    raise AssertionError(f"no rule of {node['name']} matches {value!r}")


def test_flow_structure():
    nodes = _flow()
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
    by_id = _by_id()
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
    by_id = _by_id()
    inject = next(n for n in by_id.values() if n["type"] == "inject")
    (build_id,) = inject["wires"][0]
    task, flow = _run_function(by_id[build_id], {"payload": inject["payload"]}, {})
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
    routed, flow_after = _run_function(by_id[match_id], ok, flow)
    assert routed is not None
    assert routed["topic"] == request.id
    assert flow_after.get("pending", {}) == {}  # answered: forgotten
    status = by_id[by_id[match_id]["wires"][0][0]]
    action = by_id[_switch(status, routed)]
    assert by_id[_switch(action, routed)]["name"] == "irrigate (args)"
    notify = {"payload": {**ok["payload"], "output": {"action": "notify", "args": {}}}}
    assert by_id[_switch(action, notify)]["name"] == "notify (args)"
    nothing = {"payload": {**ok["payload"], "output": {"action": "no_action", "args": {}}}}
    assert by_id[_switch(action, nothing)]["name"] == "other / no action"
    error = {"payload": {"id": request.id, "status": "error", "error": {"code": "BUSY"}}}
    assert by_id[_switch(status, error)]["name"] == "error (code, message)"

    # Someone else's reply on the same topic is dropped.
    stranger = {"payload": {"id": "x", "status": "ok"}, "correlationData": "not-ours"}
    assert _run_function(by_id[match_id], stranger, flow)[0] is None


def test_the_flow_is_in_the_integrations_doc():
    doc = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    assert "examples/node-red/edgeagent-flow.json" in doc


def flow_task(text: str) -> tuple[str, dict[str, Any], str, str]:
    """(topic, payload, response topic, correlation) the flow publishes for `text`:
    what test_integrations.py sends to the real daemon."""
    by_id = _by_id()
    build = next(n for n in by_id.values() if n["type"] == "function" and n["name"] == "build task")
    task, _ = _run_function(build, {"payload": text}, {})
    send = by_id[build["wires"][0][0]]
    return send["topic"], task["payload"], task["responseTopic"], task["correlationData"]
