"""Untrusted confirm and reject messages: every one typed, bounded and acknowledged, and
nothing published outside the device's own topics and the allowed reply prefixes."""

from __future__ import annotations

import pytest
from support import aio
from support.hold_parts import ACTION, ERRORS, TOPICS, HoldParts, held_task

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.request import parse_request
from edgeagent.service.holds.commands import MAX_COMMAND_BYTES

HELD = "edgeagent/dev1/held/t1/confirm"


def run(coro):
    return aio.run(coro, 30)


def published_where_allowed(parts: HoldParts) -> bool:
    return all(p.topic.startswith(("edgeagent/dev1/", "replies/")) for p in parts.link.published)


BAD = [
    (b"not json", "INVALID_REQUEST"),
    (b"\xff\xfe", "INVALID_REQUEST"),
    (b'{"by": NaN}', "INVALID_REQUEST"),
    (b"[" * 8000 + b"]" * 8000, "INVALID_REQUEST"),
    (b'{"by": ' + b"[" * 5000 + b"]" * 5000 + b"}", "INVALID_REQUEST"),
    (b'["by", "alice"]', "INVALID_REQUEST"),
    (b'"alice"', "INVALID_REQUEST"),
    (b"{}", "INVALID_REQUEST"),
    (b'{"by": 1}', "INVALID_REQUEST"),
    (b'{"by": ""}', "INVALID_REQUEST"),
    (b'{"by": "' + b"a" * 65 + b'"}', "INVALID_REQUEST"),
    (b'{"by": "a\\nb"}', "INVALID_REQUEST"),
    (b'{"by": "a\\u0000b"}', "INVALID_REQUEST"),
    (b'{"by": "\\ud800"}', "INVALID_REQUEST"),
    (b'{"by": "alice", "admin": true}', "INVALID_REQUEST"),
    (b'{"by": "alice", "args": [1, 2]}', "INVALID_REQUEST"),
    (b'{"by": "alice", "args": "zone 3"}', "INVALID_REQUEST"),
    (b'{"by": "alice", "note": "only for reject"}', "INVALID_REQUEST"),
    (b'{"by": "alice", "task_id": "t2"}', "INVALID_REQUEST"),
    (b'{"by": "alice", "task_id": 7}', "INVALID_REQUEST"),
    (b'{"by": "alice", "args": {"zone": 1e999, "minutes": 1}}', "INVALID_REQUEST"),
    (b'{"by": "alice", "args": {"zone": 3, "minutes": ' + b"9" * 5000 + b"}}", "INVALID_REQUEST"),
    (b'{"by": "alice", "args": {"zone": 3, "minutes": 2.5}}', "INVALID_REQUEST"),
    (
        b'{"by": "alice", "args": {"zone": 3, "minutes": 20, "' + b"k" * 100 + b'": 1}}',
        "INVALID_REQUEST",
    ),
    (
        b'{"by": "alice", "args": {"zone": 3, "minutes": 20' + b', "a": 1' * 2000 + b"}}",
        "INVALID_REQUEST",
    ),
    (b'{"by": "' + b"a" * (MAX_COMMAND_BYTES) + b'"}', "PAYLOAD_TOO_LARGE"),
]


def test_bad_commands_get_typed_errors_and_leave_the_hold_pending(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        parts.link.deliver(held_task())
        await parts.held()
        messages = [parts.link.deliver(payload, topic=HELD) for payload, _ in BAD]
        await parts.link.wait_until(lambda: all(m in parts.link.acked for m in messages))
        await parts.link.wait_for_publish(ERRORS, len(BAD))
        codes = [e["error"]["code"] for e in parts.link.bodies(ERRORS)]
        assert codes == [code for _, code in BAD]
        assert parts.link.on(ACTION) == []
        assert parts.holds.heartbeat()["held"] == 1
        assert published_where_allowed(parts)
        parts.confirm()  # the hold still answers a good confirm
        await parts.link.wait_for_publish(ACTION)
        await parts.crash()

    run(scenario())


@pytest.mark.parametrize(
    "level",
    ["a b", "t1%", "x" * 129, "latest2", "\u00e9t\u00e9"],
)
def test_a_topic_level_that_is_no_task_id_is_refused(tmp_path, level):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        message = parts.confirm(level)
        await parts.link.wait_until(lambda: message in parts.link.acked)
        (error,) = parts.link.bodies(ERRORS)
        assert error["error"]["code"] in {"INVALID_REQUEST", "HOLD_UNKNOWN"}
        assert published_where_allowed(parts)
        await parts.crash()

    run(scenario())


@pytest.mark.parametrize(
    "response_topic",
    [
        "edgeagent/dev1/actions/set_irrigation",
        "edgeagent/dev2/tasks",
        "$SYS/broker",
        "elsewhere/x",
        "replies/#",
        "",
    ],
)
def test_a_refused_response_topic_resolves_nothing_and_gets_nothing(tmp_path, response_topic):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        parts.link.deliver(held_task())
        await parts.held()
        message = parts.confirm(response_topic=response_topic, correlation_data=b"x")
        await parts.link.wait_until(lambda: message in parts.link.acked)
        (error,) = parts.link.bodies(ERRORS)
        assert error["error"]["code"] == "INVALID_REQUEST"
        assert "response_topic" in error["error"]["message"]
        assert parts.link.on(response_topic) == []
        assert parts.link.on(ACTION) == []
        assert parts.holds.heartbeat()["held"] == 1
        assert published_where_allowed(parts)
        await parts.crash()

    run(scenario())


def test_a_flood_of_confirms_for_unknown_holds_is_answered_and_acknowledged(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        messages = [parts.confirm(f"ghost-{n}", response_topic="replies/flood") for n in range(500)]
        await parts.link.wait_until(
            lambda: all(m in parts.link.acked for m in messages), within_s=20
        )
        codes = [e["error"]["code"] for e in parts.link.bodies(ERRORS)]
        assert len(codes) == len(messages)
        # The fake broker ignores Receive Maximum: beyond the desk's bounded intake, BUSY.
        assert set(codes) == {"HOLD_UNKNOWN", "BUSY"}
        assert len(parts.link.on("replies/flood")) == codes.count("HOLD_UNKNOWN")
        assert published_where_allowed(parts)
        assert await parts.holds.outbox.wait_idle(within_s=1)  # nothing left running
        await parts.crash()

    run(scenario())


def test_an_oversized_command_dropped_by_the_link_is_refused_unread(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        parts.link.max_payload_bytes = 1024
        message = parts.confirm(body={"by": "a" * 5000})
        await parts.link.wait_until(lambda: message in parts.link.acked)
        (error,) = parts.link.bodies(ERRORS)
        assert error["error"]["code"] == "PAYLOAD_TOO_LARGE"
        await parts.crash()

    run(scenario())


def test_latest_is_not_a_task_id():
    with pytest.raises(EdgeAgentError) as refused:
        parse_request(b'{"id": "latest", "input": "x"}', 4096)
    assert refused.value.code is ErrorCode.INVALID_REQUEST


def test_a_redelivery_of_a_command_that_resolved_nothing_is_answered_again(tmp_path):
    async def scenario():
        parts = await HoldParts(tmp_path / "j.sqlite3").start()
        message = parts.confirm("ghost")
        await parts.link.wait_until(lambda: message in parts.link.acked)
        again = parts.link.redeliver(message)
        await parts.link.wait_until(lambda: again in parts.link.acked)
        assert [e["error"]["code"] for e in parts.link.bodies(ERRORS)] == ["HOLD_UNKNOWN"] * 2
        assert TOPICS.held("ghost") not in {p.topic for p in parts.link.published}
        await parts.crash()

    run(scenario())
