"""The emulated Pi's harness pieces that need no emulator: firmware stand-in, initrd module
order, forwards, and the Debian mirror read from apt's configuration (no built-in mirror).

The emulated Pi itself boots, reboots and is rolled out to in tests/integration/test_ansible.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.hosts import RootfsError, debian_mirror
from support.fleet import arm64_harness

arm64 = arm64_harness()

PI_LINE = "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait\n"


def test_firmware_keeps_the_memory_cgroup_off_unless_cmdline_txt_asks() -> None:
    words = arm64.firmware_cmdline(PI_LINE, hostname="pi-arm").split()
    assert "cgroup_disable=memory" in words
    assert "console=ttyAMA0" in words
    assert not any(w.startswith(("console=serial0", "console=tty1", "root=")) for w in words)
    assert "fsck.repair=yes" in words
    assert "ea.hostname=pi-arm" in words

    enabled = PI_LINE.rstrip("\n") + " cgroup_enable=memory cgroup_memory=1\n"
    words = arm64.firmware_cmdline(enabled, hostname="pi-arm").split()
    assert "cgroup_disable=memory" not in words
    assert {"cgroup_enable=memory", "cgroup_memory=1"} <= set(words)


def test_initrd_modules_come_after_their_dependencies(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n"
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
    )
    order = arm64._module_order(tmp_path, ["virtio_pci", "ext4"])
    assert order == [
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
    ]
    with pytest.raises(arm64.RootfsError, match="vfat"):
        arm64._module_order(tmp_path, ["vfat"])


def test_guest_forwards_go_to_ipv4_addresses_only() -> None:
    forward = arm64.GuestForward(1883, "10.213.1.1", 41883)
    assert forward.netdev_option() == (
        "guestfwd=tcp:10.0.2.100:1883-cmd:socat - TCP:10.213.1.1:41883"
    )
    with pytest.raises(ValueError, match="IPv4"):
        arm64.GuestForward(1883, "broker.example; rm -rf /", 1).netdev_option()


def test_debian_mirror_from_deb822_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEAGENT_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.test/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.test/debian"


def test_debian_mirror_from_a_one_line_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEAGENT_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text(
        "deb-src http://src.test/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://lines.test/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://lines.test/debian"


def test_no_mirror_configured_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEAGENT_DEBIAN_MIRROR", raising=False)
    with pytest.raises(RootfsError, match="EDGEAGENT_DEBIAN_MIRROR"):
        debian_mirror(tmp_path)
    monkeypatch.setenv("EDGEAGENT_DEBIAN_MIRROR", "http://override.test/debian")
    assert debian_mirror(tmp_path) == "http://override.test/debian"
