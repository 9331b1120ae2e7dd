"""Real systemd "test hosts" in systemd-nspawn containers.

Each host is a Debian bookworm container booted with its own systemd (PID 1),
journal, network namespace and sshd, on an overlay over one cached root
filesystem. The hosts sit on a bridge (default ``ea-br0``, ``10.213.0.1/24``)
that the test machine also has an address on, so a service a test starts on the
bridge address (an MQTT broker, say) is reachable from inside every host, and
the hosts reach each other. Nothing is routed anywhere else.

Typical use::

    with TestHosts(["pi1", "pi2"], tmp_path) as hosts:
        hosts["pi1"].run(["systemctl", "is-system-running"])
        hosts.write_inventory(tmp_path / "inventory.ini")

Needs root, ``systemd-nspawn`` (package ``systemd-container``), ``debootstrap``
and ``ssh`` (both installed with apt when missing) and overlayfs. See
docs/testing-hosts.md for timings and pitfalls.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

__all__ = [
    "DEFAULT_CACHE_DIR",
    "ROOTFS_PACKAGES",
    "STATE_DIR",
    "BootError",
    "CommandError",
    "HostsError",
    "HostsInUseError",
    "RootfsError",
    "TeardownError",
    "TestHost",
    "TestHosts",
    "cleanup_stale",
    "ensure_host_tools",
    "ensure_rootfs",
    "load_state",
    "probe",
    "render_inventory",
    "ssh_argv",
]

log = logging.getLogger("edgeagent.testhosts")

# EDGEAGENT_TESTHOSTS_CACHE moves the built roots (this one and arm64.py's image) elsewhere,
# e.g. to measure a cold run without touching the machine's cache.
CACHE_BASE = Path(os.environ.get("EDGEAGENT_TESTHOSTS_CACHE", "/var/cache/edgeagent"))
DEFAULT_CACHE_DIR = CACHE_BASE / "rootfs"
# A running harness describes itself here (for `scripts/testhosts ssh` and `down`).
STATE_DIR = Path("/run/edgeagent-testhosts")

SUITE = "bookworm"
VARIANT = "minbase"
ROOTFS_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "openssh-server",
    "iproute2",
    "sudo",
    "mosquitto-clients",
    "ca-certificates",
)
# Bump when _prepare_base changes, so cached roots built by older code are rebuilt.
PREPARE_VERSION = 2
# Host tools: the binary we call -> the Debian package that ships it.
HOST_TOOLS: dict[str, str] = {
    "ip": "iproute2",
    "journalctl": "systemd",
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
# Units that only cost time or fail in a network-less throwaway container.
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "console-getty.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)
ANSIBLE_USER = "ansible"
SSH_OPTIONS: tuple[str, ...] = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
)
CGROUP_PARENT = "edgeagent-testhosts"
NSPAWN_RUN_DIR = Path("/run/systemd/nspawn")
FIRST_HOST_OCTET = 11
# Seconds a container that never finished booting gets to obey SIGTERM.
EARLY_GRACE = 2.0
# What commands run with inside a container (nothing of the caller's environment leaks in).
CONTAINER_ENV: tuple[str, ...] = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "TERM=dumb",
    "SYSTEMD_PAGER=",
)

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_BRIDGE_RE = re.compile(r"^[a-z][a-z0-9-]{0,10}$")
_SUBNET_RE = re.compile(r"^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){2}(?:25[0-5]|2[0-4]\d|1?\d?\d)$")
_READY_STATES = frozenset({"running", "degraded"})
_FAILED_STATES = frozenset({"maintenance"})


# --------------------------------------------------------------------------- errors


class HostsError(Exception):
    """Base class of the harness's errors."""


class RootfsError(HostsError):
    """The cached root filesystem could not be built."""


class BootError(HostsError):
    """A container did not come up (nspawn exited, or a timeout)."""


class HostsInUseError(HostsError):
    """Another running harness (or `scripts/testhosts up`) uses the bridge."""


class TeardownError(HostsError):
    """Some teardown steps failed; the message lists them."""


class CommandError(HostsError, subprocess.CalledProcessError):
    """A command exited non-zero; str() includes the tail of its output."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, list(cmd), stdout, stderr)

    def __str__(self) -> str:
        cmd = " ".join(str(part) for part in self.cmd)
        text = f"command exited with {self.returncode}: {cmd}"
        for label, stream in (("stdout", self.stdout), ("stderr", self.stderr)):
            if stream and stream.strip():
                text += f"\n{label}: {_tail(stream, 20)}"
        return text


# --------------------------------------------------------------------------- helpers


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _env() -> dict[str, str]:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in path.split(":"):
            path += ":" + extra
    return {**os.environ, "PATH": path, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def _which(binary: str) -> str | None:
    return shutil.which(binary, path=_env()["PATH"])


def _run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 60.0,
    input_text: str | None = None,
    stdin: IO[bytes] | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [str(part) for part in cmd]
    if stdin is not None:
        proc = subprocess.run(
            args,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(),
            check=False,
        )
    else:
        proc = subprocess.run(
            args,
            input=input_text,
            stdin=subprocess.DEVNULL if input_text is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(),
            check=False,
        )
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return proc


@dataclass(frozen=True)
class _Mount:
    target: Path
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[_Mount]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 2:
            continue
        options = rfields[2] if len(rfields) > 2 else ""
        target, source = Path(_unescape(fields[4])), _unescape(rfields[1])
        mounts.append(_Mount(target, rfields[0], source, options))
    return mounts


def _umount(target: Path) -> None:
    if _run(["umount", str(target)], check=False).returncode != 0:
        _run(["umount", "--lazy", str(target)])


def _unmount_under(path: Path) -> None:
    """Unmount everything at or below path, deepest first."""
    inside = [m.target for m in _mounts() if m.target == path or path in m.target.parents]
    for target in sorted(set(inside), key=lambda p: len(p.parts), reverse=True):
        _umount(target)


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts what is mounted below and never crosses file systems."""
    if not path.exists() and not path.is_symlink():
        return
    _unmount_under(path)
    _run(["rm", "-rf", "--one-file-system", "--", str(path)], timeout=600)


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """An exclusive flock; yields the fd, which children may inherit to keep holding it."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle.fileno()


def _require_root() -> None:
    if os.geteuid() != 0:
        raise HostsError("test hosts need root")


def _cgroup_roots() -> list[Path]:
    """The name=systemd v1 hierarchy and the cgroup2 hierarchy, whichever exist."""
    roots: list[Path] = []
    for mount in _mounts():
        named_systemd = mount.fstype == "cgroup" and "name=systemd" in mount.options.split(",")
        if (mount.fstype == "cgroup2" or named_systemd) and mount.target not in roots:
            roots.append(mount.target)
    return roots


def _cgroup_procs(directory: Path) -> list[int]:
    pids: list[int] = []
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.extend(int(line) for line in procs.read_text().split())
    return pids


def _kill_cgroup(directory: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pids := _cgroup_procs(directory):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HostsError(f"processes {pids} survive in {directory}")
        time.sleep(0.05)


def _remove_cgroup(directory: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup and its children bottom-up (they must be empty of processes)."""
    if not directory.is_dir():
        return
    _kill_cgroup(directory)
    deadline = time.monotonic() + timeout
    for current, _dirs, _files in os.walk(directory, topdown=False):
        while True:
            try:
                Path(current).rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()  # the shared CGROUP_PARENT, once nobody uses it


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids.extend(int(k) for k in (task / "children").read_text().split())
    return kids


def _find_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1: nspawn's child in another PID namespace."""
    try:
        own = Path("/proc/self/ns/pid").readlink()
    except OSError:
        return None
    for kid in _children(nspawn_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{kid}/ns/pid").readlink() != own:
                return kid
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _nspawn_pids(bridge: str | None) -> list[int]:
    """systemd-nspawn processes whose network namespace belongs to this bridge (None: all)."""
    marker = "" if bridge is None else f"--network-namespace-path=/run/netns/{bridge}."
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = _cmdline(int(entry.name))
            if (
                args
                and Path(args[0]).name == "systemd-nspawn"
                and any(a.startswith(marker) for a in args)
            ):
                pids.append(int(entry.name))
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _proc_start(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _abandoned(state: dict[str, Any] | None) -> bool:
    """True when the run that wrote state crashed (its owner is gone and it was not detached)."""
    if state is None or state.get("detached", True):
        return False
    owner = state.get("owner", {})
    pid = owner.get("pid")
    return not isinstance(pid, int) or _proc_start(pid) != owner.get("started")


def _ssh_banner(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _mount_source(bridge: str, name: str) -> str:
    # The overlay's "device" names its owner, so cleanup_stale finds it in mountinfo.
    return f"testhost:{bridge}:{name}"


# --------------------------------------------------------------------------- host set-up


def ensure_host_tools() -> None:
    """apt-get install the host tools the harness calls, when missing."""
    _require_root()
    missing = sorted({pkg for binary, pkg in HOST_TOOLS.items() if _which(binary) is None})
    if not missing:
        return
    log.info("installing host packages: %s", " ".join(missing))
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if _run(install, check=False, timeout=900).returncode != 0:
        _run(["apt-get", "update", "-q"], timeout=900)
        _run(install, timeout=900)


def debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt already uses for bookworm.

    Read from /etc/apt/sources.list.d/*.sources (deb822), then /etc/apt/sources.list and
    /etc/apt/sources.list.d/*.list; EDGEAGENT_DEBIAN_MIRROR overrides. No mirror is
    built in: a machine without a bookworm source gets an error that says so.
    """
    if override := os.environ.get("EDGEAGENT_DEBIAN_MIRROR"):
        return override
    sources = etc_apt / "sources.list.d"
    deb822 = sorted(sources.glob("*.sources")) if sources.is_dir() else []
    for path in deb822:
        for paragraph in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {
                key.strip().lower(): value.strip()
                for key, sep, value in (line.partition(":") for line in paragraph.splitlines())
                if sep and not key.lstrip().startswith("#")
            }
            types, suites = fields.get("types", "").split(), fields.get("suites", "").split()
            uris = fields.get("uris", "").split()
            if "deb" in types and SUITE in suites and uris:
                return uris[0]
    one_line = [etc_apt / "sources.list"]
    if sources.is_dir():
        one_line += sorted(sources.glob("*.list"))
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise RootfsError(
        f"no Debian {SUITE} source in {etc_apt}/sources.list or {etc_apt}/sources.list.d/: "
        "set EDGEAGENT_DEBIAN_MIRROR to the mirror's URL"
    )


def _ensure_ssh_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    pub = directory / "id_ed25519.pub"
    if key.is_file() and pub.is_file():
        return key
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key.unlink(missing_ok=True)
    pub.unlink(missing_ok=True)
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeagent-testhosts", "-f", str(key)]
    )
    return key


def _stamp(pubkey: str) -> dict[str, Any]:
    return {
        "suite": SUITE,
        "variant": VARIANT,
        "packages": sorted(ROOTFS_PACKAGES),
        "prepare_version": PREPARE_VERSION,
        "authorized_key": pubkey,
    }


def _stamp_ok(directory: Path, stamp: dict[str, Any]) -> bool:
    try:
        found = json.loads((directory / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(found == stamp and (directory / "rootfs" / "usr/lib/systemd/systemd").exists())


def _chroot(root: Path, *cmd: str) -> None:
    _run(["chroot", str(root), *cmd], timeout=120)


def _prepare_base(root: Path, pubkey: str) -> None:
    """What every host shares: the ansible user, keys, sshd, persistent journal."""
    _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", ANSIBLE_USER)
    sudoers = root / "etc/sudoers.d" / ANSIBLE_USER
    _write_file(sudoers, f"{ANSIBLE_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    _chroot(root, "visudo", "-cf", f"/etc/sudoers.d/{ANSIBLE_USER}")
    for home, user in (("root", "root"), (f"home/{ANSIBLE_USER}", ANSIBLE_USER)):
        ssh_dir = root / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        _write_file(ssh_dir / "authorized_keys", pubkey + "\n", 0o600)
        _chroot(root, "chown", "-R", f"{user}:{user}", f"/{home}/.ssh")
    _write_file(
        root / "etc/ssh/sshd_config.d/edgeagent-testhosts.conf",
        "UseDNS no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n",
    )
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    _write_file(journald / "edgeagent-testhosts.conf", "[Journal]\nStorage=persistent\n")
    (root / "var/log/journal").mkdir(exist_ok=True)
    _run(["systemctl", f"--root={root}", "enable", "ssh.service"])
    _run(["systemctl", f"--root={root}", "mask", *MASKED_UNITS])
    # Each host gets its own id; an empty one here would mean "first boot" to systemd.
    _write_file(root / "etc/machine-id", "")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
        dbus_id.symlink_to("/etc/machine-id")
    _write_file(root / "etc/hostname", "testhost\n")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _prune_cache(cache_dir: Path, keep: Path) -> None:
    mounted = "\n".join(f"{m.target} {m.options}" for m in _mounts())
    for entry in cache_dir.iterdir():
        stale_build = entry.name.startswith(".build-")
        old_root = entry.name.startswith(f"{SUITE}-") and entry != keep
        if entry.is_dir() and (stale_build or old_root) and str(entry) not in mounted:
            log.info("removing stale rootfs %s", entry)
            _remove_tree(entry)


def ensure_rootfs(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return a ready bookworm root (built once, then cached; never booted directly).

    The cache entry is keyed by the suite, package list, preparation version and the
    harness's SSH key; it is built in a temporary directory and renamed into place
    with its stamp, so an interrupted build is never used (and is removed next time).
    """
    _require_root()
    ensure_host_tools()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".lock") as lock_fd:
        key = _ensure_ssh_key(cache_dir / "ssh")
        pubkey = key.with_name(key.name + ".pub").read_text().strip()
        stamp = _stamp(pubkey)
        digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
        final = cache_dir / f"{SUITE}-{digest}"
        if _stamp_ok(final, stamp):
            return final / "rootfs"
        _prune_cache(cache_dir, keep=final)
        _remove_tree(final)
        build = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=cache_dir))
        try:
            _build_rootfs(build, stamp, pubkey, lock_fd)
            build.chmod(0o755)
            build.rename(final)
        except BaseException:
            _remove_tree(build)
            raise
    return final / "rootfs"


def _build_rootfs(build: Path, stamp: dict[str, Any], pubkey: str, lock_fd: int) -> None:
    root = build / "rootfs"
    mirror = debian_mirror()
    cmd = [
        "debootstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(ROOTFS_PACKAGES)}",
        SUITE,
        str(root),
        mirror,
    ]
    log.info("building %s rootfs from %s (takes a minute or two)", SUITE, mirror)
    started = time.monotonic()
    with (build / "build.log").open("w") as out:
        # debootstrap inherits the cache lock: if this process is killed, the next
        # ensure_rootfs waits for the orphan to finish before it removes its build dir.
        proc = subprocess.run(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            timeout=3600,
            check=False,
            pass_fds=(lock_fd,),
        )
    if proc.returncode != 0:
        text = (build / "build.log").read_text(errors="replace")
        raise RootfsError(f"debootstrap exited with {proc.returncode}:\n{_tail(text, 30)}")
    _unmount_under(root)  # debootstrap normally unmounts proc/sys itself
    _prepare_base(root, pubkey)
    seconds = time.monotonic() - started
    (build / "build-seconds").write_text(f"{seconds:.1f}\n")
    (build / "stamp.json").write_text(json.dumps(stamp, indent=2, sort_keys=True))
    log.info("rootfs built in %.1f s", seconds)


def probe() -> str | None:
    """Why containers cannot run here, or None when they can (for pytest skips)."""
    return next(_probe_problems(), None)


def _probe_problems() -> Iterator[str]:
    # A generator: probe() stops at the first problem, so later checks may assume earlier ones.
    if not sys.platform.startswith("linux"):
        yield "test hosts need Linux"
    if os.geteuid() != 0:
        yield "test hosts need root (systemd-nspawn, network namespaces, mounts)"
    status = Path("/proc/self/status").read_text()
    found = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.MULTILINE)
    cap_sys_admin = 21
    if found is None or not int(found.group(1), 16) >> cap_sys_admin & 1:
        yield "CAP_SYS_ADMIN is missing"
    if not _cgroup_roots():
        yield "no name=systemd or cgroup2 hierarchy is mounted"
    if "overlay" not in Path("/proc/filesystems").read_text().split():
        _run(["modprobe", "overlay"], check=False)
        if "overlay" not in Path("/proc/filesystems").read_text().split():
            yield "overlayfs is not available"
    if _which("systemd-nspawn") is None:
        if _which("apt-get") is None:
            yield "systemd-nspawn is not installed and apt-get is not available"
    else:
        version = _run(["systemd-nspawn", "--version"], check=False, timeout=10)
        if version.returncode != 0:
            yield f"systemd-nspawn cannot run: {version.stderr.strip()}"


# --------------------------------------------------------------------------- hosts


class TestHost:
    """One booted container; created and owned by TestHosts."""

    __test__: ClassVar[bool] = False

    def __init__(
        self, name: str, address: str, *, index: int, bridge: str, workdir: Path, ssh_key: Path
    ) -> None:
        self.name = name
        self.address = address
        self.index = index
        self.machine = f"{bridge}.{name}"
        self.netns = f"{bridge}.{name}"
        self.veth = f"{bridge}.{index}"
        self.directory = workdir / name
        self.ssh_key_path = ssh_key
        self.machine_id = uuid.uuid4().hex
        self.process: subprocess.Popen[bytes] | None = None
        self.cgroups: list[Path] = []
        self.system_state = ""
        self.netns_created = False
        self.mounted = False
        self._leader: int | None = None

    def __repr__(self) -> str:
        return f"TestHost({self.name!r}, {self.address!r}, leader={self._leader})"

    @property
    def root(self) -> Path:
        """The host's / as seen from the test machine (the overlay mount)."""
        return self.directory / "root"

    @property
    def upper(self) -> Path:
        """Everything the host changed (kept after teardown: journal, files)."""
        return self.directory / "upper"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def leader_pid(self) -> int:
        """PID (on the test machine) of the container's systemd."""
        if self._leader is None:
            raise HostsError(f"{self.name} is not booted")
        return self._leader

    def _nsenter(self) -> list[str]:
        return ["nsenter", "-t", str(self.leader_pid), "-a", "/usr/bin/env", "-i", *CONTAINER_ENV]

    def run(
        self,
        cmd: Sequence[str],
        check: bool = True,
        timeout: float = 60.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd as root inside the host (all its namespaces, a clean environment)."""
        return _run([*self._nsenter(), *cmd], check=check, timeout=timeout, input_text=input_text)

    def copy_in(
        self, src: Path | str, dst: str, *, mode: int | None = None, owner: str | None = None
    ) -> None:
        """Copy a file or directory tree from the test machine to the path dst in the host.

        dst is the full new path (like `cp -r src dst` when dst does not exist); files
        become root's unless owner ("user" or "user:group") is given.
        """
        source = Path(src)
        target = PurePosixPath(dst)
        if not target.is_absolute() or target == PurePosixPath("/"):
            raise HostsError(f"copy_in needs an absolute destination, not {dst!r}")
        if not source.exists():
            raise FileNotFoundError(source)

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                tar.add(source, arcname=target.name, filter=as_root)
            archive.seek(0)
            script = 'mkdir -p -- "$1" && exec tar -x -f - -C "$1"'
            _run([*self._nsenter(), "sh", "-c", script, "sh", str(target.parent)], stdin=archive)
        if mode is not None:
            self.run(["chmod", f"{mode:o}", str(target)])
        if owner is not None:
            self.run(["chown", "-R", owner, str(target)])

    def journal(self, unit: str | None = None, *, lines: int | None = None) -> str:
        """The host's journal (or one unit's), read from the test machine.

        Works after teardown too (from the overlay's upper directory), which makes
        it suitable for CI artifacts.
        """
        base = self.root if self.mounted else self.upper
        cmd = ["journalctl", "-D", str(base / "var/log/journal"), "--no-pager", "-o", "short-iso"]
        if unit is not None:
            cmd += ["-u", unit]
        if lines is not None:
            cmd += ["-n", str(lines)]
        return _run(cmd).stdout

    def ssh_command(self, *cmd: str, user: str = ANSIBLE_USER) -> list[str]:
        """argv for ssh into this host with the harness key (append a command or not)."""
        return ssh_argv(self.address, self.ssh_key_path, *cmd, user=user)

    def failed_units(self) -> list[str]:
        out = self.run(["systemctl", "--failed", "--plain", "--no-legend"], check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]


class TestHosts:
    """Boot N systemd hosts on a private bridge; tear everything down afterwards.

    Use as a context manager, or call start() and stop(). Host i (from 0) gets
    SUBNET.(11+i); the test machine has SUBNET.1 on the bridge.
    """

    __test__: ClassVar[bool] = False

    def __init__(
        self,
        names: Sequence[str],
        workdir: Path,
        bridge: str = "ea-br0",
        subnet: str = "10.213.0",
        *,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        rootfs: Path | None = None,
        boot_timeout: float = 90.0,
        stop_timeout: float = 20.0,
    ) -> None:
        if not names:
            raise ValueError("at least one host name is needed")
        for name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"bad host name {name!r} (lower-case letters, digits, '-')")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate host names in {list(names)}")
        if not _BRIDGE_RE.match(bridge):
            raise ValueError(f"bad bridge name {bridge!r} (at most 11 of [a-z0-9-])")
        if not _SUBNET_RE.match(subnet):
            raise ValueError(f"subnet must be three octets like '10.213.0', not {subnet!r}")
        if FIRST_HOST_OCTET + len(names) > 254:
            raise ValueError("too many hosts for one /24")
        workdir = Path(workdir).resolve()
        if re.search(r"[,:\s]", str(workdir)):
            raise ValueError(f"workdir {workdir} must not contain ',', ':' or blanks (overlay)")
        self.bridge = bridge
        self.subnet = subnet
        self.workdir = workdir
        self.cache_dir = cache_dir
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.ssh_key_path = cache_dir / "ssh" / "id_ed25519"
        self.hosts = [
            TestHost(
                name,
                f"{subnet}.{FIRST_HOST_OCTET + i}",
                index=i,
                bridge=bridge,
                workdir=workdir,
                ssh_key=self.ssh_key_path,
            )
            for i, name in enumerate(names)
        ]
        self.timings: dict[str, float] = {}
        self._rootfs = rootfs
        self._bridge_created = False
        self._active = False
        self._detached = False
        self._owns_state = False

    # -- access

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.1"

    def __getitem__(self, name: str) -> TestHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def __iter__(self) -> Iterator[TestHost]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

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
        try:
            self.stop()
        except TeardownError:
            if exc is None:
                raise
            log.exception("teardown failed while handling another error")

    def start(self) -> None:
        """Build or reuse the rootfs, set up network and overlays, boot, wait until ready."""
        _require_root()
        if self._active:
            raise HostsError("already started")
        self._active = True
        try:
            self._start()
        except BaseException:
            problems = self._teardown()
            for problem in problems:
                log.warning("teardown after failed start: %s", problem)
            raise

    def _start(self) -> None:
        started = time.monotonic()
        rootfs = self._rootfs or ensure_rootfs(self.cache_dir)
        self.timings["rootfs"] = time.monotonic() - started
        self._claim_bridge()
        boot_started = time.monotonic()
        self._setup_bridge()
        roots = _cgroup_roots()
        for host in self.hosts:
            self._setup_netns(host)
            self._setup_overlay(host, rootfs)
            self._setup_cgroups(host, roots)
            self._boot(host)
        self._wait_ready(boot_started + self.boot_timeout)
        self.timings["boot"] = time.monotonic() - boot_started
        self._save_state()
        log.info(
            "%d hosts up in %.2f s: %s",
            len(self.hosts),
            self.timings["boot"],
            ", ".join(f"{h.name}={h.address}" for h in self.hosts),
        )

    def stop(self) -> None:
        """Tear down in the order that works: containers, overlays, netns, bridge, cgroups.

        Idempotent; raises TeardownError listing the steps that failed (all are tried).
        """
        if not self._active:
            return
        problems = self._teardown()
        if problems:
            raise TeardownError("; ".join(problems))

    # -- set-up steps

    def _claim_bridge(self) -> None:
        live = [pid for pid in _nspawn_pids(self.bridge) if _pid_alive(pid)]
        if live and not _abandoned(load_state(self.bridge)):
            raise HostsInUseError(
                f"bridge {self.bridge} is used by running containers (nspawn pids {live}) of "
                "a live or detached run; stop them with `scripts/testhosts down` or use "
                "another bridge"
            )
        for action in cleanup_stale(self.bridge):
            log.warning("removed leftover of an earlier run: %s", action)
        routes = _run(["ip", "-4", "route", "show", f"{self.subnet}.0/24"]).stdout.strip()
        if routes:
            raise HostsInUseError(f"{self.subnet}.0/24 is already routed here: {routes}")
        self._save_state()  # from now on a crash of this process leaves an abandoned run

    def _setup_bridge(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_created = True
        _run(["ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _setup_netns(self, host: TestHost) -> None:
        _run(["ip", "netns", "add", host.netns])
        host.netns_created = True
        # The peer is created directly inside the namespace, so "eth0" cannot clash.
        peer = ["peer", "name", "eth0", "netns", host.netns]
        _run(["ip", "link", "add", host.veth, "type", "veth", *peer])
        _run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        inside = ["ip", "-n", host.netns]
        _run([*inside, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run([*inside, "link", "set", "eth0", "up"])
        _run([*inside, "link", "set", "lo", "up"])

    def _setup_overlay(self, host: TestHost, rootfs: Path) -> None:
        _remove_tree(host.directory)
        for sub in ("upper", "work", "root"):
            (host.directory / sub).mkdir(parents=True)
        options = f"lowerdir={rootfs},upperdir={host.upper},workdir={host.directory / 'work'}"
        source = _mount_source(self.bridge, host.name)
        _run(["mount", "-t", "overlay", "-o", options, source, str(host.root)])
        host.mounted = True
        etc = host.root / "etc"
        _write_file(etc / "machine-id", host.machine_id + "\n", 0o444)
        _write_file(etc / "hostname", host.name + "\n")
        lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{host.name}", "::1\tlocalhost ip6-localhost"]
        lines += [f"{peer.address}\t{peer.name}" for peer in self.hosts if peer is not host]
        _write_file(etc / "hosts", "\n".join(lines) + "\n")

    def _setup_cgroups(self, host: TestHost, roots: Sequence[Path]) -> None:
        # Without its own cgroup in both hierarchies, containers share one and their
        # journals mix.
        for root in roots:
            directory = root / CGROUP_PARENT / host.machine
            _remove_cgroup(directory)
            directory.mkdir(parents=True)
            host.cgroups.append(directory)

    def _boot(self, host: TestHost) -> None:
        nspawn = [
            "systemd-nspawn",
            f"--directory={host.root}",
            f"--machine={host.machine}",
            f"--hostname={host.name}",
            f"--uuid={host.machine_id}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            f"--network-namespace-path=/run/netns/{host.netns}",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--settings=no",
        ]
        procs = [str(cgroup / "cgroup.procs") for cgroup in host.cgroups]
        # Join the cgroups first, then become nspawn: it must start inside them.
        join = (
            'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; '
            'shift; n=$((n-1)); done; exec "$@"'
        )
        argv = ["/bin/sh", "-c", join, "sh", str(len(procs)), *procs, *nspawn]
        with host.console_log.open("ab") as console:
            host.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
            )

    def _wait_ready(self, deadline: float) -> None:
        pending = list(self.hosts)
        last: dict[str, str] = {}
        while pending:
            for host in list(pending):
                state = self._poll(host)
                if state == "ready":
                    pending.remove(host)
                last[host.name] = state
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "\n".join(
                    f"{h.name}: {last.get(h.name, '?')}; console:\n{_console_tail(h, 15)}"
                    for h in pending
                )
                raise BootError(f"hosts not ready after {self.boot_timeout:.0f} s:\n{details}")
            time.sleep(0.1)

    def _poll(self, host: TestHost) -> str:
        assert host.process is not None
        code = host.process.poll()
        if code is not None:
            raise BootError(
                f"{host.name}: systemd-nspawn exited with {code}:\n{_console_tail(host)}"
            )
        if host._leader is None:
            host._leader = _find_leader(host.process.pid)
            if host._leader is None:
                return "no container process yet"
        if not host.system_state:
            try:
                result = host.run(["systemctl", "is-system-running"], check=False, timeout=10)
            except subprocess.TimeoutExpired:
                return "systemctl timed out"
            state = result.stdout.strip() or result.stderr.strip()
            if state in _FAILED_STATES:
                raise BootError(f"{host.name}: system is {state}:\n{_console_tail(host)}")
            if state not in _READY_STATES:
                return f"system {state}"
            host.system_state = state
            if state == "degraded":
                log.warning("%s booted degraded; failed units: %s", host.name, host.failed_units())
        if not _ssh_banner(host.address):
            return "sshd not accepting yet"
        return "ready"

    # -- teardown

    def _teardown(self) -> list[str]:
        started = time.monotonic()
        problems: list[str] = []
        self._stop_containers(problems)
        for what, action in self._undo_steps():
            try:
                action()
            except Exception as exc:
                problems.append(f"{what}: {exc}")
        self._active = False
        self.timings["teardown"] = time.monotonic() - started
        log.info("teardown took %.2f s", self.timings["teardown"])
        return problems

    def _undo_steps(self) -> Iterator[tuple[str, Callable[[], object]]]:
        """Undo what this object set up (and only that), after the containers stopped:
        overlays, network namespaces, bridge, /run/netns, cgroups, nspawn's run dirs."""
        for host in self.hosts:
            if host.mounted:
                host.mounted = False
                yield f"unmount {host.root}", functools.partial(_unmount_under, host.root)
        for host in self.hosts:
            if host.netns_created:
                host.netns_created = False
                yield f"delete netns {host.netns}", functools.partial(_del_netns, host.netns)
        if self._bridge_created:
            self._bridge_created = False
            yield f"delete bridge {self.bridge}", functools.partial(_del_link, self.bridge)
        yield "umount /run/netns", _umount_run_netns_if_unused
        for host in self.hosts:
            yield from self._undo_host_leftovers(host)
        if self._owns_state:  # never another run's (e.g. when the bridge was in use)
            self._owns_state = False
            yield "remove state file", functools.partial(_remove_state, self.bridge)

    @staticmethod
    def _undo_host_leftovers(host: TestHost) -> Iterator[tuple[str, Callable[[], object]]]:
        cgroups, host.cgroups = host.cgroups, []
        for cgroup in cgroups:
            yield f"remove cgroup {cgroup}", functools.partial(_remove_cgroup, cgroup)
        if host.process is not None:
            remove = functools.partial(_remove_nspawn_run_dirs, host.machine, exact=True)
            yield f"remove nspawn run dirs of {host.machine}", remove

    def _stop_containers(self, problems: list[str]) -> None:
        running = [h for h in self.hosts if h.process is not None and h.process.poll() is None]
        # SIGTERM: nspawn asks the container's systemd to power off (~0.3 s here). A systemd
        # still booting may not act on it; a second SIGTERM makes nspawn kill the container.
        _signal_all(running, signal.SIGTERM)
        started = time.monotonic()
        while any(
            h.process is not None
            and h.process.poll() is None
            and time.monotonic() - started < (self.stop_timeout if h.system_state else EARLY_GRACE)
            for h in running
        ):
            time.sleep(0.05)
        stuck = [h for h in running if h.process is not None and h.process.poll() is None]
        _signal_all(stuck, signal.SIGTERM)
        for host in stuck:
            assert host.process is not None
            try:
                host.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                problems.append(f"{host.name} did not stop on SIGTERM; killed")
                host.process.kill()
                host.process.wait(timeout=10)
        for host in self.hosts:
            host._leader = None
            host.system_state = ""
            for cgroup in host.cgroups:
                try:
                    _kill_cgroup(cgroup)
                except HostsError as exc:
                    problems.append(str(exc))

    def detach(self) -> None:
        """Leave the hosts running when this process ends (`scripts/testhosts up`).

        A detached run is never taken for a crashed one: only cleanup_stale() (`down`)
        removes it.
        """
        self._detached = True
        self._save_state()

    # -- describing the hosts

    def write_inventory(self, path: Path, group: str = "pis") -> Path:
        """Write an Ansible INI inventory of the hosts (user ansible, the harness key)."""
        path = Path(path)
        text = render_inventory([(h.name, h.address) for h in self.hosts], self.ssh_key_path, group)
        path.write_text(text)
        return path

    def state(self) -> dict[str, Any]:
        return {
            "owner": {"pid": os.getpid(), "started": _proc_start(os.getpid())},
            "detached": self._detached,
            "bridge": self.bridge,
            "bridge_address": self.bridge_address,
            "subnet": self.subnet,
            "workdir": str(self.workdir),
            "ssh_key": str(self.ssh_key_path),
            "hosts": [
                {
                    "name": h.name,
                    "address": h.address,
                    "machine": h.machine,
                    "leader_pid": h._leader,
                    "nspawn_pid": h.process.pid if h.process else None,
                    "root": str(h.root),
                    "journal": str(h.upper / "var/log/journal"),
                }
                for h in self.hosts
            ],
        }

    def _save_state(self) -> None:
        self._owns_state = True
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / f"{self.bridge}.json").write_text(json.dumps(self.state(), indent=2))


def _signal_all(hosts: Sequence[TestHost], signum: signal.Signals) -> None:
    for host in hosts:
        if host.process is not None:
            with contextlib.suppress(ProcessLookupError):
                host.process.send_signal(signum)


def _console_tail(host: TestHost, lines: int = 30) -> str:
    try:
        return _tail(host.console_log.read_text(errors="replace"), lines)
    except OSError:
        return ""


def render_inventory(hosts: Sequence[tuple[str, str]], ssh_key: Path, group: str = "pis") -> str:
    """Ansible INI inventory: one line per (name, address), connection settings as group vars."""
    lines = [f"[{group}]"]
    lines += [f"{name} ansible_host={address}" for name, address in hosts]
    lines += [
        "",
        f"[{group}:vars]",
        f"ansible_user={ANSIBLE_USER}",
        f"ansible_ssh_private_key_file={ssh_key}",
        f"ansible_ssh_common_args='{' '.join(SSH_OPTIONS)}'",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    return "\n".join(lines) + "\n"


def ssh_argv(
    address: str, key: Path, *cmd: str, user: str = ANSIBLE_USER, batch: bool = True
) -> list[str]:
    """ssh argv for a throwaway host: the harness key, no host-key bookkeeping."""
    argv = ["ssh", "-i", str(key), *SSH_OPTIONS, "-o", "LogLevel=ERROR"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    return [*argv, f"{user}@{address}", *cmd]


def load_state(bridge: str = "ea-br0") -> dict[str, Any] | None:
    """What a running harness on this bridge wrote about itself, or None."""
    try:
        state: dict[str, Any] = json.loads((STATE_DIR / f"{bridge}.json").read_text())
    except (OSError, ValueError):
        return None
    return state


def _remove_state(bridge: str) -> None:
    (STATE_DIR / f"{bridge}.json").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        STATE_DIR.rmdir()


def _del_netns(name: str) -> None:
    _run(["ip", "netns", "del", name])


def _del_link(name: str) -> None:
    _run(["ip", "link", "del", name])


def _umount_run_netns_if_unused() -> None:
    netns = Path("/run/netns")
    if netns.is_dir() and not any(netns.iterdir()):
        if any(m.target == netns for m in _mounts()):
            _umount(netns)
        with contextlib.suppress(OSError):
            netns.rmdir()


def _remove_nspawn_run_dirs(prefix: str, exact: bool = False) -> list[Path]:
    """Remove nspawn's per-machine run dirs for machines named prefix* (or just prefix).

    nspawn cannot clean them itself when /run is not a tmpfs ("Attempted to remove
    disk file system under /run/systemd/nspawn/propagate..."). Empty parents go too.
    """
    removed: list[Path] = []
    if not NSPAWN_RUN_DIR.is_dir():
        return removed
    for sub in NSPAWN_RUN_DIR.iterdir():
        if sub.is_dir():
            for entry in sub.iterdir():
                if entry.name == prefix or (not exact and entry.name.startswith(prefix)):
                    _remove_tree(entry)
                    removed.append(entry)
    if not _nspawn_pids(None):  # the dirs are shared with any other nspawn on the machine
        for sub in [*NSPAWN_RUN_DIR.iterdir(), NSPAWN_RUN_DIR]:
            with contextlib.suppress(OSError):
                sub.rmdir()
    return removed


def cleanup_stale(bridge: str = "ea-br0") -> list[str]:
    """Remove what a crashed or detached run on this bridge left behind.

    Containers (nspawn processes whose netns belongs to the bridge), overlay mounts,
    network namespaces, veths and the bridge, cgroup dirs, nspawn's run dirs and the
    state file, in the teardown order. Returns what it did. Touches only names
    derived from the bridge.
    """
    _require_root()
    done = _stop_stale_containers(bridge)
    cgroups = [
        d
        for root in _cgroup_roots()
        if (root / CGROUP_PARENT).is_dir()
        for d in (root / CGROUP_PARENT).iterdir()
        if d.is_dir() and d.name.startswith(f"{bridge}.")
    ]
    for cgroup in cgroups:
        _kill_cgroup(cgroup, timeout=10)
    prefix = f"testhost:{bridge}:"
    for mount in sorted(_mounts(), key=lambda m: len(m.target.parts), reverse=True):
        if mount.fstype == "overlay" and mount.source.startswith(prefix):
            _unmount_under(mount.target)
            done.append(f"unmounted {mount.target}")
    done += _delete_stale_network(bridge)
    for cgroup in cgroups:
        _remove_cgroup(cgroup)
        done.append(f"removed cgroup {cgroup}")
    done += [f"removed {path}" for path in _remove_nspawn_run_dirs(f"{bridge}.")]
    if (STATE_DIR / f"{bridge}.json").exists():
        _remove_state(bridge)
        done.append("removed state file")
    return done


def _stop_stale_containers(bridge: str) -> list[str]:
    pids = [pid for pid in _nspawn_pids(bridge) if _pid_alive(pid)]
    # As in teardown: SIGTERM powers off, a second one kills the container, then SIGKILL.
    for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        deadline = time.monotonic() + 5
        while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
    return [f"stopped systemd-nspawn {pid}" for pid in pids]


def _delete_stale_network(bridge: str) -> list[str]:
    done = []
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for ns in netns_dir.iterdir():
            if ns.name.startswith(f"{bridge}."):
                _run(["ip", "netns", "del", ns.name])
                done.append(f"deleted netns {ns.name}")
    links = _run(["ip", "-o", "link", "show"]).stdout
    for name in re.findall(r"^\d+: ([^:@\s]+)", links, re.MULTILINE):
        if name == bridge or re.fullmatch(re.escape(bridge) + r"\.\d+", name):
            _run(["ip", "link", "del", name], check=False)
            done.append(f"deleted link {name}")
    _umount_run_netns_if_unused()
    return done
