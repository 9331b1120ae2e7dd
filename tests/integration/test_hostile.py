"""Hostile input against the live daemon: real SmolLM2, real mosquitto, `edgeagent run`.

The fixed corpus of support/hostile.py (every hostile payload and reply address of the
threat model that a broker carries at all) and hypothesis mutations of valid tasks (support/hostile_fuzz.py),
with valid tasks interleaved, go to one daemon. The verdict (support/hostile_live.py):

* the daemon never restarts or reconnects: same process, one model load, one connection,
  and mosquitto logs no disconnect of its client;
* every task message the broker delivered was acknowledged (mosquitto's own log: every
  PUBLISH to the daemon's client has its PUBACK), and on MQTT v5 the broker dropped the
  payloads over the Maximum Packet Size instead of sending them;
* every message gets exactly one reply, at the sender's address or, when the request
  named a refused one, on the errors topic; with the documented code (the corpus names
  it; a mutation may get any documented code but INTERNAL); every valid task is answered
  "ok";
* nothing is published outside the device's own topics and the allowed reply prefix
  `replies` (a `#` subscriber sees everything; the test publishes only on the task topic,
  and mosquitto's log names the daemon's client on each of its publishes), and the
  device's actions topics carry action messages only;
* beside it, hostile devices (support/hostile_devices.py) retain hostile heartbeats and
  statuses, and the real `edgeagent status --fleet` runs a few times during the run: exit
  0, no traceback, no raw control character, the real device listed with its real state;
* the daemon runs with Home Assistant discovery: its discovery configs stay exactly its
  own, and only real action answers move the retained `last_action`; the catalog has a
  floored action and dispatched ones: a held action is never published, and requests
  naming one action are not dispatched under the whole catalog's confidence
  (support/hostile_surfaces.py);
* the daemon's RSS grows by at most what it declares bounded — the prefix cache's share
  its memory governor gave out (its log) — plus RSS_GROWTH_MIB over the run, and a long
  run levels off (the highest RSS of its last quarter is at most RSS_LAST_QUARTER_MIB
  above the highest before it).

The short version runs in the suite; `pytest -m fuzz tests/integration/test_hostile.py`
runs the long one (>= 10,000 payloads; EDGEAGENT_HOSTILE_PAYLOADS=N runs N instead) and
prints its figures.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonProcess, write_config
from support.hostile import VALID_TASKS, Case, corpus, interleave, valid_case
from support.hostile_devices import HostileFleet, heartbeat_states
from support.hostile_fuzz import draw_cases
from support.hostile_live import DAEMON_CLIENT, BrokerLog, Driver, Outcome, Watcher
from support.hostile_surfaces import (
    CATALOG_TOML,
    discovery_problems,
    expected_discovery,
    forgery_cases,
    hold_cases,
    hold_problems,
    last_action_problems,
    retained,
    spread,
)
from support.mosquitto import Mosquitto

from edgeagent.config import load_config

pytestmark = [pytest.mark.model, pytest.mark.mqtt, pytest.mark.slow]

MAX_PAYLOAD = 256 * 1024  # the default [mqtt] max_payload_bytes
# The daemon's RSS, from its level after the warm-up, grows while it takes the hostile
# payloads by what it holds bounded:
# * the engine's prefix cache fills with the KV states of the many contracts hostile
#   schemas bring, up to the share the memory governor gives it (128 MiB by default,
#   inference/prefix_cache.py; its "memory budget" log line): the test reads that share
#   from the daemon's log and allows it in full (`prefix_cache_share_mib`);
# * beyond it, at most RSS_GROWTH_MIB: the rest of the heap in use stays flat
#   (admission's 64 compiled contracts, the receive window's 40 parsed messages). Saved
#   states live in mappings of their own (prefix_cache._off_heap), so an evicted state is
#   given back; on glibc's heap its holes stayed resident (free heap 11 -> 72 MiB over
#   10,653 payloads, docs/security.md, "Hostile input: measured").
RSS_GROWTH_MIB = 48
# A long run must level off (no leak): the highest RSS of its last quarter may be at most
# this above the highest before it. The last quarter, because the cache fills over the
# first few thousand contracts (~1,600 payloads for 128 MiB); highest readings,
# because the engine recreates its context with one KV stream when a task runs alone (360
# MiB less for 8 x 2,048 tokens of SmolLM2) and with 8 again for a batch.
RSS_LAST_QUARTER_MIB = 16
_CACHE_SHARE = re.compile(r"([\d.]+) (B|KiB|MiB|GiB) prefix cache")
_MIB = {"B": 2.0**-20, "KiB": 2.0**-10, "MiB": 1.0, "GiB": 1024.0}
# Valid tasks first, several at a time (the driver's window): the model's compute buffers
# and the engine's batch contexts are allocated by them, not by hostile input.
WARMUP = [valid_case(n) for n in range(3 * len(VALID_TASKS))]
SECTIONS: dict[str, dict[str, Any]] = {
    "model": {"max_tokens": 32},  # valid tasks stay short on the small model
    # Valid tasks may wait behind several long hostile prompts (650-850 tokens, 10-25 s
    # each on a loaded 2-core machine); the deadline checks that they end, not speed.
    "queue": {"default_deadline_s": 120},
    "homeassistant": {"discovery": True},
}
# The long run's size: 10,000 payloads, or EDGEAGENT_HOSTILE_PAYLOADS (a shorter run when
# the machine cannot give it the time).
LONG_PAYLOADS = int(os.environ.get("EDGEAGENT_HOSTILE_PAYLOADS", "10000"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    broker.start()
    yield broker
    broker.stop()


class Live:
    """A daemon, the `#` watcher and the broker's log, and the verdict on a run."""

    def __init__(self, tmp_path: Path, model_path: Path, broker: Mosquitto, *, v5: bool) -> None:
        self.broker = broker
        self.v5 = v5
        self.watcher = Watcher(broker.port)
        protocol = {"protocol": "5" if v5 else "3.1.1"}
        cfg = write_config(
            tmp_path / "hostile.toml",
            model=model_path,
            port=broker.port,
            catalog=False,
            sections={**SECTIONS, "mqtt": protocol},
        )
        with cfg.open("a", encoding="utf-8") as toml:
            toml.write(CATALOG_TOML)  # a floored action, dispatched ones
        self.discovery = expected_discovery(load_config(cfg))
        self.fleet = HostileFleet(broker.port, cfg, "dev1")
        self.fleet.publish_round()  # retained before the daemon's own
        self.daemon = DaemonProcess(cfg, tmp_path / "hostile.log")
        self.daemon.start()
        self.daemon.wait_event("mqtt connected")
        assert self.daemon.proc is not None
        self.pid = self.daemon.proc.pid
        self.log = BrokerLog(broker.workdir / "mosquitto.log", DAEMON_CLIENT)

    def run(self, cases: list[Case], *, window: int = 8, views: int = 0) -> Outcome:
        """`cases` after a warm-up of valid tasks (the RSS baseline); the fleet view runs
        `views` times during the run, evenly spread, and once after it."""
        driver = Driver(
            self.broker.port,
            self.watcher,
            self.pid,
            v5=self.v5,
            max_payload_bytes=MAX_PAYLOAD,
            window=window,
        )
        checkpoints = {len(WARMUP) + k * len(cases) // views for k in range(views)}
        try:
            outcome = driver.run(
                [*WARMUP, *cases],
                warmup=len(WARMUP),
                checkpoints=checkpoints,
                at_checkpoint=self._view,
            )
        finally:
            driver.close()
        if views:
            self._view()
        return outcome

    def _seen(self) -> list[Any]:
        with self.watcher.arrived:
            return list(self.watcher.seen)

    def _view(self) -> None:
        self.fleet.check_view(lambda: heartbeat_states(self._seen(), "dev1"))

    def close(self) -> None:
        self.daemon.stop()
        self.watcher.close()
        self.fleet.close()

    def verdict(self, outcome: Outcome, out: Path) -> dict[str, Any]:
        """The figures of the run, and under "failures" everything the module docstring
        promises that did not hold; both are also written to `out` (JSON, in full)."""
        unacked = self.log.wait_all_acked(timeout=30)
        assert self.daemon.proc is not None
        alive = self.daemon.proc.poll() is None and self.daemon.proc.pid == self.pid
        loads, connects = (len(self.daemon.events(e)) for e in ("model loaded", "mqtt connected"))
        problems = [p for s in outcome.sent if (p := self._problem(s)) is not None]
        over = [s for s in outcome.sent if s.case.over_packet_size]
        anonymous = 0 if self.v5 else sum(s.anonymous for s in outcome.sent)
        by_daemon = sorted(
            t for t in self.log.published if not _own_or_reply(t) and t not in self.discovery
        )
        seen = self._seen()
        strays = [t for t in outcome.strays if t not in self.discovery and not self.fleet.owns(t)]
        holds, hold_counts = hold_problems(outcome.sent, seen)
        last_action, moves = last_action_problems(outcome.sent, seen)
        at_end = retained(self.broker.port, "homeassistant/#", len(self.discovery))
        discovery = discovery_problems(self.discovery, self.log.published, seen, at_end)
        internal = [
            e["task_id"] for e in self.daemon.events("task") if e.get("error_code") == "INTERNAL"
        ]
        rss = outcome.rss_mib
        cache = prefix_cache_share_mib(self.daemon)
        growth = max(r for _, r in rss) - rss[0][1]
        checks = {
            "the daemon exited or restarted": not alive or loads != 1,
            "the daemon reconnected": connects != 1 or bool(self.log.gone),
            f"task messages never acknowledged: {unacked}": bool(unacked),
            f"wrong replies: {problems}": bool(problems),
            "the broker did not drop the oversized payloads (v5)": self.v5
            and self.log.dropped != len(over),
            f"unexpected anonymous replies: {len(outcome.anonymous)}": len(outcome.anonymous)
            != anonymous,
            f"published outside its topics: {strays} {by_daemon}": bool(strays or by_daemon),
            f"the fleet view: {self.fleet.problems}": bool(self.fleet.problems),
            f"held or dispatched actions: {holds}": bool(holds),
            f"last_action moved by something else: {last_action}": bool(last_action),
            f"discovery configs: {discovery}": bool(discovery),
            f"replies on actions topics: {outcome.replies_on_actions}": bool(
                outcome.replies_on_actions
            ),
            f"INTERNAL answers: {internal}": bool(internal),
            f"RSS grew by {growth:.1f} MiB, more than the prefix cache's {cache:.1f} MiB"
            f" + {RSS_GROWTH_MIB} MiB: {rss}": growth > cache + RSS_GROWTH_MIB,
            f"RSS still grew over the last quarter: {rss}": last_quarter_growth(rss)
            > RSS_LAST_QUARTER_MIB,
        }
        valid = [s for s in outcome.sent if "valid" in s.case.tags]
        figures = {
            "payloads": len(outcome.sent),
            "hostile": len(outcome.sent) - len(valid),
            "valid_tasks": len(valid),
            "valid_answered_ok": sum(1 for s in valid if s.replies and _code(s) == "ok"),
            "delivered_by_broker": self.log.delivered,
            "dropped_by_broker": self.log.dropped,
            "messages_unacked": len(unacked),
            "restarts": loads - 1,
            "reconnects": connects - 1,
            "stray_publishes": len(strays) + len(by_daemon),
            "fleet_views": len(self.fleet.views),
            "hostile_heartbeat_rounds": self.fleet.rounds,
            **hold_counts,
            "last_action_moves": moves,
            "discovery_configs": len(at_end),
            "rss_mib_loaded": round(outcome.rss_mib_loaded, 1),
            "rss_mib_before": round(rss[0][1], 1),
            "rss_mib_after": round(rss[-1][1], 1),
            "rss_mib_max": round(max(r for _, r in rss), 1),
            "rss_mib_allowed_growth": round(cache + RSS_GROWTH_MIB, 1),  # cache share + the rest
            "elapsed_s": round(outcome.elapsed_s, 1),
            "codes": dict(sorted(outcome.codes().items())),
            "failures": [what for what, failed in checks.items() if failed],
        }
        out.write_text(json.dumps(figures, indent=1, ensure_ascii=False), encoding="utf-8")
        return figures

    def _problem(self, sent: Any) -> str | None:
        """What is wrong with one message's replies, with the payload (fuzz cases are drawn
        afresh in each context); None when nothing is."""
        case: Case = sent.case
        about = f"{case.name} {case.payload[:300]!r} (response topic {case.response_topic!r})"
        if not sent.expect_reply:  # dropped by the broker, or answered anonymously
            return None if not sent.replies else f"a reply it cannot have: {about}"
        if len(sent.replies) != 1:
            return f"{len(sent.replies)} replies: {about}"
        (reply,) = sent.replies
        got = f"{reply.topic!r} {reply.payload[:200]!r}"
        if _code(sent) not in case.codes:
            return f"code: {got} to {about}"
        if case.to_errors and reply.topic != "edgeagent/dev1/errors":
            return f"refused address, reply on {got} to {about}"
        if not case.to_errors and self.v5:
            expected = case.response_topic or "replies/hostile"
            if reply.topic != expected or reply.correlation != sent.correlation:
                return f"reply on {got} to {about}"
        return None


def _body(sent: Any) -> Any:
    return json.loads(sent.replies[0].payload)


def _code(sent: Any) -> str:
    body = _body(sent)
    return "ok" if body["status"] == "ok" else body["error"]["code"]


def prefix_cache_share_mib(daemon: DaemonProcess) -> float:
    """The largest share of memory the daemon's governor gave its prefix cache (MiB): at
    start ("memory budget", whose reason ends "...; 8 sequences, 128.0 MiB prefix cache")
    and on every later change ("memory for concurrent tasks"); 0 when it gave none."""
    shares = [
        float(m[1]) * _MIB[m[2]]
        for e in daemon.events("memory budget")
        if (m := _CACHE_SHARE.search(str(e.get("reason", ""))))
    ]
    shares += [float(e["prefix_cache_mb"]) for e in daemon.events("memory for concurrent tasks")]
    return max(shares, default=0.0)


def last_quarter_growth(rss: list[tuple[int, float]]) -> float:
    """How far the highest reading of a long run's last quarter is above the highest
    before it (0 for fewer than 12 readings: too short to tell)."""
    if len(rss) < 12:
        return 0.0
    quarter = len(rss) * 3 // 4
    return max(r for _, r in rss[quarter:]) - max(r for _, r in rss[:quarter])


def _own_or_reply(topic: str) -> bool:
    """The device's own topics and the allowed reply prefix (the prefix itself included)."""
    return topic.startswith(("edgeagent/dev1/", "replies/")) or topic == "replies"


def v5_cases(fuzz: int, *, seed: int, every: int, holds: list[int]) -> list[Case]:
    """The corpus, `fuzz` mutations and, spread among them, the hold cases of `holds`
    (indexes of support/hostile_surfaces.HOLD_INPUTS), a valid task after every `every`."""
    hostile = [c for c in corpus(MAX_PAYLOAD) if c.broker_forwards]
    hostile += draw_cases(fuzz, seed=seed, broker_safe=True)
    return interleave(spread(hostile, [*forgery_cases(), *hold_cases(holds)]), every=every)


def report(name: str, figures: dict[str, Any], record_property: Any) -> None:
    """Print and record the figures, then fail on what did not hold."""
    record_property(name, figures)
    print(f"{name} figures:", json.dumps(figures))
    assert figures["failures"] == []


def test_hostile_input_short_v5(tmp_path, model_path, broker, record_property):
    live = Live(tmp_path, model_path, broker, v5=True)
    try:
        outcome = live.run(v5_cases(120, seed=11, every=15, holds=[0, 1]), views=2)
        report("hostile", live.verdict(outcome, tmp_path / "figures.json"), record_property)
    finally:
        live.close()


def test_hostile_input_short_v311(tmp_path, model_path, broker, record_property):
    """MQTT 3.1.1: no Maximum Packet Size, so oversized payloads reach the daemon and are
    answered PAYLOAD_TOO_LARGE unread; replies go by reply_to or to results/<id>."""
    live = Live(tmp_path, model_path, broker, v5=False)
    try:
        cases = [c for c in corpus(MAX_PAYLOAD) if c.response_topic is None and not c.runs_model]
        outcome = live.run(interleave(cases, every=15))
        figures = live.verdict(outcome, tmp_path / "figures.json")
        report("hostile 3.1.1", figures, record_property)
        assert figures["codes"]["PAYLOAD_TOO_LARGE"] == sum(
            1 for c in cases if "PAYLOAD_TOO_LARGE" in c.codes
        )
    finally:
        live.close()


def _selected_fuzz(config: pytest.Config) -> bool:
    expression = config.getoption("markexpr") or ""
    return bool(re.search(r"(?<!not )\bfuzz\b", expression))


@pytest.mark.fuzz
def test_hostile_input_long(request, tmp_path, model_path, broker, record_property):
    if not _selected_fuzz(request.config):
        pytest.skip("the long fuzz run runs only when selected: pytest -m fuzz")
    live = Live(tmp_path, model_path, broker, v5=True)
    try:
        holds = list(range(max(LONG_PAYLOADS // 250, 2)))  # 120 hold cases in 10,000
        cases = v5_cases(LONG_PAYLOADS, seed=2024, every=20, holds=holds)
        outcome = live.run(cases, window=12, views=max(LONG_PAYLOADS // 1000, 3))
        figures = live.verdict(outcome, tmp_path / "figures.json")
        report("hostile long", figures, record_property)
        assert figures["payloads"] >= LONG_PAYLOADS
    finally:
        live.close()
