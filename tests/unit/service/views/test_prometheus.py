"""Prometheus metrics: what a heartbeat and finished tasks turn into, and both ways out."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeagent import __version__
from edgeagent.protocol.heartbeat import Heartbeat
from edgeagent.service.views.prometheus import STATES, Metrics
from edgeagent.service.views.prometheus_export import HttpEndpoint, MetricsExport, TextfileWriter
from edgeagent.service.views.prometheus_http import MetricsServer

BODY: dict[str, Any] = {
    "device": "greenhouse-01",
    "state": "serving",
    "ts": 1764403200.5,
    "queue": {"depth": 3, "capacity": 16},
    "tasks": {"done": 42, "failed": 1, "busy": 0},
    "tokens_per_s": 11.8,
    "context": {"n_ctx": 2048, "budget": 3072, "available_mb": 1024.0},
    "memory": {"rss_mb": 512.0, "host_available_mb": 2048.0},
    "board": {"temp_c": 51.2, "throttled": False},
    "store": {"state": "ok"},
}


def heartbeat(**changes: Any) -> Heartbeat:
    """The heartbeat of BODY with `changes`; a change to None leaves the field out."""
    body = {**BODY, **changes}
    return Heartbeat.model_validate({k: v for k, v in body.items() if v is not None})


HEARTBEAT = heartbeat()


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name + sorted labels -> value, parsed with prometheus_client's own parser."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_gauges_follow_the_heartbeat():
    metrics = Metrics("greenhouse-01", "smollm2.gguf")
    metrics.observe(HEARTBEAT, journal_rows=17)
    got = samples(metrics.exposition())
    assert got[("edgeagent_queue_depth", ())] == 3
    assert got[("edgeagent_queue_capacity", ())] == 16
    assert got[("edgeagent_context_tokens", ())] == 2048
    assert got[("edgeagent_context_budget_tokens", ())] == 3072
    assert got[("edgeagent_memory_available_bytes", ())] == 1024 * 2**20
    assert got[("edgeagent_resident_memory_bytes", ())] == 512 * 2**20
    assert got[("edgeagent_tokens_per_second", ())] == 11.8
    assert got[("edgeagent_soc_temperature_celsius", ())] == 51.2
    assert got[("edgeagent_journal_rows", ())] == 17
    states = {dict(k[1])["edgeagent_state"]: v for k, v in got.items() if k[0] == "edgeagent_state"}
    assert states == {s: (1.0 if s == "serving" else 0.0) for s in STATES}
    info = next(dict(k[1]) for k in got if k[0] == "edgeagent_build_info")
    assert info == {"version": __version__, "device": "greenhouse-01", "model": "smollm2.gguf"}


def test_missing_values_leave_the_gauge_alone():
    metrics = Metrics("d")
    metrics.observe(HEARTBEAT)
    loading = heartbeat(state="loading", context={"n_ctx": 512}, board=None)
    metrics.observe(loading.model_copy(update={"tokens_per_s": None}))
    got = samples(metrics.exposition())
    assert got[("edgeagent_tokens_per_second", ())] == 11.8
    assert got[("edgeagent_context_tokens", ())] == 512
    assert got[("edgeagent_context_budget_tokens", ())] == 3072
    assert got[("edgeagent_soc_temperature_celsius", ())] == 51.2
    assert got[("edgeagent_state", (("edgeagent_state", "loading"),))] == 1


def test_host_memory_when_the_governor_has_no_reading_yet():
    metrics = Metrics("d")
    metrics.observe(heartbeat(context={"n_ctx": 512}))
    assert samples(metrics.exposition())[("edgeagent_memory_available_bytes", ())] == 2048 * 2**20


def test_task_counters_by_status_and_error_code():
    metrics = Metrics("d")
    metrics.task_finished(
        status="ok", prompt_tokens=300, completion_tokens=17, prompt_s=0.31, decode_s=0.16
    )
    metrics.task_finished(
        status="ok", prompt_tokens=100, completion_tokens=3, prompt_s=0.1, decode_s=0.04
    )
    metrics.task_finished(status="error", error_code="BUSY")
    metrics.task_finished(status="error", error_code="BUSY")
    metrics.task_finished(status="error", error_code="INVALID_REQUEST")
    got = samples(metrics.exposition())
    assert got[("edgeagent_tasks_total", (("error_code", ""), ("status", "ok")))] == 2
    assert got[("edgeagent_tasks_total", (("error_code", "BUSY"), ("status", "error")))] == 2
    assert (
        got[("edgeagent_tasks_total", (("error_code", "INVALID_REQUEST"), ("status", "error")))]
        == 1
    )
    assert got[("edgeagent_prompt_tokens_total", ())] == 400
    assert got[("edgeagent_generated_tokens_total", ())] == 20
    assert got[("edgeagent_prompt_seconds_total", ())] == pytest.approx(0.41)
    assert got[("edgeagent_decode_seconds_total", ())] == pytest.approx(0.2)


def test_reconnects_and_refusals_advance_by_what_is_new():
    metrics = Metrics("d")
    metrics.observe(HEARTBEAT, connects=1, puback_refusals=0)
    got = samples(metrics.exposition())
    assert got[("edgeagent_mqtt_reconnects_total", ())] == 0
    metrics.observe(HEARTBEAT, connects=3, puback_refusals=2)
    metrics.observe(HEARTBEAT, connects=3, puback_refusals=2)  # nothing new
    metrics.observe(HEARTBEAT, connects=4, puback_refusals=5)
    got = samples(metrics.exposition())
    assert got[("edgeagent_mqtt_reconnects_total", ())] == 3
    assert got[("edgeagent_mqtt_puback_refusals_total", ())] == 5


def test_textfile_is_replaced_whole_and_readable_by_node_exporter(tmp_path):
    metrics = Metrics("d")
    metrics.observe(HEARTBEAT)
    writer = TextfileWriter(tmp_path, metrics)
    old_umask = os.umask(0o077)  # the service's UMask=
    try:
        writer.write()
        metrics.observe(heartbeat(queue={"depth": 9, "capacity": 16}))
        writer.write()
    finally:
        os.umask(old_umask)
    assert [p.name for p in tmp_path.iterdir()] == ["edgeagent.prom"]  # no temporary left
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o644
    assert samples(writer.path.read_text())[("edgeagent_queue_depth", ())] == 9
    writer.remove()
    assert not writer.path.exists()


def test_textfile_writer_follows_no_planted_link(tmp_path):
    """Whoever can write to the collector's directory plants links at the temporary name
    an older writer used (`.edgeagent.prom.<pid>.tmp`) and at the file itself: the files
    they point to keep their bytes and their mode."""
    collector = tmp_path / "collector"
    collector.mkdir()
    victims = {name: tmp_path / name for name in ("secret-a", "secret-b")}
    for victim in victims.values():
        victim.write_text("private\n", encoding="utf-8")
        victim.chmod(0o600)
    planted_tmp = collector / f".edgeagent.prom.{os.getpid()}.tmp"
    planted_tmp.symlink_to(victims["secret-a"])
    (collector / "edgeagent.prom").symlink_to(victims["secret-b"])
    metrics = Metrics("d")
    metrics.observe(HEARTBEAT)
    writer = TextfileWriter(collector, metrics)
    writer.write()
    writer.write()
    for victim in victims.values():
        assert victim.read_text(encoding="utf-8") == "private\n"
        assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not writer.path.is_symlink()  # the rename replaced the link, not its target
    assert samples(writer.path.read_text())[("edgeagent_queue_depth", ())] == 3
    assert planted_tmp.is_symlink()  # left alone, not written through
    assert sorted(p.name for p in collector.iterdir()) == sorted(
        ["edgeagent.prom", planted_tmp.name]
    )


def test_http_endpoint_serves_the_registry():
    metrics = Metrics("d")
    metrics.observe(HEARTBEAT)
    endpoint = HttpEndpoint(metrics, "127.0.0.1", 0)
    endpoint.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as r:
            body = r.read()
    finally:
        endpoint.stop()
    assert samples(body)[("edgeagent_queue_depth", ())] == 3


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return bytes(response.read())


def test_slow_clients_neither_multiply_threads_nor_starve_a_scrape(caplog):
    """300 connections that send nothing: prometheus_client's server made a thread for
    each (307 threads); this one keeps its one thread, a scrape still answers, and the
    connections closed to make room log nothing (no error per client to flood the log)."""
    metrics = Metrics("d")
    metrics.observe(HEARTBEAT)
    endpoint = HttpEndpoint(metrics, "127.0.0.1", 0)
    endpoint.start()
    threads = threading.active_count()  # the endpoint's own thread included
    silent: list[socket.socket] = []
    try:
        silent.extend(
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) for _ in range(300)
        )
        time.sleep(0.5)  # every connection accepted (or closed to make room)
        assert threading.active_count() <= threads
        assert samples(_scrape(endpoint.port))[("edgeagent_queue_depth", ())] == 3
        assert threading.active_count() <= threads
    finally:
        for sock in silent:
            sock.close()
        endpoint.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_are_capped_and_a_silent_one_makes_room():
    metrics = Metrics("d")
    metrics.observe(HEARTBEAT)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0, max_connections=2)
    server.start()
    try:
        first, second = (socket.create_connection(("127.0.0.1", server.port)) for _ in "ab")
        with first, second:
            time.sleep(0.2)
            assert server.open_connections == 2
            assert samples(_scrape(server.port))[("edgeagent_queue_depth", ())] == 3
            assert _closed_by_server(first, within_s=2)  # the oldest silent one went
            assert not _closed_by_server(second, within_s=0.2)
            assert server.evicted == 1
    finally:
        server.stop()


def _status(request: urllib.request.Request | str) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def test_a_connection_that_sends_nothing_is_closed_after_the_request_timeout():
    server = MetricsServer(Metrics("d").registry, "127.0.0.1", 0, request_timeout_s=0.3)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            started = time.monotonic()
            assert _closed_by_server(sock, within_s=5)
            assert time.monotonic() - started < 2
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 10_000 + b"\r\n\r\n")
            assert _closed_by_server(sock, within_s=5)  # a head over the limit: closed
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", method="DELETE")
        assert _status(request) == 405
        assert _status(f"http://127.0.0.1:{server.port}/other") == 404
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name == "metrics-http"]


def test_reply_bodies_count_like_finished_tasks():
    metrics = Metrics("d")
    metrics.reply(
        {
            "id": "t1",
            "status": "ok",
            "output": {},
            "usage": {"prompt_tokens": 301, "completion_tokens": 17, "cached_prompt_tokens": 0},
            "timing": {"queue_ms": 0.2, "prompt_ms": 310.5, "decode_ms": 160.2, "total_ms": 480.1},
        }
    )
    metrics.reply(
        {"id": None, "status": "error", "error": {"code": "INVALID_REQUEST", "message": "x"}}
    )
    got = samples(metrics.exposition())
    assert got[("edgeagent_tasks_total", (("error_code", ""), ("status", "ok")))] == 1
    assert (
        got[("edgeagent_tasks_total", (("error_code", "INVALID_REQUEST"), ("status", "error")))]
        == 1
    )
    assert got[("edgeagent_generated_tokens_total", ())] == 17
    assert got[("edgeagent_prompt_seconds_total", ())] == pytest.approx(0.3105)
    assert got[("edgeagent_decode_seconds_total", ())] == pytest.approx(0.1602)


def test_held_actions_are_counted_by_action_and_reason():
    metrics = Metrics("d")
    output = {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}
    held = {"reason": "confidence", "confidence": 0.41, "min_confidence": 0.8}
    for body in (
        {"id": "t1", "status": "ok", "output": output, "dispatched": False, "held": held},
        {"id": "t2", "status": "ok", "output": output, "dispatched": False, "held": held},
        {"id": "t3", "status": "ok", "output": output, "confidence": 0.95, "dispatched": True},
    ):
        metrics.reply(body)
    got = samples(metrics.exposition())
    key = (("action", "set_irrigation"), ("reason", "confidence"))
    assert got[("edgeagent_held_actions_total", key)] == 2
    assert got[("edgeagent_tasks_total", (("error_code", ""), ("status", "ok")))] == 3


def test_export_as_configured(tmp_path):
    from edgeagent.config import MetricsConfig  # noqa: PLC0415 - only here

    export = MetricsExport(MetricsConfig(textfile_dir=tmp_path), "d")
    assert export.http is None
    export.start()
    export.refresh(HEARTBEAT, journal_rows=3, connects=2)
    got = samples((tmp_path / "edgeagent.prom").read_text())
    assert got[("edgeagent_journal_rows", ())] == 3
    assert got[("edgeagent_mqtt_reconnects_total", ())] == 1
    export.stop()
    assert not (tmp_path / "edgeagent.prom").exists()


def test_export_survives_a_taken_port_and_an_unwritable_directory(tmp_path):
    from edgeagent.config import MetricsConfig  # noqa: PLC0415 - only here

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = MetricsConfig(port=port, textfile_dir=tmp_path / "missing")
        export = MetricsExport(cfg, "d")
        export.start()  # logged, not raised: the daemon serves without its endpoint
    assert export.http is None
    export.refresh(HEARTBEAT)  # logged, not raised
    export.refresh(HEARTBEAT)
    export.stop()
