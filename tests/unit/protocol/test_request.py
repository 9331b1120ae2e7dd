"""Request parsing: typed errors for everything a payload can hold, and nothing else."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        ({"input": "x", "reply_to": "r/\u0001x"}, ErrorCode.INVALID_REQUEST, "control"),
        ({"input": "x", "reply_to": "$SYS/x"}, ErrorCode.INVALID_REQUEST, "'$' topic"),
        ({"input": "x", "reply_to": ""}, ErrorCode.INVALID_REQUEST, "non-empty"),
        ({"input": "x" * 20_000}, ErrorCode.PAYLOAD_TOO_LARGE, "limit"),
        (b'{"input": "x", "reply_to": "r/\\ud800"}', ErrorCode.INVALID_REQUEST, "surrogates"),
        (b'{"input": "x", "deadline_s": NaN}', ErrorCode.INVALID_REQUEST, "not JSON"),
        (b'{"input": "x", "max_tokens": Infinity}', ErrorCode.INVALID_REQUEST, "not JSON"),
        (b'{"input": "x", "max_tokens": 1e308}', ErrorCode.INVALID_REQUEST, "max_tokens"),
        ({"input": "x", "priority": 10**30}, ErrorCode.INVALID_REQUEST, "priority"),
        ({"input": "x", "deadline_s": -1}, ErrorCode.INVALID_REQUEST, "deadline_s"),
        (b"", ErrorCode.INVALID_REQUEST, "not JSON"),
        (b'"just a string"', ErrorCode.INVALID_REQUEST, "JSON object"),
        (b"\xff\xfe{}", ErrorCode.INVALID_REQUEST, "not JSON"),
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


HUGE_INTEGER = b'{"input": "x", "max_tokens": ' + b"9" * 5000 + b"}"
DEEP_LIST = b'{"input": "x", "schema": {"x": ' + b"[" * 3000 + b"]" * 3000 + b"}}"
DEEP_OBJECT = b'{"input": "x", "schema": ' + b'{"a":' * 3000 + b"1" + b"}" * 3001


@pytest.mark.parametrize("payload", [HUGE_INTEGER, DEEP_LIST, DEEP_OBJECT, b"[" * 200_000])
def test_pathological_json_is_invalid_request(payload):
    with pytest.raises(EdgeAgentError) as info:
        parse_request(payload, 1_000_000)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert salvage(payload, 1_000_000) == (None, None)


def test_salvage():
    limit = 1000
    assert salvage(b'{"id": "abc", "reply_to": "r/x", "bogus": 1}', limit) == ("abc", "r/x")
    assert salvage(b'{"id": "a/b", "reply_to": 5}', limit) == (None, None)
    assert salvage(b'{"id": "abc\\n"}', limit) == (None, None)
    assert salvage(b"\xff\xfe", limit) == (None, None)
    assert salvage(b"[1]", limit) == (None, None)
    # Whether a reply may go there is the reply policy's decision, not salvage's.
    assert salvage(b'{"id": "a", "reply_to": "r/#"}', limit) == ("a", "r/#")


def test_an_oversized_payload_is_never_parsed(monkeypatch):
    def no_parsing(*_args, **_kwargs):
        raise AssertionError("parsed")

    monkeypatch.setattr(json, "loads", no_parsing)
    payload = json.dumps({"id": "big", "reply_to": "r/x", "input": "x" * 5000}).encode()
    with pytest.raises(EdgeAgentError) as info:
        parse_request(payload, 1024)
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert salvage(payload, 1024) == (None, None)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_a_typed_error(payload):
    with contextlib.suppress(EdgeAgentError):  # a typed error is fine; anything else fails
        parse_request(payload, 200)
    task_id, reply_to = salvage(payload, 200)
    assert task_id is None or isinstance(task_id, str)
    assert reply_to is None or isinstance(reply_to, str)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "id",
        "input",
        "messages",
        "schema",
        "action",
        "actions",
        "max_tokens",
        "deadline_s",
        "priority",
        "reply_to",
        "overflow",
        "bogus",
    ]
)


@settings(max_examples=100, deadline=None, database=None)
@given(st.dictionaries(FIELDS, JSON_VALUES, max_size=6))
def test_any_json_object_gives_a_request_or_a_typed_error(body):
    payload = json.dumps(body).encode()
    codes = []
    try:
        parse_request(payload, 100_000)
    except EdgeAgentError as exc:
        codes.append(exc.code)
    assert set(codes) <= {ErrorCode.INVALID_REQUEST}
