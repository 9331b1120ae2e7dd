from __future__ import annotations

import json

import pytest

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.request import parse_request, salvage


def parse(body, limit=10_000):
    return parse_request(body if isinstance(body, bytes) else json.dumps(body).encode(), limit)


def test_minimal_request_gets_an_id():
    req = parse({"input": "hello"})
    assert len(req.id) == 32
    assert req.action_names is None
    assert req.content == "hello"


def test_action_and_actions():
    assert parse({"input": "x", "action": "a"}).action_names == ["a"]
    assert parse({"input": "x", "actions": ["a", "b"]}).action_names == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (b"{not json", ErrorCode.INVALID_REQUEST, "not JSON"),
        (b"[1, 2]", ErrorCode.INVALID_REQUEST, "JSON object"),
        ({"input": "x", "colour": 1}, ErrorCode.INVALID_REQUEST, "colour"),
        ({"input": 5}, ErrorCode.INVALID_REQUEST, "input"),
        (
            {"messages": [{"role": "user", "content": "x"}], "input": "y"},
            ErrorCode.INVALID_REQUEST,
            "exactly one",
        ),
        ({"input": "x", "schema": {}, "action": "a"}, ErrorCode.INVALID_REQUEST, "at most one"),
        ({"input": "x", "max_tokens": 0}, ErrorCode.INVALID_REQUEST, "max_tokens"),
        ({"input": "x", "id": "a/b"}, ErrorCode.INVALID_REQUEST, "id"),
        ({"input": "x", "reply_to": "a/#"}, ErrorCode.INVALID_REQUEST, "reply_to"),
        ({"input": "x" * 20_000}, ErrorCode.PAYLOAD_TOO_LARGE, "limit"),
    ],
)
def test_bad_requests_are_typed(body, code, fragment):
    with pytest.raises(EdgeAgentError) as info:
        parse(body)
    assert info.value.code is code
    assert fragment in info.value.message


def test_fingerprint_ignores_id_and_reply_address():
    a = parse({"id": "1", "input": "x", "reply_to": "r/1"})
    b = parse({"id": "2", "input": "x"})
    c = parse({"id": "1", "input": "y"})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_salvage():
    assert salvage(b'{"id": "abc", "reply_to": "r/x", "bogus": 1}') == ("abc", "r/x")
    assert salvage(b'{"id": "a/b", "reply_to": "r/#"}') == (None, None)
    assert salvage(b"\xff\xfe") == (None, None)
