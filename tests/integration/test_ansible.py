"""The Ansible role in ansible/: lint and syntax (fast), and real rollouts to a fleet.

The container tests boot three systemd-nspawn "Pis" (tests/harness/hosts.py: real
systemd, sshd, own network namespace on the bridge 10.213.1.1/24, no internet) and one
emulated Raspberry Pi 4 (tests/harness/arm64.py: Debian bookworm arm64 under
qemu-system-aarch64 -cpu cortex-a72, SSH on a loopback port forward, a Pi's
/boot/firmware/cmdline.txt and device-tree model), start a real mosquitto with password
authentication on the bridge address, and run the real `ansible-playbook ansible/site.yml`
against them with the wheelhouses built once per session by scripts/build-fleet-wheelhouse.sh
(x86-64-v3, and pi4 with llama.cpp cross-compiled for aarch64) and the SmolLM2 test model:

1. first run: changes on every host, all healthy, a fleet task is answered; pi3 takes its
   model from a site mirror (HTTP with byte ranges) and continues a download an earlier
   run left half done (a truncated .part) instead of starting over; the arm64 host
   is detected as pi4, installs the pi4 wheelhouse offline, gets cgroup_enable=memory on its
   cmdline.txt, is rebooted by the handler and has memory accounting afterwards, and
   answers the health gate's probe task;
2. second run: changed=0 on every host (the arm64 host too), nothing downloaded again;
3. a config change (a new action via -e) reloads the service one batch at a time (the
   nspawn hosts: the arm64 host adds nothing to this but minutes);
4. a pi5 profile on CPUs without its features (x86_64, and the emulated Cortex-A72), and a
   missing wheelhouse, are refused;
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
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.fleet import ANSIBLE_DIR, ARM64_ENABLED, ansible_env, arm64_harness, report_timing
from support.mosquitto import Mosquitto
from support.prebuild import hosts_harness, hosts_unavailable
from support.range_http import RangeServer

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeagent"
PROFILE = "x86-64-v3"
HOSTS = ("pi1", "pi2", "pi3")
# The emulated Raspberry Pi 4 (qemu, arm64), last in the inventory.
ARM = "pi-arm"
ARM_MODEL = "Raspberry Pi 4 Model B Rev 1.5"
ARM_N_BATCH = 32
ARM_PROBE_TIMEOUT_S = 600
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
# Run in the emulated Pi: which of three addresses accept a TCP connection.
REACH = """
import socket, sys
def reaches(address, port):
    try:
        socket.create_connection((address, int(port)), timeout=3).close()
        return True
    except OSError:
        return False
print(*(reaches(a, p) for a, p in zip(sys.argv[1::2], sys.argv[2::2], strict=True)))
"""
# The fleet's model tiers (name, min_memtotal_mb), largest first, like the role's defaults.
TEST_TIERS = (("test-large", 3072), ("test-small", 0))
# pi3's model comes from the site mirror; an earlier run got this much of it (a .part).
PART_BYTES = 40 * 1024 * 1024
MODEL_DIR = "/var/lib/edgeagent/models"
DPHYS_CONF = "# /etc/dphys-swapfile\nCONF_SWAPSIZE=100\n#CONF_MAXSWAP=2048\n"
DPHYS_UNIT = "[Unit]\nDescription=stand-in for dphys-swapfile\n[Service]\nType=oneshot\nExecStart=/bin/true\nRemainAfterExit=yes\n"


# --------------------------------------------------------------------------- tools


# --------------------------------------------------------------------------- fast checks


def test_ansible_lint_production_profile(ansible_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ansible_bin / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=ansible_env(ansible_bin, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.parametrize("playbook", ["site.yml", "broker.yml"])
def test_playbook_syntax_check(ansible_bin: Path, tmp_path: Path, playbook: str) -> None:
    proc = subprocess.run(
        [
            str(ansible_bin / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(ANSIBLE_DIR / "inventory" / "example" / "hosts.ini"),
            str(ANSIBLE_DIR / playbook),
        ],
        env=ansible_env(ansible_bin, tmp_path),
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
        env=ansible_env(ansible_bin, tmp_path),
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
    mirror: RangeServer
    model_name: str
    arm: Any = None  # the emulated Pi (harness.arm64.Arm64Host), None when switched off
    runs: dict[str, PlaybookRun] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """Every host of the inventory, in its order."""
        return (*HOSTS, ARM) if self.arm is not None else HOSTS

    def host(self, name: str) -> Any:
        return self.arm if name == ARM else self.hosts[name]

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
            env=ansible_env(self.ansible_bin, self.workdir),
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
        self.runs[label] = PlaybookRun(proc.returncode, output, seconds, recap)
        return self.runs[label]

    def on(
        self, name: str, *cmd: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.host(name).run(list(cmd), check=check, timeout=timeout)

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
    for name in fleet.names:
        with contextlib.suppress(Exception):
            parts += [
                f"--- {name} journal ---",
                fleet.host(name).journal("edgeagent.service", lines=30),
            ]
    if fleet.arm is not None:
        parts += [f"--- {ARM} console ---", fleet.arm.console_tail(20)]
    return "\n".join(parts)


@pytest.fixture(scope="session")
def container_support() -> None:
    """Skip (before anything is built) where the test hosts cannot run."""
    if (reason := hosts_unavailable()) is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def arm64_host_image(request: pytest.FixtureRequest) -> Any:
    """The emulated Pi's image and pi4 wheelhouse, or None when it is switched off."""
    if not ARM64_ENABLED:
        return None
    request.getfixturevalue("pi_wheelhouse")
    return request.getfixturevalue("arm64_image")


@pytest.fixture(scope="module")
def fleet(
    container_support: None,
    tmp_path_factory: pytest.TempPathFactory,
    ansible_bin: Path,
    fleet_wheelhouse: Path,
    arm64_host_image: Any,
    model_path: Path,
    debian_mirror: Path,
) -> Iterator[Fleet]:
    harness = hosts_harness()
    workdir = tmp_path_factory.mktemp("fleet")
    model_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    password = secrets.token_urlsafe(16)
    started = time.monotonic()
    arm: Any = None
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
            if arm64_host_image is not None:
                arm = _boot_arm64_host(arm64_host_image, workdir, hosts.bridge_address, broker.port)
            www = workdir / "www"
            www.mkdir()
            (www / "debian").symlink_to(debian_mirror)
            with (
                http_server(www, hosts.bridge_address) as base_url,
                _site_mirror(workdir, model_path, hosts.bridge_address) as mirror,
            ):
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
                    # The model by tier, as in production (defaults/main.yml): two tiers
                    # of the one test model, told apart by name, chosen from each host's
                    # memory (the nspawn hosts see this machine's, the emulated Pi 2 GB).
                    "edgeagent_model_tiers": [
                        {
                            "name": tier_name,
                            "min_memtotal_mb": min_mb,
                            "filename": model_path.name,
                            "sha256": model_sha256,
                        }
                        for tier_name, min_mb in TEST_TIERS
                    ],
                    "edgeagent_model_tier_src_dir": str(model_path.parent),
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
                        # The other way to get the model: from the site's mirror.
                        host_vars |= {
                            "edgeagent_model_mirror_url": mirror.url,
                            # And a Raspberry Pi OS option on a (fake) boot partition.
                            "edgeagent_enable_memory_cgroup": True,
                            "edgeagent_reboot_allowed": False,
                            "edgeagent_swap_mb": 512,
                        }
                    (inventory_dir / "host_vars" / f"{name}.yml").write_text(
                        json.dumps(host_vars, indent=2)
                    )
                if arm is not None:
                    _add_arm64_host(arm, inventory, inventory_dir / "host_vars")
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
                _seed_partial_download(hosts["pi3"], workdir, model_path)
                hosts["pi3"].run(["mkdir", "-p", "/boot/firmware"])
                hosts["pi3"].run(
                    ["sh", "-c", f"printf '%s' '{CMDLINE}' > /boot/firmware/cmdline.txt"]
                )
                yield Fleet(
                    hosts,
                    workdir,
                    inventory,
                    ansible_bin,
                    broker,
                    model_sha256,
                    mirror,
                    model_path.name,
                    arm,
                )
        finally:
            artifacts = Path(os.environ.get("EDGEAGENT_TEST_ARTIFACTS", CACHE / "test-artifacts"))
            artifacts.mkdir(parents=True, exist_ok=True)
            if arm is not None:
                with contextlib.suppress(Exception):
                    (artifacts / f"journal-{ARM}.txt").write_text(arm.journal())
                with contextlib.suppress(Exception):
                    shutil.copyfile(arm.console_log, artifacts / f"console-{ARM}.txt")
                arm.stop()
            broker.stop()
            with contextlib.suppress(Exception):
                for name in HOSTS:
                    (artifacts / f"journal-{name}.txt").write_text(hosts[name].journal())


def _site_mirror(workdir: Path, model_path: Path, address: str) -> RangeServer:
    """The site's model mirror on the bridge: static files with byte ranges, like nginx."""
    (workdir / "mirror").mkdir()
    (workdir / "mirror" / model_path.name).symlink_to(model_path)
    return RangeServer(workdir / "mirror", address=address)


def _seed_partial_download(host: Any, workdir: Path, model_path: Path) -> None:
    """The first PART_BYTES of the model in <model>.part: a download an earlier run left."""
    part = workdir / "model.part"
    with model_path.open("rb") as whole:
        part.write_bytes(whole.read(PART_BYTES))
    host.run(["mkdir", "-p", MODEL_DIR])
    host.copy_in(part, f"{MODEL_DIR}/{model_path.name}.part")


def _boot_arm64_host(image: Any, workdir: Path, broker_address: str, broker_port: int) -> Any:
    """Boot the emulated Pi 4; the broker on the bridge is 10.0.2.100:1883 for it."""
    harness = arm64_harness()
    forward = harness.GuestForward(1883, broker_address, broker_port)
    arm = harness.Arm64Host(ARM, workdir / "arm64", image, model=ARM_MODEL, forwards=[forward])
    arm.start()
    report_timing("boot the arm64 host (emulated Pi 4)", arm.timings["boot"])
    try:
        # Before the rollout: a Raspberry Pi kernel without cgroup_enable=memory.
        assert _memory_controller_enabled(arm) is False, arm.run(["cat", "/proc/cgroups"]).stdout
        assert arm.run(["uname", "-m"]).stdout.strip() == "aarch64"
        # qemu's user network with restrict=on: the broker through its forward, nothing else:
        # not a service on the test machine's loopback (10.0.2.2 in slirp terms), not the
        # bridge directly.
        with socket.create_server(("127.0.0.1", 0)) as loopback:
            targets = [harness.SERVICE_ADDRESS, "1883", "10.0.2.2", str(loopback.getsockname()[1])]
            targets += [broker_address, str(broker_port)]
            reach = arm.run(["python3", "-c", REACH, *targets])
        assert reach.stdout.split() == ["True", "False", "False"], reach.stdout
    except BaseException:
        arm.stop()
        raise
    return arm


def _add_arm64_host(arm: Any, inventory: Path, host_vars_dir: Path) -> None:
    """The emulated Pi joins the pis group, last; everything it needs differently."""
    text = inventory.read_text()
    line = f"{ARM} ansible_host=127.0.0.1 ansible_port={arm.ssh_port}\n"
    inventory.write_text(text.replace("\n\n[pis:vars]", f"\n{line}\n[pis:vars]", 1))
    service = arm64_harness().SERVICE_ADDRESS
    host_vars = {
        "edgeagent_device_id": f"dev-{ARM}",
        "ansible_ssh_private_key_file": str(arm.ssh_key_path),
        # The broker on the bridge, through the qemu user network's guest forward.
        "edgeagent_mqtt_host": service,
        "edgeagent_mqtt_port": 1883,
        # One thread: llama.cpp's threads spin-wait for each other, and two of them on the
        # emulated cores, which share the machine's two with the other tests, load and
        # answer several times slower than one (the load-time probe alone: minutes).
        "edgeagent_model_threads": 1,
        # Emulation runs ~18x slower than this machine: small decode batches keep each
        # llama_decode call (the watchdog's unit of progress) well below WatchdogSec.
        "edgeagent_model_n_batch": ARM_N_BATCH,
        # Starting Python, numpy and llama.cpp takes a minute or more under emulation, and a
        # decode batch may take longer than the unit's 30 s watchdog on a loaded machine.
        "edgeagent_service_overrides": {"TimeoutStartSec": 900, "WatchdogSec": 180},
        # cmdline.txt on the (emulated) boot partition, and a real reboot from the handler.
        "edgeagent_enable_memory_cgroup": True,
        "edgeagent_reboot_allowed": True,
        "edgeagent_reboot_timeout_s": 900,
        "edgeagent_health_delay_s": 3,
        "edgeagent_health_retries": 200,
        "edgeagent_probe_timeout_s": ARM_PROBE_TIMEOUT_S,
    }
    (host_vars_dir / f"{ARM}.yml").write_text(json.dumps(host_vars, indent=2))


def _memory_controller_enabled(host: Any) -> bool | None:
    """The `enabled` column of the memory line of /proc/cgroups."""
    for line in host.run(["cat", "/proc/cgroups"]).stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == "memory":
            return fields[3] == "1"
    return None


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
    run = fleet.playbook(label="first", timeout=3600)
    report_timing(f"first deployment to {len(fleet.names)} hosts", run.seconds)
    assert run.returncode == 0, _diagnostics(fleet, run)
    assert set(run.recap) == set(fleet.names), run.output[-3000:]
    for name in fleet.names:
        assert run.recap[name]["failed"] == 0
        assert run.recap[name]["changed"] > 0, f"{name}: {run.recap[name]}"
    # Batches of one (34% of 3 or 4 hosts), in inventory order.
    assert run.output.count("PLAY [Deploy edgeagent]") == len(fleet.names)

    for name in fleet.names:
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
        # The tier follows the host's memory (MemTotal in MB, as Ansible's fact has it).
        meminfo = fleet.on(name, "cat", "/proc/meminfo").stdout
        memtotal = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
        assert memtotal is not None
        tier = next(t for t, min_mb in TEST_TIERS if int(memtotal.group(1)) // 1024 >= min_mb)
        assert f"# Model: {Path(model.group(1)).name}, tier {tier} (from the memory)." in config, (
            name
        )
        assert fleet.on(name, "id", "-u", "edgeagent").returncode == 0
        shell = fleet.on(name, "getent", "passwd", "edgeagent").stdout.strip().split(":")[-1]
        assert shell == "/usr/sbin/nologin"
        status = fleet.on(name, *CLI_ENV, EDGEAGENT_BIN, "status", "--config", CONFIG, timeout=300)
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
    # pi3's model came from the site mirror, continued from the .part an earlier run left:
    # one request for the rest of the file, nothing sent twice, no .part left.
    size = fleet.on("pi3", "stat", "-c", "%s", f"{MODEL_DIR}/{fleet.model_name}").stdout
    assert [(s.path, s.range, s.status, s.sent) for s in fleet.mirror.log] == [
        (f"/{fleet.model_name}", f"bytes={PART_BYTES}-", 206, int(size) - PART_BYTES)
    ]
    assert f"continued after {PART_BYTES} bytes" in run.output
    leftovers = fleet.on("pi3", "find", MODEL_DIR, "-name", "*.part").stdout
    assert leftovers == ""

    # A task on the fleet topic (shared subscription), sent from a host with an MQTT v5
    # response topic by `edgeagent submit --fleet`, is answered by one of the hosts (the
    # emulated Pi is among them: give it time).
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
        str(ARM_PROBE_TIMEOUT_S),
        "Sensor report: everything is normal in the greenhouse.",
        timeout=ARM_PROBE_TIMEOUT_S + 60,
    )
    answer = json.loads(reply.stdout)
    assert answer["status"] == "ok", answer
    assert answer["device"] in {f"dev-{name}" for name in fleet.names}
    _mark_failed(request, "")


@pytest.mark.container
@pytest.mark.slow
def test_first_deployment_on_the_emulated_pi(fleet: Fleet, request: pytest.FixtureRequest) -> None:
    """What the first run did on the arm64 host: profile, offline pi4 wheels, reboot, probe."""
    if fleet.arm is None:
        pytest.skip("the emulated Raspberry Pi is switched off (EDGEAGENT_TEST_ARM64=0)")
    _skip_if_failed(request)
    run = fleet.runs["first"]
    # The role told the Cortex-A72 apart (CPU part 0xd08, no dotprod/fp16) and read the
    # board from the device tree.
    assert f"{ARM}: CPU profile pi4 ({ARM_MODEL})" in run.output, run.output[-4000:]
    installed = fleet.on(ARM, "cat", "/opt/edgeagent/venv/edgeagent-installed-from.txt").stdout
    assert installed.startswith("wheelhouse pi4\n"), installed
    assert "llama_cpp_python-" in installed
    assert "-linux_aarch64.whl" in installed
    # Offline: every wheel came from the wheelhouse copied to the host (pip --no-index).
    listing = fleet.on(ARM, "ls", "/opt/edgeagent/wheelhouse").stdout.split()
    wheels = [name for name in listing if name.endswith(".whl")]
    assert any(w.startswith("llama_cpp_python-") and w.endswith("_aarch64.whl") for w in wheels)
    assert all(w.endswith(("_aarch64.whl", "-none-any.whl")) for w in wheels), wheels
    machine = fleet.on(
        ARM,
        "/opt/edgeagent/venv/bin/python",
        "-c",
        "import llama_cpp, platform; print(platform.machine(), llama_cpp.__version__)",
        timeout=300,
    )
    assert machine.stdout.split()[0] == "aarch64"

    # cmdline.txt got the memory cgroup, the handler rebooted the host for real, and the
    # kernel now accounts the service's memory.
    assert "RUNNING HANDLER [edgeagent : Reboot for the kernel command line]" in run.output
    assert fleet.arm.boots == 2, fleet.arm.console_tail()
    cmdline = fleet.on(ARM, "cat", "/boot/firmware/cmdline.txt").stdout
    assert (
        cmdline
        == fleet.arm.initial_cmdline.rstrip("\n") + " cgroup_enable=memory cgroup_memory=1\n"
    )
    proc_cmdline = fleet.on(ARM, "cat", "/proc/cmdline").stdout.split()
    assert "cgroup_enable=memory" in proc_cmdline
    assert "cgroup_disable=memory" not in proc_cmdline
    assert _memory_controller_enabled(fleet.arm) is True
    show = fleet.on(
        ARM,
        "systemctl",
        "show",
        "edgeagent.service",
        "-p",
        "MemoryCurrent",
        "-p",
        "MemoryMax",
        "-p",
        "ControlGroup",
    ).stdout
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert props["MemoryCurrent"].isdigit(), props  # "[not set]" without the controller
    assert int(props["MemoryCurrent"]) > 50 * 2**20, props  # the model is resident
    assert props["MemoryMax"] == str(1500 * 2**20), props
    memory_max = fleet.on(ARM, "cat", f"/sys/fs/cgroup{props['ControlGroup']}/memory.max").stdout
    assert memory_max.strip() == str(1500 * 2**20)
    # The daemon runs since the reboot and answered the health gate's probe there.
    boot_id = fleet.on(ARM, "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    probes = fleet.on(
        ARM, "journalctl", "-u", "edgeagent.service", "-b", "0", "-o", "json", "--no-pager"
    ).stdout
    entries = [json.loads(line) for line in probes.splitlines() if line.startswith("{")]
    answered = [e for e in entries if str(e.get("TASK_ID", "")).startswith("rollout-probe-")]
    assert answered, [_message(e) for e in entries][-20:]
    assert all(e["_BOOT_ID"].replace("-", "") == boot_id.replace("-", "") for e in answered)
    # Started once, after the reboot: the role does not restart the daemon (loading the
    # model) seconds before rebooting the host.
    every_boot = fleet.on(
        ARM, "journalctl", "-u", "edgeagent.service", "-o", "json", "--no-pager"
    ).stdout
    messages = [_message(json.loads(x)) for x in every_boot.splitlines() if x.startswith("{")]
    loads = [m for m in messages if m.startswith("model loaded")]
    assert len(loads) == 1, loads
    healthy = re.search(rf"{ARM} is healthy: .* in ([\d.]+) ms", run.output)
    assert healthy is not None, run.output[-4000:]
    report_timing("probe answer on the arm64 host", float(healthy.group(1)) / 1000)
    report_timing("arm64 host boots (s each)", max(fleet.arm.boot_seconds))


@pytest.mark.container
@pytest.mark.slow
def test_second_run_changes_nothing(fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _skip_if_failed(request)
    _mark_failed(request, "second run")
    downloads = len(fleet.mirror.log)
    run = fleet.playbook(label="second", timeout=3600)
    report_timing(f"second deployment to {len(fleet.names)} hosts (no changes)", run.seconds)
    assert run.returncode == 0, _diagnostics(fleet, run)
    assert set(run.recap) == set(fleet.names)
    for name in fleet.names:
        assert run.recap[name]["changed"] == 0, f"{name}: {run.recap[name]}\n{run.output[-4000:]}"
        assert run.recap[name]["failed"] == 0
    # The model on pi3 is there and has its sha256: nothing is asked of the mirror.
    assert len(fleet.mirror.log) == downloads
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
    # The nspawn hosts only: batch order is the point here, and the emulated Pi would add
    # minutes without telling more.
    run = fleet.playbook(
        "--limit",
        ",".join(HOSTS),
        "-e",
        json.dumps({"edgeagent_extra_actions": [action]}),
        label="config-change",
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
    if fleet.arm is not None:
        # The same on the emulated Pi 4: aarch64, but a Cortex-A72 without dotprod/fp16.
        run = fleet.playbook(
            "--limit", ARM, "-e", "edgeagent_cpu_profile=pi5", label="pi5-guard-arm64"
        )
        assert run.returncode != 0
        text = " ".join(run.output.split())
        assert f"CPU profile pi5 does not fit {ARM} (aarch64, {ARM_MODEL}; missing" in text, text
        missing = re.search(r"missing CPU features: ([a-z ]+)\)", text)
        assert missing is not None, text[-3000:]
        assert sorted(missing.group(1).split()) == ["asimddp", "asimdhp"]
        assert "a pi5 build never runs on a Pi 4" in run.output
        assert run.recap[ARM]["changed"] == 0
        assert run.recap[ARM]["failed"] == 1
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
    for untouched in ("pi3", ARM):
        assert untouched not in run.recap or run.recap[untouched]["ok"] == 0, run.recap
    assert 'name = "close_vent"' in fleet.on("pi1", "cat", CONFIG).stdout
    assert 'name = "close_vent"' not in fleet.on("pi3", "cat", CONFIG).stdout
    assert "not-the-password" not in run.output
