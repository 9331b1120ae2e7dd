"""The Ansible role in ansible/: lint and syntax (fast), and real rollouts to three hosts.

The container tests boot three systemd-nspawn "Pis" (tests/harness/hosts.py: real
systemd, sshd, own network namespace on the bridge 10.213.0.1/24, no internet), start a
real mosquitto with password authentication on the bridge address, and run the real
`ansible-playbook ansible/site.yml` against them with the wheelhouse built once per
session by scripts/build-fleet-wheelhouse.sh and the SmolLM2 test model:

1. first run: changes on every host, all healthy, a fleet task is answered;
2. second run: changed=0 on every host;
3. a config change (a new action via -e) reloads the service one batch at a time;
4. a pi5 profile on a CPU without its features, and a missing wheelhouse, are refused;
5. a host whose health gate fails (wrong broker password) stops the rollout.

Timings of the runs are printed and written to $EDGEAGENT_TEST_ARTIFACTS (default: the
session's temporary directory) as ansible-timings.json.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.fleet import report_timing
from support.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
REQUIREMENTS_DEV = ANSIBLE_DIR / "requirements-dev.txt"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeagent"
PROFILE = "x86-64-v3"
HOSTS = ("pi1", "pi2", "pi3")
# Its own bridge and subnet, so it can run while other harness users hold the default.
BRIDGE = "ea-fleet"
SUBNET = "10.213.1"
BROKER_USER = "edgeagent"
EDGEAGENT_BIN = "/opt/edgeagent/venv/bin/edgeagent"
CONFIG = "/etc/edgeagent/config.toml"
CLI_ENV = ["env", "EDGEAGENT_MQTT__PASSWORD_FILE=/etc/edgeagent/mqtt_password"]
RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+"
    r"rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=0123abcd-02 rootfstype=ext4 rootwait\n"
DPHYS_CONF = "# /etc/dphys-swapfile\nCONF_SWAPSIZE=100\n#CONF_MAXSWAP=2048\n"
DPHYS_UNIT = "[Unit]\nDescription=stand-in for dphys-swapfile\n[Service]\nType=oneshot\nExecStart=/bin/true\nRemainAfterExit=yes\n"


# --------------------------------------------------------------------------- tools


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def ansible_bin() -> Path:
    """A venv with exactly ansible/requirements-dev.txt, cached by the file's hash."""
    digest = hashlib.sha256(REQUIREMENTS_DEV.read_bytes()).hexdigest()[:12]
    venv = CACHE / "ansible-venv" / digest
    ready = venv / ".installed"
    if not ready.exists():
        if venv.exists():
            shutil.rmtree(venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(_venv_python(venv)),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(REQUIREMENTS_DEV),
            ],
            check=True,
        )
        ready.write_text(digest + "\n")
        for other in venv.parent.iterdir():  # older pins
            if other != venv:
                shutil.rmtree(other, ignore_errors=True)
    return venv / "bin"


def _ansible_env(ansible_bin: Path, workdir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{ansible_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
        # Throwaway hosts reuse addresses: never share SSH masters with another run.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("ANSIBLE_INVENTORY", None)
    return env


# --------------------------------------------------------------------------- fast checks


def test_ansible_lint_production_profile(ansible_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ansible_bin / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=_ansible_env(ansible_bin, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_playbook_syntax_check(ansible_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(ansible_bin / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(ANSIBLE_DIR / "inventory" / "example" / "hosts.ini"),
            str(ANSIBLE_DIR / "site.yml"),
        ],
        env=_ansible_env(ansible_bin, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_inventory_has_device_ids_and_broker(ansible_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(ansible_bin / "ansible-inventory"),
            "-i",
            str(ANSIBLE_DIR / "inventory" / "example" / "hosts.ini"),
            "--list",
        ],
        env=_ansible_env(ansible_bin, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    inventory = json.loads(proc.stdout)
    hostvars = inventory["_meta"]["hostvars"]
    assert inventory["pis"]["hosts"]
    for host in inventory["pis"]["hosts"]:
        assert hostvars[host]["edgeagent_device_id"]
        assert hostvars[host]["edgeagent_mqtt_host"]


# --------------------------------------------------------------------------- services


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@contextlib.contextmanager
def http_server(directory: Path, address: str) -> Iterator[str]:
    """Serves directory on the bridge address (the hosts' only "internet")."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the fleet


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Fleet:
    hosts: Any
    workdir: Path
    inventory: Path
    ansible_bin: Path
    broker: Mosquitto
    model_sha256: str

    def playbook(self, *extra: str, label: str, timeout: float = 1800) -> PlaybookRun:
        log = self.workdir / f"ansible-{label}.log"
        started = time.monotonic()
        proc = subprocess.run(
            [
                str(self.ansible_bin / "ansible-playbook"),
                "-i",
                str(self.inventory),
                str(ANSIBLE_DIR / "site.yml"),
                *extra,
            ],
            env=_ansible_env(self.ansible_bin, self.workdir),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = time.monotonic() - started
        output = proc.stdout + proc.stderr
        log.write_text(output)
        # The rollout_timer callback's per-host lines: "host pi1: 12.3 s (from ...)".
        for host, host_seconds in re.findall(
            r"^host (\S+): ([\d.]+) s \(", proc.stdout, re.MULTILINE
        ):
            report_timing(f"{label}: host {host}", float(host_seconds))
        recap = {
            m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
            for m in RECAP_RE.finditer(proc.stdout)
        }
        return PlaybookRun(proc.returncode, output, seconds, recap)

    def on(
        self, name: str, *cmd: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.hosts[name].run(list(cmd), check=check, timeout=timeout)

    def journal(self, name: str, since_us: int) -> list[dict[str, Any]]:
        """The host's edgeagent.service journal entries (JSON) since a realtime in µs."""
        directory = self.hosts[name].root / "var" / "log" / "journal"
        out = subprocess.run(
            [
                "journalctl",
                "-D",
                str(directory),
                "-u",
                "edgeagent.service",
                "-o",
                "json",
                "--no-pager",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) >= since_us]


def _message(entry: dict[str, Any]) -> str:
    value = entry.get("MESSAGE", "")
    return value if isinstance(value, str) else bytes(value).decode(errors="replace")


def _diagnostics(fleet: Fleet, run: PlaybookRun) -> str:
    parts = [run.output[-6000:], "--- mosquitto ---", fleet.broker.log()[-2000:]]
    for name in HOSTS:
        with contextlib.suppress(Exception):
            parts += [
                f"--- {name} journal ---",
                fleet.hosts[name].journal("edgeagent.service", lines=30),
            ]
    return "\n".join(parts)


def _harness() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import hosts  # noqa: PLC0415 - imported only where containers are wanted

    return hosts


@pytest.fixture(scope="session")
def container_support() -> None:
    """Skip (before anything is built) where the test hosts cannot run."""
    if os.geteuid() != 0:
        pytest.skip("the fleet tests boot systemd-nspawn containers: they need root")
    if shutil.which("systemd-nspawn") is None and shutil.which("apt-get") is None:
        pytest.skip("systemd-nspawn is missing (apt-get install systemd-container)")
    if (reason := _harness().probe()) is not None:
        pytest.skip(reason)
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (scripts/install-system-deps.sh)")


@pytest.fixture(scope="module")
def fleet(
    container_support: None,
    tmp_path_factory: pytest.TempPathFactory,
    ansible_bin: Path,
    fleet_wheelhouse: Path,
    model_path: Path,
    debian_mirror: Path,
) -> Iterator[Fleet]:
    harness = _harness()
    workdir = tmp_path_factory.mktemp("fleet")
    model_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    password = secrets.token_urlsafe(16)
    started = time.monotonic()
    with harness.TestHosts(list(HOSTS), workdir / "hosts", bridge=BRIDGE, subnet=SUBNET) as hosts:
        report_timing("boot 3 hosts (incl. rootfs)", time.monotonic() - started)
        broker = Mosquitto(
            workdir / "broker",
            address=hosts.bridge_address,
            users={BROKER_USER: password},
            persistence=False,
        )
        broker.start()
        try:
            www = workdir / "www"
            www.mkdir()
            (www / model_path.name).symlink_to(model_path)
            (www / "debian").symlink_to(debian_mirror)
            with http_server(www, hosts.bridge_address) as base_url:
                for name in HOSTS:  # the hosts' package mirror: ours, on the bridge
                    hosts[name].run(
                        [
                            "sh",
                            "-c",
                            'rm -f /etc/apt/sources.list.d/*; echo "$0" > /etc/apt/sources.list',
                            f"deb [trusted=yes] {base_url}/debian ./",
                        ]
                    )
                inventory_dir = workdir / "inventory"
                (inventory_dir / "group_vars").mkdir(parents=True)
                (inventory_dir / "host_vars").mkdir()
                inventory = hosts.write_inventory(inventory_dir / "hosts.ini", group="pis")
                group_vars = {
                    "edgeagent_mqtt_host": hosts.bridge_address,
                    "edgeagent_mqtt_port": broker.port,
                    "edgeagent_mqtt_username": BROKER_USER,
                    "edgeagent_mqtt_password": password,
                    "edgeagent_mqtt_heartbeat_s": 2,
                    "edgeagent_wheelhouse_dir": str(fleet_wheelhouse),
                    "edgeagent_model_src": str(model_path),
                    "edgeagent_model_sha256": model_sha256,
                    "edgeagent_model_threads": 1,
                    "edgeagent_model_n_ctx": 2048,
                    "edgeagent_model_max_tokens": 128,
                    "edgeagent_health_delay_s": 1,
                    "edgeagent_health_retries": 60,
                    "edgeagent_probe_timeout_s": 60,
                }
                (inventory_dir / "group_vars" / "pis.yml").write_text(
                    json.dumps(group_vars, indent=2)
                )
                for name in HOSTS:
                    host_vars: dict[str, Any] = {"edgeagent_device_id": f"dev-{name}"}
                    if name == "pi3":
                        # The other way to get the model: each host downloads it.
                        host_vars |= {
                            "edgeagent_model_src": "",
                            "edgeagent_model_url": f"{base_url}/{model_path.name}",
                            # And a Raspberry Pi OS option on a (fake) boot partition.
                            "edgeagent_enable_memory_cgroup": True,
                            "edgeagent_reboot_allowed": False,
                            "edgeagent_swap_mb": 512,
                        }
                    (inventory_dir / "host_vars" / f"{name}.yml").write_text(
                        json.dumps(host_vars, indent=2)
                    )
                # pi3 also plays Raspberry Pi OS: a boot partition and dphys-swapfile
                # (a stand-in unit: the real one would allocate swap in the container).
                hosts["pi3"].run(["sh", "-c", f"printf '%s' '{DPHYS_CONF}' > /etc/dphys-swapfile"])
                hosts["pi3"].run(
                    [
                        "sh",
                        "-c",
                        f"printf '%s' '{DPHYS_UNIT}' > /etc/systemd/system/dphys-swapfile.service",
                    ]
                )
                hosts["pi3"].run(["systemctl", "daemon-reload"])
                hosts["pi3"].run(["mkdir", "-p", "/boot/firmware"])
                hosts["pi3"].run(
                    ["sh", "-c", f"printf '%s' '{CMDLINE}' > /boot/firmware/cmdline.txt"]
                )
                yield Fleet(hosts, workdir, inventory, ansible_bin, broker, model_sha256)
        finally:
            broker.stop()
            artifacts = Path(os.environ.get("EDGEAGENT_TEST_ARTIFACTS", CACHE / "test-artifacts"))
            with contextlib.suppress(Exception):
                for name in HOSTS:
                    (artifacts / f"journal-{name}.txt").write_text(hosts[name].journal())


def _skip_if_failed(request: pytest.FixtureRequest) -> None:
    failed = getattr(request.config, "_ansible_fleet_failed", None)
    if failed:
        pytest.skip(f"an earlier step failed: {failed}")


def _mark_failed(request: pytest.FixtureRequest, what: str) -> None:
    request.config._ansible_fleet_failed = what  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the rollout


@pytest.mark.container
@pytest.mark.slow
def test_first_deployment(fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _mark_failed(request, "first deployment")
    run = fleet.playbook(label="first")
    report_timing("first deployment to 3 hosts", run.seconds)
    assert run.returncode == 0, _diagnostics(fleet, run)
    assert set(run.recap) == set(HOSTS), run.output[-3000:]
    for name in HOSTS:
        assert run.recap[name]["failed"] == 0
        assert run.recap[name]["changed"] > 0, f"{name}: {run.recap[name]}"
    # Batches of one (34% of 3 hosts), in inventory order.
    assert run.output.count("PLAY [Deploy edgeagent]") == 3

    for name in HOSTS:
        assert (
            fleet.on(name, "systemctl", "is-active", "edgeagent.service").stdout.strip() == "active"
        )
        assert (
            fleet.on(name, "systemctl", "is-enabled", "edgeagent.service").stdout.strip()
            == "enabled"
        )
        fleet.on(name, EDGEAGENT_BIN, "validate-config", CONFIG)
        stat = fleet.on(
            name, "stat", "-c", "%U:%G %a", "/etc/edgeagent/mqtt_password"
        ).stdout.split()
        assert stat == ["root:root", "600"], name
        stat = fleet.on(name, "stat", "-c", "%U:%G %a", CONFIG).stdout.split()
        assert stat == ["root:edgeagent", "640"], name
        config = fleet.on(name, "cat", CONFIG).stdout
        assert f'id = "dev-{name}"' in config
        model = re.search(r'^path = "(.+)"$', config, re.MULTILINE)
        assert model is not None
        assert fleet.on(name, "sha256sum", model.group(1)).stdout.split()[0] == fleet.model_sha256
        assert fleet.on(name, "id", "-u", "edgeagent").returncode == 0
        shell = fleet.on(name, "getent", "passwd", "edgeagent").stdout.strip().split(":")[-1]
        assert shell == "/usr/sbin/nologin"
        status = fleet.on(name, *CLI_ENV, EDGEAGENT_BIN, "status", "--config", CONFIG)
        assert json.loads(status.stdout)["status"] == "online"
    # The secret is nowhere in Ansible's output.
    group_vars = json.loads((fleet.inventory.parent / "group_vars" / "pis.yml").read_text())
    assert group_vars["edgeagent_mqtt_password"] not in run.output
    # Raspberry Pi OS option on pi3: the kernel command line got the memory cgroup.
    cmdline = fleet.on("pi3", "cat", "/boot/firmware/cmdline.txt").stdout
    assert cmdline == CMDLINE.rstrip("\n") + " cgroup_enable=memory cgroup_memory=1\n"
    swap = fleet.on("pi3", "cat", "/etc/dphys-swapfile").stdout
    assert "CONF_SWAPSIZE=512\n" in swap
    assert "CONF_MAXSWAP=2048\n" in swap
    active = fleet.on("pi3", "systemctl", "is-active", "dphys-swapfile.service", check=False)
    assert active.stdout.strip() == "active"  # restarted by the handler

    # A task on the fleet topic (shared subscription), sent from a host with an MQTT v5
    # response topic by `edgeagent submit --fleet`, is answered by one of the hosts.
    reply = fleet.on(
        "pi1",
        *CLI_ENV,
        EDGEAGENT_BIN,
        "submit",
        "--config",
        CONFIG,
        "--fleet",
        "--action",
        "notify",
        "--action",
        "no_action",
        "--timeout",
        "90",
        "Sensor report: everything is normal in the greenhouse.",
        timeout=120,
    )
    answer = json.loads(reply.stdout)
    assert answer["status"] == "ok", answer
    assert answer["device"] in {f"dev-{name}" for name in HOSTS}
    _mark_failed(request, "")


@pytest.mark.container
@pytest.mark.slow
def test_second_run_changes_nothing(fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _skip_if_failed(request)
    _mark_failed(request, "second run")
    run = fleet.playbook(label="second")
    report_timing("second deployment to 3 hosts (no changes)", run.seconds)
    assert run.returncode == 0, _diagnostics(fleet, run)
    assert set(run.recap) == set(HOSTS)
    for name in HOSTS:
        assert run.recap[name]["changed"] == 0, f"{name}: {run.recap[name]}\n{run.output[-4000:]}"
        assert run.recap[name]["failed"] == 0
    _mark_failed(request, "")


@pytest.mark.container
@pytest.mark.slow
def test_config_change_reloads_one_batch_at_a_time(
    fleet: Fleet, request: pytest.FixtureRequest
) -> None:
    _skip_if_failed(request)
    _mark_failed(request, "config change")
    since_us = time.time_ns() // 1000
    action = {
        "name": "open_vent",
        "description": "Open the roof vent of the greenhouse by a percentage.",
        "schema": {
            "type": "object",
            "properties": {"percent": {"type": "integer", "minimum": 0, "maximum": 100}},
            "required": ["percent"],
        },
    }
    run = fleet.playbook(
        "-e", json.dumps({"edgeagent_extra_actions": [action]}), label="config-change"
    )
    report_timing("config change rollout to 3 hosts", run.seconds)
    assert run.returncode == 0, _diagnostics(fleet, run)
    for name in HOSTS:
        # config.toml and the reload handler; nothing that needs a restart changed.
        assert run.recap[name]["changed"] == 2, f"{name}: {run.recap[name]}"
    assert run.output.count("RUNNING HANDLER [edgeagent : Reload edgeagent]") == 3
    assert "RUNNING HANDLER [edgeagent : Restart edgeagent]" not in run.output

    reloaded: dict[str, int] = {}
    probed: dict[str, int] = {}
    for name in HOSTS:
        entries = fleet.journal(name, since_us)
        messages = [_message(e) for e in entries]
        # A config-only change reloads (SIGHUP), it does not restart.
        assert not any(
            m.startswith(("Stopping edgeagent", "Started edgeagent")) for m in messages
        ), messages
        reloads = [
            int(e["__REALTIME_TIMESTAMP"])
            for e in entries
            if _message(e).startswith("configuration reloaded")
        ]
        assert len(reloads) == 1, f"{name}: {messages}"
        reloaded[name] = reloads[0]
        probes = [
            int(e["__REALTIME_TIMESTAMP"])
            for e in entries
            if str(e.get("TASK_ID", "")).startswith("rollout-probe-")
        ]
        assert probes, f"{name}: no probe task answered: {messages}"
        probed[name] = max(probes)
    # One batch at a time: a host is reloaded only after the previous one passed its gate.
    for before, after in itertools.pairwise(HOSTS):
        assert probed[before] < reloaded[after], (before, after, probed, reloaded)

    # The new action is live on every host.
    for name in HOSTS:
        reply = fleet.on(
            name,
            *CLI_ENV,
            EDGEAGENT_BIN,
            "submit",
            "--config",
            CONFIG,
            "--device",
            f"dev-{name}",
            "--action",
            "open_vent",
            "--timeout",
            "90",
            "It is too hot: open the vent halfway.",
            timeout=120,
        )
        assert json.loads(reply.stdout)["output"]["action"] == "open_vent"
    _mark_failed(request, "")


@pytest.mark.container
@pytest.mark.slow
def test_refuses_wrong_cpu_profile_and_missing_wheelhouse(
    fleet: Fleet, request: pytest.FixtureRequest
) -> None:
    _skip_if_failed(request)
    # A Pi 5 build on a CPU without dotprod/fp16 (here: x86_64) is refused before install.
    run = fleet.playbook("--limit", "pi1", "-e", "edgeagent_cpu_profile=pi5", label="pi5-guard")
    assert run.returncode != 0
    assert "a pi5 build never runs on a Pi 4" in run.output, run.output[-3000:]
    assert run.recap["pi1"]["changed"] == 0
    # No wheelhouse for the profile and building on the device not allowed: a clear stop.
    empty = fleet.workdir / "empty-wheelhouse"
    empty.mkdir(exist_ok=True)
    run = fleet.playbook(
        "--limit",
        "pi1",
        "-e",
        json.dumps({"edgeagent_wheelhouse_dir": str(empty), "edgeagent_source_build": False}),
        label="no-wheelhouse",
    )
    assert run.returncode != 0
    assert "No wheelhouse for CPU profile x86-64-v3" in run.output, run.output[-3000:]
    assert run.recap["pi1"]["changed"] == 0


@pytest.mark.container
@pytest.mark.slow
def test_failed_health_gate_stops_the_rollout(fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _skip_if_failed(request)
    # pi2 loses its broker access (a wrong password); the rollout of another config
    # change must update pi1, fail on pi2's health gate, and never touch pi3.
    host_vars = fleet.inventory.parent / "host_vars" / "pi2.yml"
    original = host_vars.read_text()
    broken = json.loads(original) | {"edgeagent_mqtt_password": "not-the-password"}
    host_vars.write_text(json.dumps(broken))
    action = {
        "name": "close_vent",
        "description": "Close the roof vent.",
        "schema": {"type": "object", "properties": {}},
    }
    try:
        run = fleet.playbook(
            "-e",
            json.dumps({"edgeagent_extra_actions": [action], "edgeagent_health_retries": 8}),
            label="failing-gate",
        )
    finally:
        host_vars.write_text(original)
    report_timing("rollout stopped by a failed health gate", run.seconds)
    assert run.returncode != 0, run.output[-4000:]
    assert "failed its health gate" in run.output
    assert run.recap["pi1"]["failed"] == 0
    assert run.recap["pi2"]["failed"] == 1
    assert "pi3" not in run.recap or run.recap["pi3"]["ok"] == 0, run.recap
    assert 'name = "close_vent"' in fleet.on("pi1", "cat", CONFIG).stdout
    assert 'name = "close_vent"' not in fleet.on("pi3", "cat", CONFIG).stdout
    assert "not-the-password" not in run.output
