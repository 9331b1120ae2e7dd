"""The container test-host harness itself: two real systemd hosts on a bridge."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness.hosts import BootError, TestHosts, probe

pytestmark = pytest.mark.container

# A client run inside a host: connect to HOST:PORT, send the hostname, print the reply.
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(socket.gethostname().encode() + b"\\n")
    print(s.makefile().readline().strip())
"""
BANNER = """
import socket, sys
with socket.create_connection((sys.argv[1], 22), timeout=5) as s:
    print(s.recv(64).decode().strip())
"""


def _skip_unless_possible() -> None:
    reason = probe()
    if reason is not None:
        pytest.skip(f"cannot boot test hosts: {reason}")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    _skip_unless_possible()
    with TestHosts(["pi1", "pi2"], tmp_path_factory.mktemp("hosts")) as booted:
        yield booted


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_systemd_runs_in_each_host(hosts):
    ids = set()
    for host in hosts:
        state = host.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        assert state in {"running", "degraded"}, (host.name, state, host.failed_units())
        assert host.run(["systemd-detect-virt", "--container"]).stdout.strip() == "systemd-nspawn"
        assert host.run(["hostname"]).stdout.strip() == host.name
        assert host.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
        ids.add(host.run(["cat", "/etc/machine-id"]).stdout.strip())
    assert len(ids) == len(hosts)


def test_each_host_has_its_own_journal(hosts):
    for host in hosts:
        mark = ["echo", f"MARK-{host.name}"]
        host.run(["systemd-run", "--wait", "--quiet", "--unit=harness-mark", *mark])
    for host in hosts:
        others = [f"MARK-{h.name}" for h in hosts if h is not host]
        assert _wait_for(lambda host=host: f"MARK-{host.name}" in host.journal("harness-mark"))
        text = host.journal("harness-mark")
        assert not any(mark in text for mark in others), text
        machine_id = host.run(["cat", "/etc/machine-id"]).stdout.strip()
        assert [p.name for p in (host.root / "var/log/journal").iterdir()] == [machine_id]


def test_hosts_reach_the_bridge_address(hosts):
    """A service the test starts on the bridge address is reachable from every host."""
    server = socket.create_server((hosts.bridge_address, 0))
    port = server.getsockname()[1]
    seen = []

    def serve():
        for _ in hosts:
            conn, _addr = server.accept()
            with conn:
                name = conn.makefile().readline().strip()
                seen.append(name)
                conn.sendall(f"hello {name}\n".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        for host in hosts:
            out = host.run(["python3", "-c", CLIENT, hosts.bridge_address, str(port)], timeout=15)
            assert out.stdout.strip() == f"hello {host.name}"
        thread.join(timeout=5)
    finally:
        server.close()
    assert sorted(seen) == sorted(h.name for h in hosts)


def test_hosts_reach_each_other(hosts):
    for host in hosts:
        for peer in hosts:
            if peer is not host:
                by_name = host.run(["python3", "-c", BANNER, peer.name], timeout=15)
                assert by_name.stdout.startswith("SSH-2.0-OpenSSH"), by_name
                by_address = host.run(["python3", "-c", BANNER, peer.address], timeout=15)
                assert by_address.stdout.startswith("SSH-2.0-OpenSSH"), by_address


def test_ssh_with_the_harness_key(hosts, tmp_path):
    for host in hosts:
        as_ansible = _ssh(host.ssh_command("sudo", "-n", "id", "-un"))
        assert as_ansible.returncode == 0, as_ansible.stderr
        assert as_ansible.stdout.strip() == "root"
        as_root = _ssh(host.ssh_command("hostname", user="root"))
        assert as_root.stdout.strip() == host.name, as_root.stderr
    inventory = hosts.write_inventory(tmp_path / "inventory.ini").read_text()
    assert "[pis]\npi1 ansible_host=10.213.0.11\npi2 ansible_host=10.213.0.12\n" in inventory
    assert f"ansible_ssh_private_key_file={hosts.ssh_key_path}" in inventory
    assert "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" in inventory


def _ssh(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_copy_in(hosts, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha\n")
    host = hosts["pi1"]
    host.copy_in(tree, "/opt/edgeagent-test/tree", owner="ansible")
    out = host.run(["stat", "-c", "%U %n", "/opt/edgeagent-test/tree/sub/a.txt"]).stdout
    assert out.strip() == "ansible /opt/edgeagent-test/tree/sub/a.txt"
    assert host.run(["cat", "/opt/edgeagent-test/tree/sub/a.txt"]).stdout == "alpha\n"


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="no mosquitto binary on this machine")
def test_mqtt_broker_on_the_bridge(hosts, tmp_path):
    """The shape of the fleet tests: a broker on the bridge address, clients in the hosts."""
    with socket.socket() as probe_socket:
        probe_socket.bind((hosts.bridge_address, 0))
        port = probe_socket.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} {hosts.bridge_address}\nallow_anonymous true\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _accepts(hosts.bridge_address, port))
        pub = ["mosquitto_pub", "-h", hosts.bridge_address, "-p", str(port)]
        sub = ["mosquitto_sub", "-h", hosts.bridge_address, "-p", str(port), "-C", "1", "-W", "10"]
        hosts["pi2"].run([*pub, "-r", "-t", "harness/hello", "-m", "from-pi2"])
        got = hosts["pi1"].run([*sub, "-t", "harness/hello"], timeout=20)
        assert got.stdout.strip() == "from-pi2"
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def _accepts(address, port):
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def test_teardown_leaves_nothing_and_keeps_the_journal(tmp_path):
    _skip_unless_possible()
    one = TestHosts(["solo"], tmp_path, bridge="ea-br9", subnet="10.213.9")
    with one:
        one["solo"].run(["systemd-run", "--wait", "--quiet", "--unit=harness-bye", "echo", "BYE"])
        assert _wait_for(lambda: "BYE" in one["solo"].journal("harness-bye"))
    assert "BYE" in one["solo"].journal("harness-bye")  # read from the overlay's upper dir
    assert not Path("/run/netns/ea-br9.solo").exists()
    assert not Path("/sys/class/net/ea-br9").exists()
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    assert str(one["solo"].root) not in mounts
    assert not any(Path("/sys/fs/cgroup").glob("*/edgeagent-testhosts/ea-br9.solo"))
    assert not Path("/run/systemd/nspawn/propagate/ea-br9.solo").exists()
    assert one.timings["teardown"] < 15


def test_failed_boot_is_torn_down(tmp_path):
    _skip_unless_possible()
    early = TestHosts(["early"], tmp_path, bridge="ea-br8", subnet="10.213.8", boot_timeout=0.2)
    with pytest.raises(BootError, match="not ready after"):
        early.start()
    assert early.timings["teardown"] < 10
    assert not Path("/run/netns/ea-br8.early").exists()
    assert not Path("/sys/class/net/ea-br8").exists()
    assert early.hosts[0].process is not None
    assert early.hosts[0].process.poll() is not None


CRASHING_RUN = """
import os, signal, sys
from pathlib import Path
from harness.hosts import TestHosts
TestHosts(["crash"], Path(sys.argv[1]), bridge="ea-br7", subnet="10.213.7").start()
print("up", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_leftovers_of_a_crashed_run_are_removed(tmp_path):
    _skip_unless_possible()
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(tmp_path / "first")],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.stdout == "up\n", crashed.stderr
    assert Path("/run/netns/ea-br7.crash").exists()  # the containers outlive their owner
    with TestHosts(["crash"], tmp_path / "second", bridge="ea-br7", subnet="10.213.7") as again:
        assert again["crash"].run(["systemctl", "is-system-running"]).stdout.strip() == "running"
    assert not Path("/run/netns/ea-br7.crash").exists()
    assert not Path("/sys/class/net/ea-br7").exists()
