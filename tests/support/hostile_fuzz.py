"""A hypothesis generator of hostile task messages: valid tasks, mutated.

Each drawn case starts from one of the valid tasks of support/hostile.py and applies one
mutation: a field set to any JSON value or to an absurd number, a field dropped, an
unknown field, a random inline schema (refs, patterns, enums, nesting), hostile input
text, a random reply address (`reply_to` or the MQTT v5 Response Topic), a non-object
wrapper, or raw byte edits of the serialized payload. The id stays `@ID@` unless the id
itself is mutated, so a reply on the errors topic can be traced.

What the daemon must answer cannot be predicted exactly for a random mutation: any
documented code but INTERNAL. Where the reply goes can: to the errors topic exactly when
the reply address drawn is one the reply policy refuses.

`draw_cases(n, seed=...)` runs hypothesis as a generator (no test, no shrinking). The seed
fixes the cases for one test selection; hypothesis does not promise the same cases in
another process context, so a failure names the payload it was about.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from edgeagent.protocol.reply_policy import ReplyPolicy
from support.hostile import BAD_REPLY_TOPICS, DOCUMENTED, ID, VALID_TASKS, Case

POLICY = ReplyPolicy(fleet_prefix="edgeagent", device="dev1")
FIELDS = (
    "id", "input", "messages", "schema", "action", "actions", "max_tokens", "deadline_s",
    "priority", "overflow",
)  # fmt: skip
# Valid tasks stay short on the real model, whatever the mutation left of max_tokens.
MAX_TOKENS_CAP = 48

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)

FORGED = [
    "<|im_start|>",
    "<|im_end|>",
    "system\n",
    "assistant\n",
    "<|endoftext|>",
    "\x00",
    "\ud800",
]
texts = st.one_of(
    st.text(min_size=1, max_size=200),
    st.lists(st.sampled_from(FORGED) | st.text(max_size=10), min_size=1, max_size=20).map("".join),
)


def _topic_char_ok(char: str, *, broker_safe: bool) -> bool:
    """Characters mosquitto forwards in a Response Topic (it disconnects a sender of the
    others, and paho cannot even encode a surrogate)."""
    if not broker_safe:
        return True
    code = ord(char)
    return not (
        code < 0x20
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xDFFF
        or 0xFDD0 <= code <= 0xFDEF
        or (code & 0xFFFE) == 0xFFFE
    )


def topics(*, broker_safe: bool) -> st.SearchStrategy[str]:
    known = [t for _, t, forwarded in BAD_REPLY_TOPICS if forwarded or not broker_safe]
    level_chars = st.characters(codec="utf-8" if broker_safe else None).filter(
        lambda c: _topic_char_ok(c, broker_safe=broker_safe)
    )
    level = st.text(alphabet=st.sampled_from("ab+#$/ ") | level_chars, max_size=12)
    heads = st.sampled_from(
        [
            "replies",
            "edgeagent/dev1",
            "edgeagent/dev2",
            "edgeagent",
            "$SYS",
            "",
            "other",
            "replies/ok",
        ]
    )
    built = st.tuples(heads, st.lists(level, max_size=4)).map(lambda t: "/".join([t[0], *t[1]]))
    return st.sampled_from(known) | built


def schemas() -> st.SearchStrategy[Any]:
    keywords = st.sampled_from(
        ["type", "enum", "const", "pattern", "$ref", "minimum", "maxLength", "format", "$schema"]
    )
    leaf_values = st.one_of(
        st.sampled_from(["string", "integer", "object", "array", "number", "boolean", "null"]),
        st.sampled_from(["^(a+)+$", "(a|aa)*b", "\\p{Letter}+", "(", "(a*)\\1", "[^\\d]{2,}"]),
        st.sampled_from(["#", "#/$defs/a", "http://example.com/s", "file:///etc/passwd", "#/x"]),
        st.sampled_from(["date-time", "email", "x-custom", "uri"]),
        st.lists(json_values, max_size=6),
        json_values,
    )
    leaf = st.dictionaries(keywords, leaf_values, max_size=3)
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.fixed_dictionaries(
                {
                    "type": st.just("object"),
                    "properties": st.dictionaries(st.text(max_size=6), inner, max_size=4),
                }
            ),
            st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
            st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=4)}),
            st.fixed_dictionaries(
                {
                    "$defs": st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
                    "$ref": st.sampled_from(["#/$defs/a", "#/$defs/b"]),
                }
            ),
        ),
        max_leaves=12,
    )


# Built once: hypothesis strategies are cheap to draw from, not to build.
TOPICS = {safe: topics(broker_safe=safe) for safe in (False, True)}
SCHEMAS = schemas()


def _serialize(body: Any) -> bytes:
    text = json.dumps(body, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode("ascii")


def _cap(body: Any) -> Any:
    """Keep a task that is still valid short on the model."""
    if isinstance(body, dict):
        tokens = body.get("max_tokens")
        if type(tokens) is int and MAX_TOKENS_CAP < tokens <= 8192:
            body["max_tokens"] = MAX_TOKENS_CAP
    return body


KINDS = (
    "set", "drop", "unknown", "number", "huge digits", "schema", "text", "reply_to",
    "response topic", "wrap", "bytes",
)  # fmt: skip


def _mutate_body(draw: st.DrawFn, kind: str, body: dict[str, Any]) -> Any:
    """The task with one field-level mutation (the body itself may be replaced)."""
    if kind == "set":
        body[draw(st.sampled_from(FIELDS))] = draw(json_values)
    elif kind == "drop":
        body.pop(draw(st.sampled_from(sorted(body))), None)
    elif kind == "unknown":
        name = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS))
        body[name] = draw(json_values)
    elif kind == "number":
        body[draw(st.sampled_from(["max_tokens", "deadline_s", "priority"]))] = draw(
            st.integers(min_value=-(10**30), max_value=10**30)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.sampled_from([0, -1, 8193, 10**9, 1e-9, 1e308, 100, 101, -100, -101])
        )
    elif kind == "schema":
        body.pop("action", None)
        body.pop("actions", None)
        body["schema"] = draw(SCHEMAS)
    elif kind == "text" and "input" in body:
        body["input"] = draw(texts)
    elif kind == "text":
        role = draw(st.sampled_from(["system", "user"]))
        body["messages"] = [
            {"role": role, "content": draw(texts)},
            {"role": "user", "content": draw(texts)},
        ]
    elif kind == "wrap":
        return draw(st.sampled_from([[body], {"task": body}, json.dumps(body), [[body]]]))
    return body


def _huge_digits(draw: st.DrawFn, body: dict[str, Any]) -> bytes:
    """A field set to an integer of 4,000 to 6,000 digits (Python refuses > 4,300)."""
    name = draw(st.sampled_from(["max_tokens", "deadline_s", "priority", "schema"]))
    digits = draw(st.integers(min_value=4000, max_value=6000))
    text = json.dumps({k: v for k, v in body.items() if k != name})
    return f'{text[:-1]}, "{name}": 1{"0" * (digits - 1)}}}'.encode()


def _edit_bytes(draw: st.DrawFn, raw: bytes) -> bytes:
    """Up to six byte insertions, deletions or replacements."""
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, len(raw)), st.integers(0, 255), st.sampled_from("idr")),
            min_size=1,
            max_size=6,
        )
    )
    data = bytearray(raw)
    for position, byte, op in edits:
        at = min(position, len(data))
        if op == "i":
            data[at:at] = bytes([byte])
        elif op == "d":
            del data[at : at + 1]
        else:
            data[at : at + 1] = bytes([byte])
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn, *, broker_safe: bool) -> Case:
    body: dict[str, Any] = {"id": ID, **draw(st.sampled_from(VALID_TASKS))}
    kind = draw(st.sampled_from(KINDS))
    response_topic = None
    to_errors = False
    if kind == "huge digits":
        raw = _huge_digits(draw, body)
    elif kind == "reply_to":
        body["reply_to"] = draw(TOPICS[False])  # in the payload: any text is fine
        # An empty reply_to names no address: its error goes to the sender's other one.
        to_errors = body["reply_to"] != "" and POLICY.refusal(body["reply_to"]) is not None
        raw = _serialize(_cap(body))
    elif kind == "response topic":
        response_topic = draw(TOPICS[broker_safe])
        to_errors = POLICY.refusal(response_topic) is not None
        raw = _serialize(_cap(body))
    else:
        raw = _serialize(_cap(_mutate_body(draw, kind, body)))
    if kind == "bytes":
        raw = _edit_bytes(draw, raw)
    return Case(
        f"fuzz: {kind}",
        raw,
        DOCUMENTED,
        response_topic=response_topic,
        to_errors=to_errors,
        tags=("fuzz",),
    )


def draw_cases(count: int, *, seed: int, broker_safe: bool) -> list[Case]:
    """`count` mutated tasks, drawn from `seed`."""
    drawn: list[Case] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(broker_safe=broker_safe))
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    # hypothesis may draw fewer than max_examples when examples repeat; top up in order.
    while len(drawn) < count and drawn:
        drawn.append(replace(drawn[len(drawn) % len(drawn)], name=drawn[0].name))
    return drawn[:count]
