"""The real daemon under a real systemd: one booted test host, end to end.

One systemd-nspawn host (tests/harness/hosts.py: systemd 252 as PID 1, its own journal
and network namespace, no internet) gets what docs/operations.md installs by hand:
the offline wheelhouse of scripts/build-fleet-wheelhouse.sh (a session fixture of
tests/integration/conftest.py, cached in ~/.cache/edgeagent/fleet-wheelhouse) in
/opt/edgeagent/venv, the unit, sysusers and tmpfiles files from systemd/, the SmolLM2
test model in /var/lib/edgeagent/models/ and /etc/edgeagent/config.toml pointing at a
real mosquitto the test starts on the bridge address (its own bridge, the first free of
ea-svc20/10.213.20.1 ... ea-svc29, so it runs beside the other container tests).
libgomp1 (llama.cpp's OpenMP runtime, missing from the minimal rootfs) is installed
from the fleet tests' local package mirror. The unit is used unchanged; a test drop-in only shortens
WatchdogSec= and RestartSec=.

The tests run in order against that one service (each starts it if an earlier one
left it stopped):

1. `systemctl start` returns after READY=1: active/running with the daemon's STATUS=;
2. a task through the broker (MQTT v5 response topic) is answered;
3. the journal has the indexed fields (TASK_ID, DEVICE_ID, PRIORITY, ERROR_CODE);
4. `systemctl reload` (SIGHUP) applies a new action without a restart;
5. a wedged inference thread stops the watchdog pings; systemd kills the service with
   SIGABRT and restarts it, and the restarted daemon answers the redelivered task. The
   wedge: a drop-in points ExecStart= at tests/support/wedged_daemon.py (the same daemon,
   built with a model factory whose model never returns from its first call), run by the
   service's venv python; it is removed again right after the restart, so the running
   process is the wedged one and the automatic restart after the kill is the real
   `edgeagent run`;
6. `systemctl stop` publishes a retained `offline` and leaves the unit inactive.

Phase timings are printed and written to $EDGEAGENT_TEST_ARTIFACTS (default
~/.cache/edgeagent/test-artifacts) as systemd-service-timings.json, with the host's
journal as journal-systemd-service.txt.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.catalogs import CATALOG_TOML
from support.daemon import ROOT
from support.mosquitto import Mosquitto, MqttProbe

# Session fixtures of the fleet tests, both cached in ~/.cache/edgeagent: the offline
# wheelhouse (built once) and a flat apt repository with libgomp1 (llama.cpp's OpenMP
# runtime, which the minimal test rootfs lacks and the hosts cannot download).

pytestmark = [pytest.mark.container, pytest.mark.model, pytest.mark.mqtt, pytest.mark.slow]

SYSTEMD_DIR = ROOT / "systemd"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeagent"
# Its own bridge and subnet, the first free of these: runs next to test_harness.py (ea-br0,
# 10.213.0), test_ansible.py (ea-fleet, 10.213.1) and hosts left up by `scripts/testhosts`.
NETWORKS = [(f"ea-svc{n}", f"10.213.{n}") for n in range(20, 30)]
HOST = "pi"
DEVICE = "svc-01"
UNIT = "edgeagent.service"
VENV = "/opt/edgeagent/venv"
EDGEAGENT_BIN = f"{VENV}/bin/edgeagent"
CONFIG = "/etc/edgeagent/config.toml"
MODEL = "/var/lib/edgeagent/models/smollm2.gguf"
DROPIN_DIR = "/etc/systemd/system/edgeagent.service.d"
TASKS = f"edgeagent/{DEVICE}/tasks"
STATUS = f"edgeagent/{DEVICE}/status"
REPLIES = "replies/svc"
# Only what must be shorter in a test; everything else is the unit as shipped.
TEST_DROPIN = """[Service]
# Tests: a missed keep-alive and the restart after it show within seconds.
WatchdogSec=6
RestartSec=1
"""
# The same daemon with a model whose first call blocks forever (the fault is injected
# through the engine's model factory; production code has no test hook).
WEDGED_DAEMON = ROOT / "tests" / "support" / "wedged_daemon.py"
WEDGED_DAEMON_IN_HOST = "/opt/edgeagent/test/wedged_daemon.py"
WEDGE_DROPIN = f"""[Service]
ExecStart=
ExecStart={VENV}/bin/python {WEDGED_DAEMON_IN_HOST} run --config {CONFIG}
"""
NEW_ACTION = """
[[actions]]
name = "open_vent"
description = "Open the roof vent of the greenhouse by a percentage."
[actions.schema]
type = "object"
required = ["percent"]
[actions.schema.properties.percent]
type = "integer"
minimum = 0
maximum = 100
"""
INSTALL_UNIT = f"""cd /var/tmp/systemd
install -D -m 0644 edgeagent.sysusers.conf /etc/sysusers.d/edgeagent.conf
install -D -m 0644 edgeagent.tmpfiles.conf /etc/tmpfiles.d/edgeagent.conf
install -D -m 0644 edgeagent.service /etc/systemd/system/edgeagent.service
systemd-sysusers edgeagent.conf
systemd-tmpfiles --create edgeagent.conf
mkdir -p {DROPIN_DIR}
"""
_STARTED: list[float] = []  # when this module's first fixture ran
STATUS_RE = re.compile(
    r"^serving; queue 0/16; ctx \d+ \(budget \d+, (memory|config|model)\); "
    r"done \d+ failed \d+; \S+ tok/s$"
)
ANSWER_TIMEOUT = 120.0


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "boots a systemd-nspawn container: needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing (apt-get install systemd-container)"
    from harness import hosts  # noqa: PLC0415 - only where containers can run

    if (reason := hosts.probe()) is not None:
        return reason
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return "mosquitto is not installed (scripts/install-system-deps.sh)"
    return None


# --------------------------------------------------------------------------- helpers


def _text(value: Any) -> str:
    """A journal field from `journalctl -o json` (byte arrays for binary data)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


@dataclass
class Service:
    """The booted host, its broker and a host-side MQTT client, with the steps' timings."""

    host: Any
    broker: Mosquitto
    probe: MqttProbe
    timings: dict[str, float] = field(default_factory=dict)

    # -- inside the host

    def sh(self, *cmd: str, check: bool = True, timeout: float = 120) -> str:
        return str(self.host.run(list(cmd), check=check, timeout=timeout).stdout)

    def systemctl(self, *args: str, timeout: float = 240) -> str:
        return self.sh("systemctl", *args, timeout=timeout)

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh("systemctl", "show", UNIT, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """`journalctl -u edgeagent ARGS -o json`, run inside the host."""
        out = self.sh("journalctl", "--no-pager", "--all", "-u", UNIT, "-o", "json", *args)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def wait_journal(
        self, what: str, match: Callable[[dict[str, Any]], bool], *args: str, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.journal(*args) if match(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no journal entry {what} within {timeout} s:\n{self.diagnostics()}")
            time.sleep(0.25)

    def since(self, since_us: int) -> list[dict[str, Any]]:
        return [e for e in self.journal() if int(e["__REALTIME_TIMESTAMP"]) >= since_us]

    def ensure_started(self) -> None:
        if self.show("ActiveState")["ActiveState"] != "active":
            self.sh("systemctl", "reset-failed", UNIT, check=False)
            started = time.monotonic()
            self.systemctl("start", UNIT)
            self.wait_online(started)

    def diagnostics(self) -> str:
        parts = ["--- systemctl status ---"]
        with contextlib.suppress(Exception):
            parts.append(self.sh("systemctl", "status", "--no-pager", "-l", UNIT, check=False))
        with contextlib.suppress(Exception):
            parts += ["--- journal ---", self.host.journal(UNIT, lines=60)]
        parts += ["--- mosquitto ---", self.broker.log()[-3000:]]
        return "\n".join(parts)

    # -- MQTT, from the test machine

    def request(self, payload: dict[str, Any], correlation: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = REPLIES
        props.CorrelationData = correlation
        self.probe.publish(TASKS, payload, properties=props)

    def reply(self, correlation: bytes, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.probe.messages):
                props = getattr(message, "properties", None)
                if (
                    message.topic == REPLIES
                    and getattr(props, "CorrelationData", None) == correlation
                ):
                    body: dict[str, Any] = json.loads(message.payload)
                    return body
            time.sleep(0.05)
        pytest.fail(f"no reply for {correlation!r} within {timeout} s:\n{self.diagnostics()}")

    def ask(self, payload: dict[str, Any], timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        correlation = uuid.uuid4().bytes
        self.request(payload, correlation)
        return self.reply(correlation, timeout)

    def wait_online(self, since: float, timeout: float = 60) -> None:
        """The daemon's `online` on its status topic, received after `since` (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(
                m.topic == STATUS and m.payload == b"online" and m.timestamp >= since
                for m in list(self.probe.messages)
            ):
                return
            time.sleep(0.05)
        pytest.fail(f"{DEVICE} did not come online within {timeout} s:\n{self.diagnostics()}")


def _artifacts() -> Path:
    artifacts = Path(os.environ.get("EDGEAGENT_TEST_ARTIFACTS", CACHE / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts


def _report(timings: dict[str, float], config: pytest.Config) -> None:
    rounded = {k: round(v, 1) for k, v in timings.items()}
    (_artifacts() / "systemd-service-timings.json").write_text(json.dumps(rounded, indent=2) + "\n")
    lines = "".join(f"  {k}: {v} s\n" for k, v in rounded.items())
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(f"\n[systemd service timings]\n{lines}")


def _install(
    host: Any, *, wheelhouse: Path, debs: Path, model: Path, config: str, timings: dict[str, float]
) -> None:
    """What docs/operations.md "Install" does by hand, plus the test drop-in."""
    started = time.monotonic()
    host.copy_in(wheelhouse, "/var/tmp/wheelhouse")
    host.copy_in(SYSTEMD_DIR, "/var/tmp/systemd")
    # 0. The system packages (the Ansible role's edgeagent_apt_packages): python3-venv is
    #    in the rootfs, libgomp1 comes from the local mirror.
    (libgomp,) = debs.glob("libgomp1_*.deb")
    host.copy_in(libgomp, f"/var/tmp/{libgomp.name}")
    host.run(["dpkg", "-i", f"/var/tmp/{libgomp.name}"])
    timings["copy wheelhouse, libgomp1"] = time.monotonic() - started
    # 1. The package, in its own virtualenv, from the wheelhouse only (no internet here).
    started = time.monotonic()
    host.run(["python3", "-m", "venv", VENV])
    host.run(
        [
            f"{VENV}/bin/pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--no-index",
            "--find-links",
            "/var/tmp/wheelhouse",
            "edgeagent",
        ],
        timeout=600,
    )
    timings["install venv"] = time.monotonic() - started
    # 2. User, directories, unit (the commands of docs/operations.md), the test drop-in.
    started = time.monotonic()
    host.run(["sh", "-euxc", INSTALL_UNIT])
    host.run(["sh", "-c", f"cat > {DROPIN_DIR}/test.conf"], input_text=TEST_DROPIN)
    host.run(["install", "-d", "-m", "0755", str(Path(WEDGED_DAEMON_IN_HOST).parent)])
    host.copy_in(WEDGED_DAEMON, WEDGED_DAEMON_IN_HOST, mode=0o644)
    # 3. The model and the configuration; validate-config as the service user also proves
    #    that it can read the file.
    host.copy_in(model, MODEL, mode=0o640, owner="edgeagent:edgeagent")
    install_config = f"install -o root -g edgeagent -m 0640 /dev/stdin {CONFIG}".split()
    host.run(install_config, input_text=config)
    host.run(["sudo", "-u", "edgeagent", EDGEAGENT_BIN, "validate-config", CONFIG])
    host.run(["systemctl", "daemon-reload"])
    timings["install unit, model, config"] = time.monotonic() - started


def _config(broker_host: str, port: int) -> str:
    # One model thread: two shared cores, and llama.cpp's spinning threads collapse when
    # oversubscribed. [log] keeps its defaults: info, format auto (journald under systemd).
    return (
        f'[device]\nid = "{DEVICE}"\n\n'
        f'[model]\npath = "{MODEL}"\nthreads = 1\nn_ctx = 2048\nmax_tokens = 64\n\n'
        f'[mqtt]\nhost = "{broker_host}"\nport = {port}\n' + CATALOG_TOML
    )


def _boot(workdir: Path) -> Any:
    """A booted TestHosts with one host, on the first bridge and subnet not in use."""
    from harness.hosts import HostsInUseError, TestHosts  # noqa: PLC0415

    busy = []
    for bridge, subnet in NETWORKS:
        hosts = TestHosts([HOST], workdir, bridge=bridge, subnet=subnet)
        try:
            hosts.start()
        except HostsInUseError as exc:
            busy.append(str(exc))
            continue
        return hosts
    pytest.fail("no free test network:\n" + "\n".join(busy))


@pytest.fixture(scope="module")
def service(
    fleet_wheelhouse: Path,
    debian_mirror: Path,
    model_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Service]:
    module_started = time.monotonic()
    # The wheelhouse (rebuilt when edgeagent's sources changed) and the package mirror.
    timings = {"session fixtures": module_started - _STARTED[0]} if _STARTED else {}
    # Not pytest's tmp_path: a concurrent pytest run may rotate it away under the container.
    with tempfile.TemporaryDirectory(prefix="edgeagent-svc-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        hosts = _boot(workdir / "hosts")
        try:
            timings["boot (incl. rootfs)"] = time.monotonic() - started
            host = hosts[HOST]
            # conftest's broker, plus a listener on the bridge for the host (same port).
            broker_dir = workdir / "broker"
            broker_dir.mkdir()
            broker = Mosquitto(broker_dir)
            with broker.conf.open("a") as conf:
                conf.write(f"listener {broker.port} {hosts.bridge_address}\n")
            probe: MqttProbe | None = None
            try:
                broker.start()
                probe = MqttProbe(broker.port)
                probe.subscribe(REPLIES)
                probe.subscribe(STATUS)
                _install(
                    host,
                    wheelhouse=fleet_wheelhouse / "x86-64-v3",
                    debs=debian_mirror,
                    model=model_path,
                    config=_config(hosts.bridge_address, broker.port),
                    timings=timings,
                )
                yield Service(host, broker, probe, timings)
            finally:
                if probe is not None:
                    probe.close()
                broker.stop()
                with contextlib.suppress(Exception):
                    (_artifacts() / "journal-systemd-service.txt").write_text(host.journal())
        finally:
            hosts.stop()
        timings["host fixture and tests"] = time.monotonic() - module_started
        _report(timings, request.config)


@pytest.fixture(scope="session", autouse=True)
def _containers_possible() -> None:
    """Session scope: decided before the session fixtures build anything."""
    if (reason := _skip_reason()) is not None:
        pytest.skip(reason)
    _STARTED.append(time.monotonic())


# --------------------------------------------------------------------------- the tests


def test_start_returns_after_ready(service: Service) -> None:
    if service.show("ActiveState")["ActiveState"] == "active":
        service.systemctl("stop", UNIT)
    since_us = time.time_ns() // 1000
    started = time.monotonic()
    service.systemctl("start", UNIT)  # Type=notify: returns once READY=1 arrived
    service.timings["systemctl start (model load to READY)"] = time.monotonic() - started
    shown = service.show(
        "ActiveState", "SubState", "StatusText", "Type", "WatchdogUSec", "NRestarts"
    )
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), service.diagnostics()
    assert STATUS_RE.match(shown["StatusText"]), shown["StatusText"]
    assert shown["StatusText"].startswith("serving; queue 0/16; ctx ")
    assert (shown["Type"], shown["WatchdogUSec"]) == ("notify", "6s")
    # systemd's "Started" comes after the daemon's own "model loaded": READY waited for it.
    entries = service.since(since_us)
    messages = [_text(e.get("MESSAGE")) for e in entries]
    loaded = next(i for i, m in enumerate(messages) if m.startswith("model loaded"))
    started_line = next(i for i, m in enumerate(messages) if m.startswith("Started edgeagent"))
    assert loaded < started_line, messages
    service.wait_online(started)


def test_task_answered_through_the_broker(service: Service) -> None:
    service.ensure_started()
    started = time.monotonic()
    reply = service.ask(
        {
            "id": "svc-ok-1",
            "input": "Zone 3 soil moisture is 12 %, water it for 20 minutes.",
            "actions": ["set_irrigation", "no_action"],
        }
    )
    service.timings["first task answered"] = time.monotonic() - started
    assert reply["status"] == "ok", reply
    assert (reply["id"], reply["device"]) == ("svc-ok-1", DEVICE)
    assert reply["output"]["action"] in {"set_irrigation", "no_action"}
    # STATUS= is kept current: the finished task shows up in `systemctl status`.
    deadline = time.monotonic() + 10
    while "done 1 " not in (text := service.show("StatusText")["StatusText"]):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert STATUS_RE.match(text), text


def test_journal_has_indexed_fields(service: Service) -> None:
    service.ensure_started()
    # The canonical per-task line, found by its indexed field.
    entry = service.wait_journal(
        "task svc-ok-1", lambda e: _text(e.get("EVENT")) == "task", "TASK_ID=svc-ok-1"
    )
    assert _text(entry["DEVICE_ID"]) == DEVICE
    assert _text(entry["PRIORITY"]) == "6"
    assert _text(entry["STATUS"]) == "ok"
    assert _text(entry["ACTION"]) in {"set_irrigation", "no_action"}
    assert int(_text(entry["COMPLETION_TOKENS"])) > 0
    assert int(_text(entry["BUDGET"])) > 0
    assert _text(entry["SYSLOG_IDENTIFIER"]) == "edgeagent"
    assert entry["_TRANSPORT"] == "journal"  # the native protocol, not stderr text
    assert _text(entry["MESSAGE"]).startswith("task task_id=svc-ok-1 ")
    assert "soil moisture" not in json.dumps(entry)  # no prompts at info level

    # An error task: an action that is not (yet) in the catalog.
    reply = service.ask(
        {"id": "svc-err-1", "input": "It is too hot in here.", "action": "open_vent"}
    )
    assert (reply["status"], reply["error"]["code"]) == ("error", "UNKNOWN_ACTION"), reply
    error = service.wait_journal(
        "ERROR_CODE=UNKNOWN_ACTION", lambda _e: True, "ERROR_CODE=UNKNOWN_ACTION"
    )
    assert _text(error["TASK_ID"]) == "svc-err-1"
    assert _text(error["DEVICE_ID"]) == DEVICE

    # -p warning: warnings and worse only; the info lines above are not in it.
    everything = service.journal()
    warnings = service.journal("-p", "warning")
    assert all(int(_text(e.get("PRIORITY", "6"))) <= 4 for e in warnings)
    # The successful task is info, not in -p warning; the refused one is a warning.
    assert not [e for e in warnings if _text(e.get("TASK_ID")) == "svc-ok-1"]
    assert [e for e in warnings if _text(e.get("TASK_ID")) == "svc-err-1"]
    info = [e for e in everything if _text(e.get("PRIORITY")) == "6" and e.get("EVENT")]
    assert {"model loaded", "mqtt connected", "task"} <= {_text(e["EVENT"]) for e in info}
    text = service.sh("journalctl", "--no-pager", "-u", UNIT, "-p", "warning", "-o", "cat")
    assert "model loaded" not in text, text
    assert "task task_id=svc-ok-1" not in text, text
    assert "task task_id=svc-err-1" in text, text


def test_reload_applies_a_new_action(service: Service) -> None:
    service.ensure_started()
    before = service.show("MainPID", "NRestarts")
    since_us = time.time_ns() // 1000
    service.host.run(["sh", "-c", f"cat >> {CONFIG}"], input_text=NEW_ACTION)
    service.systemctl("reload", UNIT)
    entry = service.wait_journal(
        "configuration reloaded",
        lambda e: (
            int(e["__REALTIME_TIMESTAMP"]) >= since_us
            and _text(e.get("MESSAGE")).startswith("configuration reloaded")
        ),
    )
    assert _text(entry["PRIORITY"]) == "6"
    after = service.show("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
    assert (after["ActiveState"], after["SubState"]) == ("active", "running"), after
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])
    assert STATUS_RE.match(after["StatusText"]), after["StatusText"]
    messages = [_text(e.get("MESSAGE")) for e in service.since(since_us)]
    assert any(m.startswith("Reloading edgeagent") for m in messages), messages
    assert not [m for m in messages if m.startswith(("Stopping edgeagent", "Started edgeagent"))]
    # The action that was unknown before the reload is usable now.
    reply = service.ask(
        {
            "id": "svc-reload-1",
            "input": "It is too hot: open the vent halfway.",
            "action": "open_vent",
        }
    )
    assert reply["status"] == "ok", reply
    assert reply["output"]["action"] == "open_vent"


def test_watchdog_restarts_a_wedged_inference_thread(service: Service) -> None:
    service.ensure_started()
    service.host.run(["sh", "-c", f"cat > {DROPIN_DIR}/wedge.conf"], input_text=WEDGE_DROPIN)
    service.systemctl("daemon-reload")
    since = time.monotonic()
    since_us = time.time_ns() // 1000
    service.systemctl("restart", UNIT)
    wedged = service.show("MainPID", "NRestarts")
    cmdline = service.sh("cat", f"/proc/{wedged['MainPID']}/cmdline").split("\0")
    assert WEDGED_DAEMON_IN_HOST in cmdline, cmdline
    # The running process stays the wedged one: remove the drop-in again now, so that the
    # restart after the watchdog kill is the real `edgeagent run` (and answers the task).
    service.sh("rm", f"{DROPIN_DIR}/wedge.conf")
    service.systemctl("daemon-reload")
    service.wait_online(since)

    started = time.monotonic()
    correlation = uuid.uuid4().bytes
    service.request(
        {
            "id": "svc-wedge-1",
            "input": "Sensor report: all normal.",
            "actions": ["no_action", "notify"],
        },
        correlation,
    )
    deadline = time.monotonic() + 90
    while True:
        now = service.show("NRestarts", "ActiveState", "SubState", "MainPID")
        restarted = int(now["NRestarts"]) > int(wedged["NRestarts"])
        if restarted and (now["ActiveState"], now["SubState"]) == ("active", "running"):
            break
        assert time.monotonic() < deadline, f"no watchdog restart: {now}\n{service.diagnostics()}"
        time.sleep(0.25)
    service.timings["task sent to watchdog restart done"] = time.monotonic() - started
    assert int(now["NRestarts"]) == int(wedged["NRestarts"]) + 1
    assert now["MainPID"] != wedged["MainPID"]
    cmdline = service.sh("cat", f"/proc/{now['MainPID']}/cmdline").split("\0")
    # The console script: its shebang's python, then the script (the unit's ExecStart=).
    assert EDGEAGENT_BIN in cmdline, cmdline
    assert WEDGED_DAEMON_IN_HOST not in cmdline, cmdline

    entries = service.since(since_us)
    messages = [_text(e.get("MESSAGE")) for e in entries]
    # The daemon says why it stops pinging, then systemd acts on the missing pings.
    withheld = next(
        e for e in entries if _text(e.get("EVENT")) == "watchdog: withholding keep-alive"
    )
    assert _text(withheld["PRIORITY"]) == "3"
    assert "inference" in _text(withheld["PROBES"])
    assert any("Watchdog timeout (limit 6s)!" in m for m in messages), messages
    assert any(m.endswith("Failed with result 'watchdog'.") for m in messages), messages
    assert any("status=6/ABRT" in m for m in messages), messages
    assert any("Scheduled restart job, restart counter is at" in m for m in messages), messages
    # faulthandler's dump at SIGABRT shows where the inference thread was stuck: in the
    # wedged model's first call, reached from the engine.
    assert any("in prefill_forever" in m for m in messages if "wedged_daemon.py" in m), messages
    assert any("in _answer" in m for m in messages if "engine.py" in m), messages

    # The task was not acknowledged by the killed daemon: the broker delivers it again
    # and the restarted daemon answers it.
    reply = service.reply(correlation)
    assert reply["status"] == "ok", reply
    service.timings["wedged task answered after restart"] = time.monotonic() - started
    assert service.sh("ls", DROPIN_DIR).split() == ["test.conf"]


def test_stop_publishes_offline(service: Service) -> None:
    service.ensure_started()
    log_mark = len(service.broker.log())
    since_us = time.time_ns() // 1000
    started = time.monotonic()
    service.systemctl("stop", UNIT)
    service.timings["systemctl stop"] = time.monotonic() - started
    shown = service.show("ActiveState", "SubState", "Result", "ExecMainStatus")
    assert (shown["ActiveState"], shown["SubState"]) == ("inactive", "dead"), shown
    assert (shown["Result"], shown["ExecMainStatus"]) == ("success", "0"), shown
    # The daemon itself published the retained offline (not the broker's last will) ...
    client = f"edgeagent-{DEVICE}"
    broker_log = service.broker.log()[log_mark:]
    publish = rf"Received PUBLISH from {re.escape(client)} \(d0, q1, r1, m\d+, '{STATUS}', "
    assert re.search(publish + r"\.\.\. \(7 bytes\)\)", broker_log), broker_log
    assert f"Client {client} disconnected." in broker_log, broker_log
    # ... and a client that subscribes now gets it as the retained status.
    fresh = MqttProbe(service.broker.port)
    try:
        fresh.subscribe(STATUS)
        (message,) = fresh.wait_for(STATUS, timeout=10)
        assert (message.payload, message.retain) == (b"offline", True)
    finally:
        fresh.close()
    stopped = service.wait_journal(
        "stopped",
        lambda e: int(e["__REALTIME_TIMESTAMP"]) >= since_us and _text(e.get("EVENT")) == "stopped",
    )
    assert _text(stopped["DEVICE_ID"]) == DEVICE
