"""The Node-RED example flow, read and run without Node-RED: its nodes, its function
nodes' JavaScript in Node.js with Node-RED's `msg`/`flow` API stubbed, its switch rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from support.daemon import ROOT

FLOW = ROOT / "examples" / "node-red" / "edgeagent-flow.json"

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


def flow() -> list[dict[str, Any]]:
    nodes = json.loads(FLOW.read_text(encoding="utf-8"))
    assert isinstance(nodes, list)
    return nodes


def nodes_by_id() -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in flow()}


def run_function(node: dict[str, Any], msg: dict[str, Any], flow: dict[str, Any]):
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


_MISSING = object()  # JavaScript's undefined: a property the message does not have

# Node-RED's switch rules (nodes/core/function/10-switch.js) the example flow uses.
_RULES = {
    "eq": lambda value, rule: value == rule["v"],
    "null": lambda value, _rule: value is None or value is _MISSING,
    "nnull": lambda value, _rule: value is not None and value is not _MISSING,
    "else": lambda _value, _rule: True,
}


def switch(node: dict[str, Any], msg: dict[str, Any]) -> str:
    """Where a switch node sends msg (checkall false: the first matching rule)."""
    value: Any = msg
    for key in node["property"].split("."):
        value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
    for index, rule in enumerate(node["rules"]):
        if _RULES[rule["t"]](value, rule):
            (target,) = node["wires"][index]
            return str(target)
    raise AssertionError(f"no rule of {node['name']} matches {value!r}")


def flow_task(text: str) -> tuple[str, dict[str, Any], str, str]:
    """(topic, payload, response topic, correlation) the flow publishes for `text`:
    what test_integrations.py sends to the real daemon."""
    by_id = nodes_by_id()
    build = next(n for n in by_id.values() if n["type"] == "function" and n["name"] == "build task")
    task, _ = run_function(build, {"payload": text}, {})
    send = by_id[build["wires"][0][0]]
    return send["topic"], task["payload"], task["responseTopic"], task["correlationData"]
