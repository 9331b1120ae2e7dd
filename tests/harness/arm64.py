"""An emulated Raspberry Pi: Debian bookworm arm64 under qemu-system-aarch64 (TCG).

The nspawn hosts of hosts.py share the test machine's x86 kernel; this host runs the
real arm64 code: Debian's arm64 kernel, systemd, sshd, Python 3.11 and whatever the
Ansible role installs, on an emulated Cortex-A72 (the Raspberry Pi 4's core; any
``-cpu`` qemu knows can be asked for). Emulation runs code roughly 18x slower than
the test machine, so give it generous timeouts.

What makes it Pi-like, and what stands in for the real thing:

- ``/proc/device-tree/model`` says "Raspberry Pi 4 Model B Rev 1.5": qemu's own device tree
  of the ``virt`` machine (``-M virt,dumpdtb=``) with only the ``model`` property changed
  (``fdtput``), passed back with ``-dtb``;
- ``/boot/firmware`` is a FAT file system on its own disk with ``cmdline.txt`` and
  ``config.txt``; a "firmware" stand-in (this module) reads ``cmdline.txt`` before every
  boot and hands it to the kernel, so an edited ``cmdline.txt`` takes effect at the next
  reboot, as on a Pi. Like the Raspberry Pi kernel, the memory cgroup controller is off
  unless ``cmdline.txt`` has ``cgroup_enable=memory`` (mainline kernels only know
  ``cgroup_disable=memory``, which the stand-in adds otherwise);
- a reboot in the guest ends qemu (``-no-reboot``; qemu reports a ``guest-reset`` on its
  QMP socket) and the stand-in starts it again on the same disks and SSH port.

The image needs no emulated initramfs tools: an initrd made on the test machine from
Debian's arm64 kernel package and busybox-static loads the few virtio/ext4/vfat modules,
mounts the root and boot disks, sets the network address and the hostname, and
``switch_root``s to systemd. The image itself is built once (``debootstrap --foreign``
on the test machine, the second stage inside the emulated machine) and cached in
``/var/cache/edgeagent/arm64/``; each host boots a qcow2 overlay of it.

Networking is qemu's user-mode network with ``restrict=on``: the guest reaches nothing
but the forwards set here. SSH is forwarded from a free port on 127.0.0.1 (never another
address) to the guest's port 22; a service of the test machine is reached from the guest
at ``10.0.2.100:PORT`` through a ``guestfwd`` (a ``socat`` per connection to the address
given, which must be one of this machine's).

Typical use::

    image = ensure_arm64_image()
    with Arm64Host("pi-arm", tmp_path, image, forwards=[GuestForward(1883, "10.213.1.1", 41883)]) as pi:
        pi.run(["systemctl", "is-system-running"])
        print(pi.ssh_port, pi.inventory_vars())
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self

from harness import hosts as _hosts
from harness.hosts import (
    ANSIBLE_USER,
    SSH_OPTIONS,
    BootError,
    HostsError,
    RootfsError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType

__all__ = [
    "ARM64_PACKAGES",
    "DEFAULT_ARM64_CACHE",
    "PI4_CMDLINE",
    "PI4_MODEL",
    "SERVICE_ADDRESS",
    "Arm64Host",
    "Arm64Image",
    "GuestForward",
    "arm64_probe",
    "ensure_arm64_image",
    "firmware_cmdline",
]

log = logging.getLogger("edgeagent.testhosts.arm64")

DEFAULT_ARM64_CACHE = _hosts.CACHE_BASE / "arm64"
SUITE = "bookworm"
# What the emulated Pi has before Ansible comes: the nspawn hosts' packages minus the MQTT
# clients, plus libgomp1 (llama.cpp's OpenMP runtime): the role then needs no apt mirror.
ARM64_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "openssh-server",
    "iproute2",
    "sudo",
    "ca-certificates",
    "libgomp1",
)
# Loaded by the initrd, dependencies first (resolved from modules.dep): the disks, their
# file systems and the network card are modules in Debian's arm64 kernel.
INITRD_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "virtio_net",
)
# Bump when the image preparation or the initrd changes: cached images are rebuilt.
PREPARE_VERSION = 1
HOST_TOOLS: dict[str, str] = {
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "fdtput": "device-tree-compiler",
    "dtc": "device-tree-compiler",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mtype": "mtools",
    "depmod": "kmod",
    "cpio": "cpio",
    "mkfs.ext4": "e2fsprogs",
    "qemu-aarch64-static": "qemu-user-static",
    "debootstrap": "debootstrap",
    "socat": "socat",
    "setpriv": "util-linux",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
ROOT_IMAGE_SIZE = "6G"  # sparse; the venv, the model and the journal go there
BOOT_IMAGE_KIB = 32 * 1024
PI4_MODEL = "Raspberry Pi 4 Model B Rev 1.5"
# A Raspberry Pi OS bookworm cmdline.txt (one line).
PI4_CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait\n"
)
PI4_CONFIG = "# config.txt of the emulated Pi (read by nothing; here for a realistic /boot/firmware)\narm_64bit=1\n"
# The guest's address on qemu's user network, and where the test machine's services appear.
GUEST_ADDRESS = "10.0.2.15"
SERVICE_ADDRESS = "10.0.2.100"
QEMU_NAME_PREFIX = "edgeagent-testhost-"
_READY_STATES = frozenset({"running", "degraded"})


# --------------------------------------------------------------------------- helpers


def _run(
    cmd: Sequence[str | Path],
    *,
    check: bool = True,
    timeout: float | None = 60.0,
    input_text: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [str(part) for part in cmd]
    proc = subprocess.run(
        args,
        input=input_text,
        stdin=subprocess.DEVNULL if input_text is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_hosts._env(),
        cwd=cwd,
        check=False,
    )
    if check and proc.returncode != 0:
        raise _hosts.CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_host_tools() -> None:
    """apt-get install what the emulated host needs on the test machine, when missing."""
    _hosts._require_root()
    missing = sorted({pkg for binary, pkg in HOST_TOOLS.items() if _hosts._which(binary) is None})
    if not missing:
        return
    log.info("installing host packages: %s", " ".join(missing))
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if _run(install, check=False, timeout=900).returncode != 0:
        _run(["apt-get", "update", "-q"], timeout=900)
        _run(install, timeout=900)


def arm64_probe() -> str | None:
    """Why the emulated Pi cannot run here, or None (for pytest skips)."""
    if os.geteuid() != 0:
        return "the emulated Pi needs root (debootstrap, the image cache)"
    if _hosts._which("qemu-system-aarch64") is None and _hosts._which("apt-get") is None:
        return "qemu-system-aarch64 is not installed and apt-get is not available"
    return None


def firmware_cmdline(cmdline_txt: str, *, hostname: str) -> str:
    """The kernel command line the "firmware" stand-in boots with, from cmdline.txt.

    The Pi's own console and root settings make no sense on qemu's ``virt`` machine and are
    replaced (the initrd mounts the root disk itself); everything else is passed on. The
    memory cgroup is off unless asked for, like on a Raspberry Pi kernel.
    """
    words = cmdline_txt.split()
    kept = [w for w in words if not w.startswith(("console=", "root=", "rootfstype=", "rootwait"))]
    memory_on = "cgroup_enable=memory" in words
    extra = ["console=ttyAMA0", "net.ifnames=0", "panic=1", f"ea.hostname={hostname}"]
    if not memory_on:
        extra.append("cgroup_disable=memory")
    return " ".join([*extra, *kept])


# --------------------------------------------------------------------------- the image


@dataclass(frozen=True)
class Arm64Image:
    """A cached, prepared image: kernel, initrd and the root file system (raw ext4)."""

    directory: Path
    kernel: Path
    initrd: Path
    root: Path
    ssh_key: Path
    info: dict[str, Any] = field(default_factory=dict)


def _stamp(pubkey: str) -> dict[str, Any]:
    return {
        "suite": SUITE,
        "arch": "arm64",
        "packages": sorted(ARM64_PACKAGES),
        "modules": list(INITRD_MODULES),
        "prepare_version": PREPARE_VERSION,
        "authorized_key": pubkey,
    }


def ensure_arm64_image(cache_dir: Path = DEFAULT_ARM64_CACHE) -> Arm64Image:
    """Return the cached arm64 image, building it first when needed (a few minutes).

    Keyed like the nspawn root: suite, packages, initrd modules, PREPARE_VERSION and the
    harness's SSH key. Built in a temporary directory and renamed into place with its
    stamp, so an interrupted build is never used (and is removed by the next call).
    """
    _hosts._require_root()
    ensure_host_tools()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _hosts._locked(cache_dir / ".lock"):
        key = _hosts._ensure_ssh_key(cache_dir / "ssh")
        pubkey = key.with_name(key.name + ".pub").read_text().strip()
        stamp = _stamp(pubkey)
        digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
        final = cache_dir / f"{SUITE}-arm64-{digest}"
        image = _image_at(final, key)
        if _stamp_ok(final, stamp):
            return image
        _prune(cache_dir, keep=final)
        _hosts._remove_tree(final)
        build = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=cache_dir))
        try:
            _build_image(build, stamp, pubkey)
            build.chmod(0o755)
            build.rename(final)
        except BaseException:
            _hosts._remove_tree(build)
            raise
    return _image_at(final, key)


def _image_at(directory: Path, key: Path) -> Arm64Image:
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((directory / "stamp.json").read_text())
    return Arm64Image(
        directory, directory / "vmlinuz", directory / "initrd.gz", directory / "root.img", key, info
    )


def _stamp_ok(directory: Path, stamp: dict[str, Any]) -> bool:
    try:
        found = json.loads((directory / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    files = ("vmlinuz", "initrd.gz", "root.img")
    return bool(found.get("key") == stamp and all((directory / f).is_file() for f in files))


def _prune(cache_dir: Path, keep: Path) -> None:
    in_use = " ".join(" ".join(_hosts._cmdline(pid)) for pid in _qemu_pids(None))
    for entry in cache_dir.iterdir():
        old = entry.name.startswith((".build-", f"{SUITE}-arm64-")) and entry != keep
        if entry.is_dir() and old and str(entry) not in in_use:
            log.info("removing stale arm64 image %s", entry)
            _hosts._remove_tree(entry)


def _apt_arm64(workdir: Path) -> list[str]:
    """apt-get options for arm64 package lists of our own: the machine's apt stays as it is."""
    for sub in ("lists/partial", "archives/partial", "cache"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    if not _apt_source_files():
        raise RootfsError("no apt sources in /etc/apt/sources.list*: cannot fetch arm64 packages")
    options = {
        "APT::Architecture": "arm64",
        "APT::Architectures::": "arm64",
        "Dir::State::Lists": str(workdir / "lists"),
        "Dir::State::status": "/dev/null",
        "Dir::Cache": str(workdir / "cache"),
        "Dir::Cache::Archives": str(workdir / "archives"),
        "Debug::NoLocking": "1",
        "APT::Sandbox::User": "root",
    }
    argv: list[str] = []
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return argv


def _apt_source_files() -> list[Path]:
    found = [Path("/etc/apt/sources.list")] if Path("/etc/apt/sources.list").is_file() else []
    directory = Path("/etc/apt/sources.list.d")
    if directory.is_dir():
        found += sorted(directory.glob("*.list")) + sorted(directory.glob("*.sources"))
    return found


def _download_boot_packages(workdir: Path) -> tuple[Path, str]:
    """Debian's arm64 kernel and busybox-static, unpacked into workdir/unpacked."""
    options = _apt_arm64(workdir / "apt")
    _run(["apt-get", *options, "-q", "update"], timeout=900)
    # apt-cache builds its package cache first: over a minute on a loaded machine.
    depends = _run(["apt-cache", *options, "depends", "linux-image-arm64"], timeout=900).stdout
    found = re.search(r"Depends:\s*(linux-image-\S+-arm64)\b", depends)
    if found is None:
        raise RootfsError(f"cannot tell the arm64 kernel package from:\n{depends}")
    kernel_pkg = found.group(1)
    debs = workdir / "debs"
    debs.mkdir()
    _run(
        ["apt-get", *options, "-q", "download", kernel_pkg, "busybox-static"], cwd=debs, timeout=900
    )
    unpacked = workdir / "unpacked"
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", deb, unpacked], timeout=300)
    versions = sorted(p.name for p in (unpacked / "lib/modules").iterdir())
    if len(versions) != 1:
        raise RootfsError(f"expected one kernel in {kernel_pkg}, found {versions}")
    return unpacked, versions[0]


def _module_order(modules_dir: Path, wanted: Sequence[str]) -> list[str]:
    """Relative paths of the wanted modules and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        module, _, rest = line.partition(":")
        deps[module] = rest.split()
        by_name[Path(module).name.removesuffix(".ko").replace("-", "_")] = module
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        for dep in deps.get(module, []):
            visit(dep)
        order.append(module)

    for name in wanted:
        if name not in by_name:
            raise RootfsError(f"kernel module {name} is not in {modules_dir} (built in?)")
        visit(by_name[name])
    return order


INIT_SCRIPT = r"""#!/bin/busybox sh
# /init of the emulated Raspberry Pi's initrd (tests/harness/arm64.py): load the modules,
# mount the root and boot disks, name the host, set the address, hand over to systemd.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules.load); do
  insmod "/modules/$module" || echo "initrd: insmod $module failed"
done
param() { for word in $(cat /proc/cmdline); do case "$word" in "$1="*) echo "${word#*=}" ;; esac; done; }
fail() { echo "initrd: $*"; sleep 1; poweroff -f; }
tries=0
while [ ! -b /dev/vda ]; do
  tries=$((tries + 1)); [ $tries -gt 100 ] && fail "no /dev/vda"
  sleep 0.1
done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda"
if [ -b /dev/vdb ]; then
  mkdir -p /newroot/boot/firmware
  mount -t vfat -o rw,fmask=0022,dmask=0022 /dev/vdb /newroot/boot/firmware || echo "initrd: no /boot/firmware"
fi
name="$(param ea.hostname)"
if [ -n "$name" ]; then
  echo "$name" > /newroot/etc/hostname
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost\n' "$name" > /newroot/etc/hosts
  hostname "$name"
fi
ip link set lo up
ip link set eth0 up && ip addr add @GUEST_ADDRESS@/24 dev eth0 || echo "initrd: no eth0"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""

# dpkg options of the image build only (removed by the preparation script).
DPKG_BUILD_CONF = "etc/dpkg/dpkg.cfg.d/edgeagent-image-build"
PREPARE_SCRIPT = r"""#!/bin/sh
# Runs once inside the emulated machine after debootstrap's second stage (image build).
set -eu
useradd --create-home --shell /bin/bash @USER@
echo '@USER@ ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/@USER@
chmod 0440 /etc/sudoers.d/@USER@
visudo -cf /etc/sudoers.d/@USER@
for home in /root /home/@USER@; do
  install -d -m 0700 "$home/.ssh"
  install -m 0600 /edgeagent-authorized_keys "$home/.ssh/authorized_keys"
done
chown -R @USER@:@USER@ /home/@USER@/.ssh
rm -f /edgeagent-authorized_keys
systemctl enable ssh.service
systemctl mask @MASKED@
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/*.log /debootstrap @DPKG_BUILD_CONF@
"""


def _write_initrd(unpacked: Path, version: str, target: Path) -> None:
    modules_dir = unpacked / "lib/modules" / version
    _run(["depmod", "-b", unpacked, version], timeout=300)
    order = _module_order(modules_dir, INITRD_MODULES)
    with tempfile.TemporaryDirectory(prefix="initrd-") as tmp:
        root = Path(tmp)
        for sub in ("bin", "proc", "sys", "dev", "modules", "newroot"):
            (root / sub).mkdir()
        shutil.copy2(unpacked / "bin/busybox", root / "bin/busybox")
        names = []
        for module in order:
            shutil.copy2(modules_dir / module, root / "modules" / Path(module).name)
            names.append(Path(module).name)
        (root / "modules.load").write_text("\n".join(names) + "\n")
        init = root / "init"
        init.write_text(INIT_SCRIPT.replace("@GUEST_ADDRESS@", GUEST_ADDRESS))
        init.chmod(0o755)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        raw = target.with_suffix(".cpio")
        with raw.open("wb") as out:
            proc = subprocess.run(
                ["cpio", "-o", "-H", "newc", "--quiet"],
                input="\n".join(files).encode() + b"\n",
                stdout=out,
                stderr=subprocess.PIPE,
                cwd=root,
                check=False,
                timeout=120,
            )
        if proc.returncode != 0:
            raise RootfsError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
        with raw.open("rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()


def _build_image(build: Path, stamp: dict[str, Any], pubkey: str) -> None:
    started = time.monotonic()
    work = build / "work"
    work.mkdir()
    log_path = build / "build.log"
    # 1. Kernel and initrd from Debian's arm64 packages (no emulation needed).
    unpacked, version = _download_boot_packages(work)
    shutil.copy2(unpacked / "boot" / f"vmlinuz-{version}", build / "vmlinuz")
    _write_initrd(unpacked, version, build / "initrd.gz")
    # 2. First stage of debootstrap on the test machine.
    rootfs = work / "rootfs"
    mirror = _hosts.debian_mirror()
    cmd = [
        "debootstrap",
        "--arch=arm64",
        "--foreign",
        "--variant=minbase",
        f"--include={','.join(ARM64_PACKAGES)}",
        SUITE,
        str(rootfs),
        mirror,
    ]
    log.info("building the arm64 image from %s (first stage)", mirror)
    with log_path.open("w") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=_hosts._env(), timeout=1800, check=False
        )
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        raise RootfsError(f"debootstrap (first stage) exited {proc.returncode}:\n{_tail(text)}")
    _prepare_files(rootfs, pubkey)
    _trim_package_index(rootfs)
    first_stage = time.monotonic() - started
    # 3. The second stage and the preparation, arm64 code run by qemu-user in a chroot.
    log.info("arm64 first stage done in %.0f s; second stage with qemu-user", first_stage)
    second_started = time.monotonic()
    env = {**_hosts._env(), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    with _aarch64_binfmt(), log_path.open("a") as out:
        for step in (
            ["/debootstrap/debootstrap", "--second-stage"],
            ["/bin/sh", "/edgeagent-prepare.sh"],
        ):
            returncode = _run_logged(["chroot", str(rootfs), *step], out, env=env, timeout=3600)
            if returncode != 0:
                _hosts._unmount_under(rootfs)
                text = log_path.read_text(errors="replace")
                raise RootfsError(
                    f"{' '.join(step)} in the arm64 root exited {returncode}:\n{_tail(text)}"
                )
    _hosts._unmount_under(rootfs)  # debootstrap's /proc, should it have left it
    second_stage = time.monotonic() - second_started
    # 4. The root file system image.
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-L",
            "edgeagent-root",
            "-d",
            rootfs,
            build / "root.img",
            ROOT_IMAGE_SIZE,
        ],
        timeout=900,
    )
    _hosts._remove_tree(work)
    seconds = time.monotonic() - started
    stamp_file = {
        "key": stamp,
        "kernel": version,
        "mirror": mirror,
        "first_stage_seconds": round(first_stage, 1),
        "second_stage_seconds": round(second_stage, 1),
        "build_seconds": round(seconds, 1),
    }
    (build / "stamp.json").write_text(json.dumps(stamp_file, indent=2, sort_keys=True))
    log.info("arm64 image built in %.0f s (kernel %s)", seconds, version)


def _trim_package_index(rootfs: Path) -> None:
    """Keep only the packages debootstrap installs in the index its second stage reads.

    The second stage looks packages up in the mirror's Packages index (~50 MB) with Perl and
    grep, both emulated: minutes per pass. The first stage has already chosen and fetched
    every package (/debootstrap/debpaths); the preparation deletes the lists anyway.
    """
    debpaths = (rootfs / "debootstrap" / "debpaths").read_text().splitlines()
    wanted = {line.split()[0] for line in debpaths if line.strip()}
    for index in (rootfs / "var" / "lib" / "apt" / "lists").glob("*_Packages"):
        stanzas = index.read_text(errors="replace").split("\n\n")
        kept = [s for s in stanzas if (m := re.match(r"Package: (\S+)", s)) and m[1] in wanted]
        index.write_text("\n\n".join(kept) + "\n\n")


def _run_logged(cmd: Sequence[str], out: IO[str], *, env: dict[str, str], timeout: float) -> int:
    """Run cmd with its output in out, each line prefixed with the seconds since the start.

    The second stage's log then shows where its minutes go (one "Configuring ..." line per
    package).
    """
    started = time.monotonic()
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                out.write(f"[{time.monotonic() - started:7.1f}] {line}")
                out.flush()  # readable while the build runs
        finally:
            timer.cancel()
        return proc.wait()


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# One entry per building process (edgeagent-aarch64-PID): two builds on the machine never
# remove each other's entry; entries of dead processes are removed by the next build.
BINFMT_PREFIX = "edgeagent-aarch64"
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # from qemu-user-static


@contextlib.contextmanager
def _aarch64_binfmt() -> Iterator[None]:
    """Run aarch64 binaries with qemu-user while the block runs (a binfmt_misc entry of ours).

    The entry is Debian's qemu-aarch64 one under a name of this process (flag F: the
    interpreter is opened now, so it works inside a chroot), removed again afterwards, and
    binfmt_misc is unmounted again if it was not mounted before. Entries left by killed
    builds (their process is gone) are removed.
    """
    fields = BINFMT_CONF.read_text().strip().split(":")
    # :name:type:offset:magic:mask:interpreter:flags
    if len(fields) != 8 or fields[2] != "M":
        raise RootfsError(f"unexpected binfmt entry in {BINFMT_CONF}: {fields}")
    fields[1] = f"{BINFMT_PREFIX}-{os.getpid()}"
    mounted = False
    if not (BINFMT_DIR / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])
        mounted = True
    for stale in BINFMT_DIR.glob(f"{BINFMT_PREFIX}-*"):
        owner = stale.name.removeprefix(f"{BINFMT_PREFIX}-")
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                stale.write_text("-1")
    entry = BINFMT_DIR / fields[1]
    try:
        if entry.exists():
            entry.write_text("-1")
        (BINFMT_DIR / "register").write_text(":".join(fields))
        yield
    finally:
        if entry.exists():
            entry.write_text("-1")
        if mounted and not any(BINFMT_DIR.glob(f"{BINFMT_PREFIX}-*")):
            _run(["umount", BINFMT_DIR], check=False)


def _tail(text: str, lines: int = 30) -> str:
    return _hosts._tail(text, lines)


def _prepare_files(rootfs: Path, pubkey: str) -> None:
    """Files written from the test machine (no arm64 code runs for these)."""

    def write(relative: str, text: str, mode: int = 0o644) -> None:
        path = rootfs / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _hosts._write_file(path, text, mode)

    write("edgeagent-authorized_keys", pubkey + "\n", 0o600)
    write(
        "etc/ssh/sshd_config.d/edgeagent-testhosts.conf",
        "UseDNS no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n",
    )
    write("etc/systemd/journald.conf.d/edgeagent-testhosts.conf", "[Journal]\nStorage=persistent\n")
    (rootfs / "var/log/journal").mkdir(parents=True, exist_ok=True)
    # No fstab entries: the initrd mounts / and /boot/firmware (there is no udev to wait for).
    write(
        "etc/fstab", "# / and /boot/firmware are mounted by the initrd (tests/harness/arm64.py)\n"
    )
    write("etc/hostname", "testhost\n")
    (rootfs / "boot/firmware").mkdir(parents=True, exist_ok=True)
    # Work the emulated second stage need not do (it runs arm64 code ~20x slower):
    # dpkg's fsync of every unpacked file (the image is made from the tree afterwards,
    # an interrupted build is thrown away), and openssh-server's host keys, made here
    # by the machine's ssh-keygen (its postinst keeps keys that exist).
    write(DPKG_BUILD_CONF, "force-unsafe-io\n")
    _run(["ssh-keygen", "-A", "-f", rootfs], timeout=600)  # RSA 3072: seconds, more when starved
    masked = [*_hosts.MASKED_UNITS, "serial-getty@ttyAMA0.service"]
    script = (
        PREPARE_SCRIPT.replace("@USER@", ANSIBLE_USER)
        .replace("@MASKED@", " ".join(masked))
        .replace("@DPKG_BUILD_CONF@", "/" + DPKG_BUILD_CONF)
    )
    write("edgeagent-prepare.sh", script, 0o755)


# --------------------------------------------------------------------------- qemu


def _qemu_pids(name: str | None) -> list[int]:
    """qemu processes started by this harness (all, or the one of a host name)."""
    marker = QEMU_NAME_PREFIX + (name or "")
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = _hosts._cmdline(int(entry.name))
            is_qemu = bool(args) and Path(args[0]).name.startswith("qemu-system-")
            if is_qemu and any(a.startswith(marker) for a in args):
                pids.append(int(entry.name))
    return pids


def _dump_dtb(target: Path, *, cpu: str, smp: int, memory_mb: int) -> None:
    """qemu's device tree for this machine configuration, compacted.

    qemu pads what dumpdtb writes to 1 MiB; a kernel given that padded blob with -dtb
    hangs before its first message, a compacted copy (dtc) boots.
    """
    raw = target.with_suffix(".raw.dtb")
    _run(
        [
            "qemu-system-aarch64",
            "-M",
            f"virt,dumpdtb={raw}",
            "-cpu",
            cpu,
            "-smp",
            str(smp),
            "-m",
            str(memory_mb),
            "-nodefaults",
            "-nic",
            "none",
            "-display",
            "none",
        ],
        timeout=60,
    )
    _run(["dtc", "-q", "-I", "dtb", "-O", "dtb", "-o", target, raw])
    raw.unlink()


def _qemu_argv(
    *,
    name: str,
    kernel: Path,
    initrd: Path,
    dtb: Path,
    append: str,
    disks: Sequence[tuple[Path, str]],
    console: Path,
    cpu: str,
    smp: int,
    memory_mb: int,
    netdev: str | None = None,
    qmp: Path | None = None,
) -> list[str]:
    argv = [
        "qemu-system-aarch64",
        "-name",
        QEMU_NAME_PREFIX + name,
        "-M",
        "virt",
        "-cpu",
        cpu,
        "-smp",
        str(smp),
        "-m",
        str(memory_mb),
        "-accel",
        "tcg,thread=multi",
        "-nodefaults",
        "-display",
        "none",
        "-chardev",
        f"file,id=console,path={console},append=on",
        "-serial",
        "chardev:console",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-dtb",
        str(dtb),
        "-append",
        append,
        "-no-reboot",
    ]
    # Fixed PCI slots: the first disk is /dev/vda (root), the second /dev/vdb (boot).
    for index, (path, fmt) in enumerate(disks):
        argv += [
            "-drive",
            f"file={path},if=none,id=disk{index},format={fmt},cache=unsafe",
            "-device",
            f"virtio-blk-pci,drive=disk{index},addr={0x4 + index:#x}",
        ]
    if netdev is None:
        argv += ["-nic", "none"]
    else:
        argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile=,addr=0x8"]
    if qmp is not None:
        argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    return argv


@dataclass(frozen=True)
class GuestForward:
    """The guest's SERVICE_ADDRESS:guest_port reaches address:port on the test machine."""

    guest_port: int
    address: str
    port: int

    def netdev_option(self) -> str:
        if not re.fullmatch(r"[0-9.]+", self.address):
            raise ValueError(f"forward to an IPv4 address of this machine, not {self.address!r}")
        target = f"socat - TCP:{self.address}:{self.port}"
        return f"guestfwd=tcp:{SERVICE_ADDRESS}:{self.guest_port}-cmd:{target}"


class _Qmp:
    """Reads qemu's QMP events (we only need SHUTDOWN's reason) and sends commands."""

    def __init__(self, path: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file: IO[str] = self.sock.makefile("rw", encoding="utf-8")
        self.file.readline()  # greeting
        self.command("qmp_capabilities")

    def command(self, name: str) -> None:
        self.file.write(json.dumps({"execute": name}) + "\n")
        self.file.flush()

    def events(self) -> Iterator[dict[str, Any]]:
        for line in self.file:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if "event" in message:
                    yield message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


# --------------------------------------------------------------------------- the host


class Arm64Host:
    """One emulated Raspberry Pi; a context manager (or start()/stop()).

    Reboots in the guest are followed: each boot reads cmdline.txt from the boot disk
    anew (see firmware_cmdline). `boots` counts them; `boot_seconds` has the time from
    qemu start to SSH ready for each boot that got there.
    """

    __test__: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        workdir: Path,
        image: Arm64Image,
        *,
        cpu: str = "cortex-a72",
        smp: int = 2,
        memory_mb: int = 2048,
        model: str = PI4_MODEL,
        cmdline: str = PI4_CMDLINE,
        forwards: Sequence[GuestForward] = (),
        boot_timeout: float = 300.0,
        stop_timeout: float = 60.0,
    ) -> None:
        if not _hosts._NAME_RE.match(name):
            raise ValueError(f"bad host name {name!r} (lower-case letters, digits, '-')")
        self.name = name
        self.image = image
        self.directory = Path(workdir).resolve() / name
        self.cpu, self.smp, self.memory_mb = cpu, smp, memory_mb
        self.model = model
        self.initial_cmdline = cmdline
        self.forwards = list(forwards)
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.ssh_key_path = image.ssh_key
        self.ssh_port = 0
        self.boots = 0
        self.boot_seconds: list[float] = []
        self.timings: dict[str, float] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._booted = threading.Event()  # set by the supervisor after each qemu start
        self._exited = threading.Event()  # set when qemu is gone for good
        self._lock = threading.Lock()
        self._boot_started = 0.0
        self._error: str | None = None
        self._last_reason = ""

    def __repr__(self) -> str:
        return f"Arm64Host({self.name!r}, ssh 127.0.0.1:{self.ssh_port}, cpu {self.cpu})"

    # -- paths

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def disk(self) -> Path:
        return self.directory / "root.qcow2"

    @property
    def boot_disk(self) -> Path:
        return self.directory / "boot.img"

    # -- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create the disks, boot, wait until systemd is up and sshd answers."""
        _hosts._require_root()
        if self._supervisor is not None:
            raise HostsError(f"{self.name} is already started")
        started = time.monotonic()
        for pid in _qemu_pids(self.name):  # a leftover of a crashed run with this name
            log.warning("killing leftover qemu %d of %s", pid, self.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for forward in self.forwards:
            _check_forward_address(forward.address)
        _hosts._remove_tree(self.directory)
        self.directory.mkdir(parents=True)
        _run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                self.image.root,
                self.disk,
            ]
        )
        _run(["mkfs.vfat", "-n", "BOOTFS", "-C", self.boot_disk, str(BOOT_IMAGE_KIB)])
        self.write_boot_file("cmdline.txt", self.initial_cmdline)
        self.write_boot_file("config.txt", PI4_CONFIG)
        dtb = self.directory / "board.dtb"
        _dump_dtb(dtb, cpu=self.cpu, smp=self.smp, memory_mb=self.memory_mb)
        _run(["fdtput", "-t", "s", dtb, "/", "model", self.model])
        self.ssh_port = _free_port()
        self.timings["prepare"] = time.monotonic() - started
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"qemu-{self.name}", daemon=True
        )
        self._supervisor.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["boot"] = self.boot_seconds[0]

    def stop(self) -> None:
        """Power the guest off (a clean shutdown over SSH, then qemu's quit, then SIGKILL)."""
        if self._supervisor is None:
            return
        self._stopping.set()
        started = time.monotonic()
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(Exception):
                self.run(["systemctl", "poweroff", "--no-block"], timeout=20, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=self.stop_timeout)
        process = self._process
        if process is not None and process.poll() is None:
            log.warning(
                "%s did not power off in %.0f s; killing qemu", self.name, self.stop_timeout
            )
            process.kill()
            process.wait(timeout=10)
        self._supervisor.join(timeout=30)
        self._supervisor = None
        self.timings["stop"] = time.monotonic() - started

    def _launch(self) -> subprocess.Popen[bytes]:
        cmdline_txt = self.read_boot_file("cmdline.txt")
        append = firmware_cmdline(cmdline_txt, hostname=self.name)
        forwards = [f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
        forwards += [f.netdev_option() for f in self.forwards]
        netdev = ",".join(["user", "id=net0", "restrict=on", f"net={GUEST_ADDRESS}/24", *forwards])
        qmp = self.directory / "qmp.sock"
        qmp.unlink(missing_ok=True)
        argv = _qemu_argv(
            name=self.name,
            kernel=self.image.kernel,
            initrd=self.image.initrd,
            dtb=self.directory / "board.dtb",
            append=append,
            disks=[(self.disk, "qcow2"), (self.boot_disk, "raw")],
            console=self.console_log,
            cpu=self.cpu,
            smp=self.smp,
            memory_mb=self.memory_mb,
            netdev=netdev,
            qmp=qmp,
        )
        with self.console_log.open("a") as console:
            console.write(f"\n===== boot {self.boots + 1}: {append}\n")
        # setpriv: qemu dies with the thread that started it (this supervisor), so a
        # crashed test run leaves no emulator behind.
        self._boot_started = time.monotonic()
        with (self.directory / "qemu.log").open("ab") as qemu_log:  # the child keeps its copy
            return subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                env=_hosts._env(),
            )

    def _supervise(self) -> None:
        try:
            while not self._stopping.is_set():
                with self._lock:
                    self._process = self._launch()
                    self.boots += 1
                    self._last_reason = ""
                self._booted.set()
                reason = self._follow(self._process)
                self._process.wait()
                if self._stopping.is_set() or reason != "guest-reset":
                    if not self._stopping.is_set():
                        self._error = (
                            f"qemu exited ({self._process.returncode}, {reason or 'no reason'})"
                        )
                    break
                log.info("%s: guest reboot; starting it again with its cmdline.txt", self.name)
        except Exception as exc:  # the test thread must learn about it, not a log
            self._error = f"supervisor failed: {exc!r}"
            log.exception("%s: supervisor failed", self.name)
        finally:
            self._exited.set()

    def _follow(self, process: subprocess.Popen[bytes]) -> str:
        """Wait for qemu to end; return the reason of its last SHUTDOWN event."""
        try:
            qmp = _Qmp(self.directory / "qmp.sock")
        except OSError:
            process.wait()
            return ""
        try:
            for event in qmp.events():
                if event.get("event") == "SHUTDOWN":
                    self._last_reason = str(event.get("data", {}).get("reason", ""))
        finally:
            qmp.close()
        return self._last_reason

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait until the current boot has systemd running/degraded and SSH working."""
        deadline = time.monotonic() + (timeout or self.boot_timeout)
        state = "qemu not started"
        while time.monotonic() < deadline:
            if self._exited.is_set():
                raise BootError(f"{self.name}: {self._error}\n{self.console_tail()}")
            if not self._booted.is_set():
                time.sleep(0.2)
                continue
            if not _hosts._ssh_banner("127.0.0.1", self.ssh_port, timeout=2.0):
                state = "sshd not answering"
                time.sleep(0.5)
                continue
            try:
                result = self.run(["systemctl", "is-system-running"], check=False, timeout=30)
            except subprocess.TimeoutExpired:
                state = "systemctl timed out"
                continue
            state = result.stdout.strip() or result.stderr.strip()
            if state in _READY_STATES:
                seconds = time.monotonic() - self._boot_started
                self.boot_seconds.append(seconds)
                if state == "degraded":
                    log.warning("%s booted degraded: %s", self.name, self.failed_units())
                return seconds
            if state == "maintenance":
                break
            time.sleep(1)
        raise BootError(
            f"{self.name} not ready after {timeout or self.boot_timeout:.0f} s ({state}):\n"
            f"{self.console_tail()}"
        )

    # -- using it

    def ssh_command(self, *cmd: str, user: str = ANSIBLE_USER) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.ssh_key_path),
            "-p",
            str(self.ssh_port),
            *SSH_OPTIONS,
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            f"{user}@127.0.0.1",
            *cmd,
        ]

    def run(
        self,
        cmd: Sequence[str],
        check: bool = True,
        timeout: float = 120.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd as root in the guest (over SSH; the arguments are quoted for its shell)."""
        argv = self.ssh_command(shlex.join(cmd), user="root")
        return _run(argv, check=check, timeout=timeout, input_text=input_text)

    def journal(self, unit: str | None = None, *, lines: int | None = None) -> str:
        cmd = ["journalctl", "--no-pager", "-o", "short-iso"]
        if unit is not None:
            cmd += ["-u", unit]
        if lines is not None:
            cmd += ["-n", str(lines)]
        return self.run(cmd, check=False, timeout=120).stdout

    def failed_units(self) -> list[str]:
        out = self.run(["systemctl", "--failed", "--plain", "--no-legend"], check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def read_boot_file(self, name: str) -> str:
        """A file of /boot/firmware, read from the boot disk (only while qemu is stopped
        or the guest has not written it since: FAT has no coherence with the guest's cache)."""
        return _run(["mtype", "-i", self.boot_disk, f"::{name}"]).stdout

    def write_boot_file(self, name: str, text: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as tmp:
            tmp.write(text)
            tmp.flush()
            _run(["mcopy", "-o", "-i", self.boot_disk, tmp.name, f"::{name}"])

    def console_tail(self, lines: int = 30) -> str:
        try:
            return _tail(self.console_log.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def inventory_line(self) -> str:
        """The host's line in an Ansible INI inventory (key and port as host variables)."""
        return (
            f"{self.name} ansible_host=127.0.0.1 ansible_port={self.ssh_port} "
            f"ansible_user={ANSIBLE_USER} ansible_ssh_private_key_file={self.ssh_key_path}"
        )

    def wait_for_reboot(self, boots_before: int, timeout: float | None = None) -> float:
        """After a reboot was triggered: wait for the next boot to be ready."""
        deadline = time.monotonic() + (timeout or self.boot_timeout)
        while self.boots <= boots_before:
            if self._exited.is_set():
                raise BootError(f"{self.name}: {self._error}\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise BootError(f"{self.name} did not reboot in time\n{self.console_tail()}")
            time.sleep(0.2)
        return self.wait_ready(max(1.0, deadline - time.monotonic()))


def _check_forward_address(address: str) -> None:
    """Guest forwards may only lead to addresses of this machine."""
    local = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    if f" {address}/" not in local:
        raise HostsError(f"{address} is not an address of this machine: no forward to it")
