"""The fleet view's rows and table, from retained status and heartbeat messages."""

from __future__ import annotations

import json

import pytest

from edgeagent.cli.fleet import Seen, make_rows, render_table, rows_json
from edgeagent.cli.fleet_heartbeat import MAX_HEARTBEAT_DEPTH, read_heartbeat
from edgeagent.cli.terminal_text import printable

NOW = 1_764_403_300.0


def beat(device, *, age=2.0, state="serving", **extra):
    return {
        "device": device,
        "state": state,
        "ts": NOW - age,
        "queue": {"depth": 1, "capacity": 16},
        "tasks": {"done": 3, "failed": 0, "busy": 0},
        "tokens_per_s": 11.84,
        "context": {"n_ctx": 2048, "budget": 3072, "available_mb": 1210.4},
        "memory": {"rss_mb": 600.0, "host_available_mb": 2000.0},
        **extra,
    }


def seen(status, heartbeat):
    """What the view keeps of a device's retained status and heartbeat (a dict or bytes)."""
    payload = heartbeat if isinstance(heartbeat, bytes) else json.dumps(heartbeat).encode()
    return Seen(status, *read_heartbeat(b"" if heartbeat is None else payload))


def test_rows_are_sorted_and_carry_the_heartbeat():
    devices = {
        "pi-b": seen("online", beat("pi-b", board={"temp_c": 52.5})),
        "pi-a": seen("online", beat("pi-a")),
    }
    rows = make_rows(devices, now=NOW, heartbeat_s=10)
    assert [r.device for r in rows] == ["pi-a", "pi-b"]
    b = rows[1]
    assert (b.online, b.state, b.queue, b.tokens_per_s, b.budget) == (
        True,
        "serving",
        "1/16",
        11.84,
        3072,
    )
    assert (b.memory_mb, b.temp_c, b.last_seen_s, b.stale) == (1210.4, 52.5, 2.0, False)
    assert rows[0].temp_c is None  # not a Pi: no temperature


def test_offline_and_stale_devices():
    devices = {
        "gone": seen("offline", beat("gone", age=900)),
        "hung": seen("online", beat("hung", age=45)),
        "new": seen("online", None),
    }
    rows = {r.device: r for r in make_rows(devices, now=NOW, heartbeat_s=10)}
    assert (rows["gone"].online, rows["gone"].state, rows["gone"].stale) == (
        False,
        "offline",
        False,
    )
    assert rows["hung"].stale  # online, but no heartbeat for more than 3 periods
    assert rows["new"].stale
    assert rows["new"].queue is None


def test_table_has_a_header_and_one_line_per_device():
    devices = {
        "pi-a": seen("online", beat("pi-a", board={"temp_c": 48.0})),
        "pi-b": seen("offline", beat("pi-b", age=600)),
        "pi-c": seen("online", beat("pi-c", age=40)),
    }
    table = render_table(make_rows(devices, now=NOW, heartbeat_s=10)).splitlines()
    assert table[0].split() == [
        "DEVICE", "ONLINE", "STATE", "QUEUE", "TOK/S", "BUDGET", "MEM", "MiB", "TEMP", "LAST", "SEEN",
        "NOTE",
    ]  # fmt: skip
    assert table[1].split() == [
        "pi-a", "yes", "serving", "1/16", "11.8", "3072", "1210", "48.0°C", "2s", "ago",
    ]  # fmt: skip
    assert table[2].split()[:3] == ["pi-b", "no", "offline"]
    assert table[2].endswith("10m ago")
    assert "serving (stale)" in table[3]
    # Columns line up: every line has its STATE cell where the header has it.
    column = table[0].index("STATE")
    assert all(line[column - 2 : column] == "  " for line in table)


def test_json_is_a_list_of_rows():
    devices = {"pi-a": seen("online", beat("pi-a"))}
    (row,) = json.loads(rows_json(make_rows(devices, now=NOW, heartbeat_s=10)))
    assert row["device"] == "pi-a"
    assert row["online"] is True
    assert row["queue"] == "1/16"
    assert set(row) == {
        "device", "online", "state", "queue", "tokens_per_s", "budget", "memory_mb",
        "temp_c", "last_seen_s", "stale", "problem",
    }  # fmt: skip


def test_empty_fleet_is_just_the_header():
    assert render_table([]).count("\n") == 1


# -- what another device may send: nothing it publishes reaches the terminal raw ----------

HOSTILE_TEXT = "\x1b[2J\x1b]0;pwned\x07\u202eevil\x9b31m\u2028row\r\n"


def test_printable_escapes_controls_c1_bidi_and_separators():
    shown = printable(HOSTILE_TEXT, 200)
    assert shown == "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\x9b31m\\u2028row\\x0d\\x0a"
    assert all(c.isprintable() for c in shown)
    assert printable("ok-Zone 3 °C 霜") == "ok-Zone 3 °C 霜"  # plain text is left alone
    assert printable("x" * 100, 10) == "x" * 9 + "…"


def test_hostile_state_and_device_id_are_escaped_in_table_and_json():
    devices = {"pi\u202ea": seen("online", beat("pi-a", state=HOSTILE_TEXT))}
    rows = make_rows(devices, now=NOW, heartbeat_s=10)
    for text in (render_table(rows), rows_json(rows)):
        assert "\x1b" not in text
        assert "\u202e" not in text
        assert "\x9b" not in text
        assert "\u2028" not in text
    assert render_table(rows).count("\n") == 2  # no injected line
    assert rows[0].state is not None
    assert rows[0].state.startswith("\\x1b[2J")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("tokens_per_s", "fast", "tokens_per_s"),
        ("tokens_per_s", True, "tokens_per_s"),
        ("tokens_per_s", -1, "tokens_per_s"),
        ("queue", "full", "queue"),
        ("queue", {"depth": "1", "capacity": 16}, "queue.depth"),
        ("context", {"budget": 10**4000, "available_mb": 10.0}, "context.budget"),
        ("board", {"temp_c": [1]}, "board.temp_c"),
        ("ts", "yesterday", "ts"),
        ("state", {"nested": 1}, "state"),
    ],
)
def test_a_bad_field_is_dropped_and_named_and_the_rest_shown(field, value, named):
    body = beat("pi-a") | {field: value}
    payload = json.dumps(body).encode() if field != "context" else _big_int_beat(body)
    devices = {"pi-a": seen("online", payload), "pi-b": seen("online", beat("pi-b"))}
    rows = make_rows(devices, now=NOW, heartbeat_s=10)
    assert rows[0].problem == f"bad heartbeat field: {named}"
    assert rows[0].state == ("serving" if field != "state" else None)
    assert rows[1].problem is None
    assert rows[1].tokens_per_s == 11.84
    assert "bad heartbeat field" in render_table(rows).splitlines()[1]
    assert json.loads(rows_json(rows))[0]["problem"] == rows[0].problem


def _big_int_beat(body):
    # json.dumps refuses ints over 4,300 digits; the bytes a device could send do not.
    text = json.dumps(body | {"context": {"budget": 0, "available_mb": 10.0}})
    return text.replace('"budget": 0', '"budget": ' + "9" * 4000).encode()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "heartbeat of 200000 bytes, over 16384"),
        # Deeper than json.loads recurses (RecursionError), within the size limit.
        (b"[" * 5_000 + b"]" * 5_000, f"nested deeper than {MAX_HEARTBEAT_DEPTH} levels"),
        (b'{"a": ' * 10 + b"1" + b"}" * 10, f"nested deeper than {MAX_HEARTBEAT_DEPTH} levels"),
        (b'{"state": "' + b"x" * 20_000 + b'"}', "over 16384"),
        (b"\xff\xfe", "not JSON"),
        (b'{"tokens_per_s": NaN}', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_an_unreadable_heartbeat_marks_the_row(payload, why):
    devices = {"pi-a": seen("online", payload)}
    (row,) = make_rows(devices, now=NOW, heartbeat_s=10)
    assert row.problem is not None
    assert why in row.problem
    assert (row.online, row.stale, row.tokens_per_s) == (True, True, None)


def test_brackets_inside_strings_do_not_count_as_nesting():
    body = beat("pi-a", state='[[[[[[[[[[{{{{{{{{{{\\"')
    heartbeat, problem = read_heartbeat(json.dumps(body).encode())
    assert problem is None
    assert heartbeat is not None
    assert heartbeat.state == body["state"]
