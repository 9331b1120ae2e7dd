"""The fleet view's rows and table, from retained status and heartbeat messages."""

from __future__ import annotations

import json

from edgeagent.cli.fleet import Seen, make_rows, render_table, rows_json

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


def test_rows_are_sorted_and_carry_the_heartbeat():
    seen = {
        "pi-b": Seen("online", beat("pi-b", board={"temp_c": 52.5})),
        "pi-a": Seen("online", beat("pi-a")),
    }
    rows = make_rows(seen, now=NOW, heartbeat_s=10)
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
    seen = {
        "gone": Seen("offline", beat("gone", age=900)),
        "hung": Seen("online", beat("hung", age=45)),
        "new": Seen("online", None),
    }
    rows = {r.device: r for r in make_rows(seen, now=NOW, heartbeat_s=10)}
    assert (rows["gone"].online, rows["gone"].state, rows["gone"].stale) == (
        False,
        "offline",
        False,
    )
    assert rows["hung"].stale  # online, but no heartbeat for more than 3 periods
    assert rows["new"].stale
    assert rows["new"].queue is None


def test_table_has_a_header_and_one_line_per_device():
    seen = {
        "pi-a": Seen("online", beat("pi-a", board={"temp_c": 48.0})),
        "pi-b": Seen("offline", beat("pi-b", age=600)),
        "pi-c": Seen("online", beat("pi-c", age=40)),
    }
    table = render_table(make_rows(seen, now=NOW, heartbeat_s=10)).splitlines()
    assert table[0].split() == [
        "DEVICE", "ONLINE", "STATE", "QUEUE", "TOK/S", "BUDGET", "MEM", "MiB", "TEMP", "LAST", "SEEN",
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
    seen = {"pi-a": Seen("online", beat("pi-a"))}
    (row,) = json.loads(rows_json(make_rows(seen, now=NOW, heartbeat_s=10)))
    assert row["device"] == "pi-a"
    assert row["online"] is True
    assert row["queue"] == "1/16"
    assert set(row) == {
        "device", "online", "state", "queue", "tokens_per_s", "budget", "memory_mb",
        "temp_c", "last_seen_s", "stale",
    }  # fmt: skip


def test_empty_fleet_is_just_the_header():
    assert render_table([]).count("\n") == 1
