"""`edgeagent held | confirm | reject`: an operator's side of held actions.

`held` lists the pending holds (cli/holds_view.py). `confirm DEVICE TASK` and `reject
DEVICE TASK` publish the operator's decision on `<prefix>/<device>/held/<task>/confirm`
(or `/reject`, docs/protocol.md "Held actions") with an MQTT v5 Response Topic in the
operator's own reply branch, `<reply prefix>/<user>/<device>/cli-<random>`, which the
broker ACL lets only that device write, and wait for the device's answer there.

Exit codes: 0 the device did it; 1 the device answered with a typed error (HOLD_UNKNOWN,
HOLD_RESOLVED, HOLD_EXPIRED, INVALID_REQUEST, ...); 2 a bad command line or config, or
the broker refused the connection or the message (a task sender's credentials cannot
confirm: docs/security.md); 3 no answer within --timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import queue
import sys
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from edgeagent.cli.untrusted_json import parse_object
from edgeagent.config import DEFAULT_CONFIG_PATH, Config, load_config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.client import connect_once, mqtt_properties, new_client

EXIT_OK = 0
EXIT_REFUSED = 1  # the device's typed error
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

MAX_BY = 64  # characters of a decider's name (the device refuses longer ones)
MAX_NOTE = 200
MAX_ANSWER_BYTES = 64 * 1024
_UNSAFE_LEVEL = frozenset("/+#\x00")


def _bad(message: str) -> EdgeAgentError:
    return EdgeAgentError(ErrorCode.INVALID_REQUEST, message)


def topic_level(value: str, what: str) -> str:
    """`value` as one topic level of the decision topic, or INVALID_REQUEST."""
    if not value or _UNSAFE_LEVEL & set(value) or not value.isprintable():
        raise _bad(f"{what} must be one MQTT topic level of printable characters: {value!r}")
    if len(value.encode()) > 256:
        raise _bad(f"{what} is longer than 256 bytes")
    return value


def decider(name: str | None) -> str:
    """--by, or the local user's name; 1-64 printable characters (docs/protocol.md)."""
    if name is None:
        try:
            name = getpass.getuser()
        except (OSError, KeyError) as exc:
            raise _bad("no local user name: give --by NAME") from exc
    if not 1 <= len(name) <= MAX_BY or not name.isprintable():
        raise _bad(f"--by must be 1-{MAX_BY} printable characters")
    return name


def decision_body(by: str, *, args: str | None = None, note: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"by": by}
    if args is not None:
        try:
            edited = json.loads(args)
        except ValueError as exc:
            raise _bad(f"--args is not JSON: {exc}") from exc
        if not isinstance(edited, dict):
            raise _bad("--args must be a JSON object (the action's arguments)")
        body["args"] = edited
    if note is not None:
        if len(note) > MAX_NOTE:
            raise _bad(f"--note is longer than {MAX_NOTE} characters")
        body["note"] = note
    return body


def read_answer(payload: bytes) -> dict[str, Any]:
    """The device's answer, or an INTERNAL error that says why it cannot be read."""
    data, problem = parse_object(payload, what="answer", max_bytes=MAX_ANSWER_BYTES, max_depth=16)
    if data is None:
        raise EdgeAgentError(ErrorCode.INTERNAL, f"unreadable answer from the device: {problem}")
    return data


def decide(
    cfg: Config, target: tuple[str, str], decision: str, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Publish the decision on the (device, task id) hold and return the device's answer
    (TIMEOUT when none comes)."""
    device, task_id = target
    if not cfg.mqtt.reply_prefixes:
        raise _bad("the answer needs a reply prefix: set [mqtt] reply_prefixes")
    me = topic_level(cfg.mqtt.username or cfg.device.id, "the broker user")
    topic = f"{cfg.mqtt.topic_prefix}/{device}/held/{task_id}/{decision}"
    reply_topic = f"{cfg.mqtt.reply_prefixes[0]}/{me}/{device}/cli-{uuid.uuid4().hex}"
    correlation = uuid.uuid4().bytes
    events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=16)

    def put(kind: str, value: Any) -> None:
        with contextlib.suppress(queue.Full):  # paho's thread never blocks on us
            events.put_nowait((kind, value))

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if getattr(msg.properties, "CorrelationData", None) == correlation:
            put("answer", bytes(msg.payload))

    client = new_client(cfg.mqtt, client_id=f"edgeagent-cli-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda _c, _u, _f, reason, _p: put("connected", reason)
    client.on_subscribe = lambda _c, _u, _m, codes, _p: put("subscribed", codes)
    client.on_publish = lambda _c, _u, _m, reason, _p: put("published", reason)
    client.on_message = on_message
    connect_once(client, cfg.mqtt)
    client.loop_start()
    try:
        _expect(events, "connected", timeout, "no CONNACK from the broker")
        client.subscribe(reply_topic, qos=1)
        _expect(events, "subscribed", timeout, "no SUBACK from the broker")
        props = mqtt_properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = correlation
        client.publish(topic, json.dumps(body), qos=1, properties=props)
        _expect(events, "published", timeout, "no PUBACK from the broker")
        answer = _expect(events, "answer", timeout, f"no answer from {device} within {timeout:g} s")
        return read_answer(answer)
    finally:
        client.disconnect()
        client.loop_stop()


def _expect(events: queue.Queue[tuple[str, Any]], kind: str, timeout: float, late: str) -> Any:
    """The next event of `kind`; a refusal by the broker is INVALID_REQUEST, none TIMEOUT."""
    while True:
        try:
            got, value = events.get(timeout=timeout)
        except queue.Empty:
            raise EdgeAgentError(ErrorCode.TIMEOUT, late) from None
        if got != kind:
            continue  # an answer's stray duplicate, or a late event of an earlier step
        for code in value if isinstance(value, list) else [value]:
            if getattr(code, "is_failure", False):
                hint = (
                    " (confirming holds needs an operator's credentials)"
                    if kind == "published"
                    else ""
                )
                raise _bad(f"the broker refused: {code}{hint}")
        return value


def _exit_code(error: EdgeAgentError) -> int:
    if error.code == ErrorCode.TIMEOUT:
        return EXIT_TIMEOUT
    return EXIT_USAGE if error.code in (ErrorCode.INVALID_REQUEST, ErrorCode.CONFIG_INVALID) else 1


def _print(value: Any) -> None:
    # ASCII only: nothing a device sent reaches the terminal as a control character.
    sys.stdout.write(json.dumps(value, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def cmd_held(args: argparse.Namespace) -> int:
    from edgeagent.cli import holds_view  # noqa: PLC0415

    try:
        cfg = load_config(args.config)
        device = topic_level(args.device, "DEVICE") if args.device else None
        return holds_view.run(
            cfg, device=device, as_json=args.json, watch=args.watch, timeout=args.timeout
        )
    except EdgeAgentError as exc:
        _print({"error": exc.to_dict()})
        return _exit_code(exc)


def cmd_decide(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        device = topic_level(args.device, "DEVICE")
        task_id = topic_level(args.task, "TASK")
        by = decider(args.by)
        body = decision_body(by, args=getattr(args, "args", None), note=getattr(args, "note", None))
        answer = decide(cfg, (device, task_id), args.command, body, args.timeout)
    except EdgeAgentError as exc:
        _print({"error": exc.to_dict()})
        return _exit_code(exc)
    _print(answer)
    return EXIT_OK if answer.get("ok") is True else EXIT_REFUSED


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `held`, `confirm` and `reject` to the top-level parser."""
    held = sub.add_parser("held", help="list pending holds (every device's, or --device's)")
    held.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG_PATH)
    held.add_argument("--device", help="one device's holds only")
    held.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    held.add_argument("--watch", action="store_true", help="print again on every change")
    held.add_argument("--timeout", type=float, default=5.0, help="seconds to reach the broker")
    held.set_defaults(func=cmd_held)
    for command, verb in (("confirm", "dispatch"), ("reject", "drop")):
        p = sub.add_parser(command, help=f"{command} a held action ({verb} it) and wait")
        p.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG_PATH)
        p.add_argument("device", metavar="DEVICE")
        p.add_argument("task", metavar="TASK", help="the held task's id, or latest")
        p.add_argument("--by", help="who decides (default: the local user name)")
        if command == "confirm":
            p.add_argument("--args", help="edited arguments, a JSON object")
        else:
            p.add_argument("--note", help=f"why (at most {MAX_NOTE} characters)")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
        p.set_defaults(func=cmd_decide)
