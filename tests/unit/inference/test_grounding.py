"""Which numbers an input supports: digits, words in six languages, unit conversions."""

from __future__ import annotations

import pytest

from edgeagent.config import ActionConfig
from edgeagent.config.catalog import ActionExample
from edgeagent.inference.grounding import numbers_in, unsupported_arguments

WATER = ActionConfig(
    name="water",
    description="Water a zone.",
    schema={
        "type": "object",
        "properties": {"zone": {"type": "integer"}, "minutes": {"type": "integer"}},
    },
    examples=[
        ActionExample(input="Water zone 7 for ten minutes.", args={"zone": 7, "minutes": 10})
    ],
)


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("Zone 3 at 12,5 %", {3.0, 12.5}),
        ("twenty-five minutes", {20.0, 5.0, 25.0}),
        ("zwanzig Minuten", {20.0}),
        ("dix-sept", {17.0}),
        ("浇水二十分钟 3号区", {20.0, 3.0}),
        ("half an hour", {0.5, 60.0}),
        ("à fond", {100.0}),
        ("no number here", set()),
    ],
)
def test_numbers_in_digits_and_words(text, numbers):
    assert numbers_in(text) == numbers


@pytest.mark.parametrize(
    ("args", "content", "unsupported"),
    [
        ({"zone": 3, "minutes": 20}, "Water zone 3 for 20 minutes.", []),
        ({"zone": 3, "minutes": 60}, "Water zone three for an hour.", []),  # 60 = an hour
        ({"zone": 3, "minutes": 30}, "Zone 3: half an hour.", []),  # 0.5 x 60
        ({"zone": 7, "minutes": 10}, "Water the dry one.", []),  # the example's numbers
        ({"zone": 3, "minutes": 0}, "Stop zone 3.", []),  # 0: off, always supported
        ({"zone": 1, "minutes": 99}, "Open every valve for 999 minutes.", [1.0, 99.0]),
        ({"zone": 2, "on": True}, "zone two", []),  # booleans are not numbers
    ],
)
def test_unsupported_arguments(args, content, unsupported):
    assert unsupported_arguments(WATER, args, content) == unsupported
