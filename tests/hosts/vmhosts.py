"""Throwaway VM-like Debian hosts for tests: systemd-nspawn containers with their own IP, sshd and systemd as PID 1.

Works on a Debian machine whose own PID 1 is not systemd (no machined, no host D-Bus): each host is an overlay copy
of a cached debootstrapped base, booted by ``systemd-nspawn --boot --register=no --keep-unit`` on a bridge that is
NAT'd out, so apt and pip inside reach the package registries. Needs root and
``apt-get install systemd-container debootstrap nftables`` (plus iproute2 and openssh-client, usually present).

Layout under the top folder (default /var/tmp/lab-test-hosts)::

    roots/bookworm/        the base rootfs, built once and cached across runs
    id_labtest[.pub]       the harness's SSH key (root and ``ci`` accept it)
    pip-cache/{root,ci}/   bound into every host as ~/.cache/pip of root and ci (shared by all hosts)
    run/<bridge>/          one pool's state: ip_forward.orig and per host cN/{upper,work,root,console.log,...}

By hand (from the repo root, as root)::

    python -m tests.hosts.vmhosts build
    python -m tests.hosts.vmhosts up 3
    python -m tests.hosts.vmhosts ssh c1 systemctl is-system-running
    python -m tests.hosts.vmhosts inventory
    python -m tests.hosts.vmhosts down

``--top/--bridge/--net`` (or LAB_TEST_HOSTS_TOP, LAB_TEST_HOSTS_BRIDGE, LAB_TEST_HOSTS_NET) pick another pool.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("lab.vmhosts")

DEFAULT_TOP = Path("/var/tmp/lab-test-hosts")
DEFAULT_BRIDGE = "br-labtest"
DEFAULT_NET = "10.200.0"
SUITE = "bookworm"
USER = "ci"
KEY_NAME = "id_labtest"
NSPAWN_LOCKS = Path("/run/systemd/nspawn/locks")
INSTALL_HINT = "apt-get install systemd-container debootstrap nftables"
# Every program the harness runs on the machine, and the Debian package that ships it.
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nft": "nftables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
}
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "python3-venv",
    "python3-packaging",
    "python3-pip",
    "sudo",
    "iproute2",
    "ca-certificates",
    "curl",
    "procps",
    "nftables",
)
# Bump when build_base() changes what it puts in the base: a cached base with another stamp is rebuilt.
BASE_RECIPE = "1:" + ",".join(PACKAGES)
STAMP = "etc/lab-test-base"
SSH_OPTIONS = (
    "-F",
    "/dev/null",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "ConnectTimeout=3",
)
# The wrapper that keeps one host booted: a reboot inside makes nspawn exit 133 and it boots the host again (what
# systemd-nspawn@.service does); poweroff exits 0 and so does the wrapper. SIGTERM to the wrapper goes to nspawn,
# which halts the container in order. It writes nspawn's PID to $5 so that down() can escalate by recorded PID.
WRAPPER_NAME = "lab-nspawn-wrap"
WRAPPER = r"""
root=$1 machine=$2 hostname=$3 bridge=$4 pidfile=$5; shift 5
c=
trap '[ -n "$c" ] && kill -TERM "$c" 2>/dev/null; [ -n "$c" ] && wait "$c"; exit 0' TERM INT HUP
while :; do
  systemd-nspawn -D "$root" --boot --machine="$machine" --hostname="$hostname" --register=no --keep-unit \
    --link-journal=no --network-bridge="$bridge" --resolv-conf=copy-host --console=pipe "$@" </dev/null & c=$!
  echo "$c" > "$pidfile"
  wait "$c"; rc=$?
  [ "$rc" -eq 133 ] || exit "$rc"
  echo "[lab-nspawn-wrap] the host rebooted: booting it again"
done
"""


def _other_pools_running(bridge: str) -> bool:
    """Whether a host of another pool (a systemd-nspawn on another bridge) runs on this machine now."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"systemd-nspawn"):
            continue
        bridges = [a.split(b"=", 1)[1].decode() for a in argv if a.startswith(b"--network-bridge=")]
        if any(name != bridge for name in bridges):
            return True
    return False


class HostsUnavailable(RuntimeError):
    """This machine cannot run test hosts; the message says why and what to do about it."""


class HostError(RuntimeError):
    """A host did not do what the harness expected (boot, answer ssh, come back from a reboot, be cleaned up)."""


class HostCommandError(subprocess.CalledProcessError):
    """A command over ssh failed; unlike CalledProcessError, its message carries the command's output."""

    def __str__(self) -> str:
        tail = "\n".join(part.strip()[-2000:] for part in (self.stdout or "", self.stderr or "") if part.strip())
        return f"{super().__str__()}\n{tail}" if tail else super().__str__()


@dataclass(frozen=True)
class Host:
    """One running host: log in as ``user`` (passwordless sudo) or root with ``key``."""

    name: str
    ip: str
    key: Path
    user: str = USER
    machine: str = ""  # the nspawn machine name (unique per pool: the veth is vb-<machine>)

    def ssh_command(self, *cmd: str, user: str | None = None) -> list[str]:
        """The argv of ``ssh`` to this host; ``cmd`` words are joined by ssh and run by the remote shell."""
        return ["ssh", *SSH_OPTIONS, "-i", str(self.key), f"{user or self.user}@{self.ip}", *cmd]


def missing_requirements() -> list[str]:
    """Why this machine cannot run test hosts (empty when it can)."""
    if not sys.platform.startswith("linux"):
        return [f"they need Linux (this is {sys.platform})"]
    problems = []
    if os.geteuid() != 0:
        problems.append("they need root (they create a bridge, nftables rules, overlay mounts and containers)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(dict.fromkeys(TOOLS[tool] for tool in missing))
        problems.append(
            f"missing {', '.join(missing)}: install with `apt-get install {packages}` "
            f"(everything the harness uses: `{INSTALL_HINT} iproute2 openssh-client`)"
        )
    filesystems = Path("/proc/filesystems")
    if filesystems.exists() and "overlay" not in filesystems.read_text():
        problems.append("the kernel has no overlayfs (try `modprobe overlay`)")
    return problems


def check_requirements() -> None:
    """Raise HostsUnavailable saying what to install or change if this machine cannot run test hosts."""
    problems = missing_requirements()
    if problems:
        raise HostsUnavailable("VM-like test hosts unavailable: " + "; ".join(problems))


def apt_mirrors(sources: Sequence[Path] | None = None) -> tuple[str, str | None]:
    """The Debian mirror and security mirror this machine's own apt uses (sources.list or deb822 .sources)."""
    if sources is None:
        folder = Path("/etc/apt/sources.list.d")
        extra = sorted([*folder.glob("*.list"), *folder.glob("*.sources")]) if folder.is_dir() else []
        sources = [Path("/etc/apt/sources.list"), *extra]
    uris: list[str] = []
    pattern = re.compile(r"^(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+(?:\s+\S+)*)")
    for path in sources:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                found = pattern.match(line.strip())
                if not found:
                    continue
                words = found.group(1).split()
                uris.extend(words[:1] if line.strip().startswith("deb") else words)
    uris = [uri for uri in uris if "://" in uri]
    main = next((uri for uri in uris if "security" not in uri), "http://deb.debian.org/debian")
    security = next((uri for uri in uris if "security" in uri), None)
    return main, security


def _run(argv: Sequence[str], *, what: str = "", timeout: float | None = 600, **kwargs: object) -> str:
    """Run a host-side command; raise HostError with its output if it fails."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise HostError(f"{what or argv[0]} failed (exit {done.returncode}): {' '.join(argv)}\n{output}")
    return done.stdout


def _quiet(argv: Sequence[str]) -> bool:
    """Run a host-side command, True if it succeeded; its output is dropped."""
    return subprocess.run(list(argv), capture_output=True, check=False, timeout=60).returncode == 0


def _mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below ``folder``, deepest first."""
    found = []
    prefix = str(folder).rstrip("/")
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z, ...), or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (a container's init is one: nspawn is its subreaper)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold off Ctrl-C until the block is done (cleanup must finish); re-raise it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class HostPool:
    """A set of throwaway hosts c1..cN on one bridge: ``build_base()``, ``up(n)``, ``ssh(...)``, ``down()``.

    Host cI has the address ``<net>.<10+I>`` on ``bridge`` (``<net>.1/24`` on the machine), NAT'd out. Pools with
    different bridges/nets can run at once over the same top folder (they share the cached base, key and pip cache).
    """

    def __init__(
        self,
        top: Path | str = DEFAULT_TOP,
        bridge: str = DEFAULT_BRIDGE,
        net: str = DEFAULT_NET,
        nspawn_args: Sequence[str] = (),
        *,
        suite: str = SUITE,
        pip_cache: bool = True,
        mirror: str | None = None,
        security_mirror: str | None = None,
    ) -> None:
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", net):
            raise ValueError(f"net must be the first three octets of a /24, like 10.200.0 (got {net!r})")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,15}", bridge):
            raise ValueError(f"bridge must be a network interface name of at most 15 characters (got {bridge!r})")
        self.top = Path(top)
        self.bridge = bridge
        self.net = net
        self.nspawn_args = list(nspawn_args)
        self.suite = suite
        self.pip_cache = self.top / "pip-cache" if pip_cache else None
        self.mirror = mirror
        self.security_mirror = security_mirror
        self.base = self.top / "roots" / suite
        self.key = self.top / KEY_NAME
        self.run_dir = self.top / "run" / bridge
        # Names unique to this pool: the nftables table, and the nspawn machine name (hence vb-<machine> veths
        # and /run/systemd/nspawn/propagate/<machine>) so that two pools' c1 never collide.
        tag = re.sub(r"^br-", "", bridge)
        self.nft_table = re.sub(r"[^A-Za-z0-9_]", "_", bridge)
        self.machine_prefix = f"{tag}-"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- the base rootfs -------------------------------------------------------------------------------------------

    def base_ready(self) -> bool:
        stamp = self.base / STAMP
        return stamp.is_file() and stamp.read_text().strip() == BASE_RECIPE

    def build_base(self, *, rebuild: bool = False) -> Path:
        """Debootstrap the base rootfs once (~60-80 s) and cache it under ``top/roots/<suite>``; return its path."""
        check_requirements()
        self.top.mkdir(parents=True, exist_ok=True)
        self._ensure_key()
        (self.top / "roots").mkdir(exist_ok=True)
        import fcntl  # POSIX only: importing this module must not fail elsewhere (the fixtures skip there)

        with (self.top / "roots" / f".{self.suite}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then find it built
            if self.base_ready() and not rebuild:
                return self.base
            if self.base.exists():
                if self._base_in_use():
                    raise HostError(f"{self.base} is out of date but running hosts use it: run down() first")
                self._remove_tree(self.base)
            started = time.monotonic()
            partial = self.base.with_name(self.suite + ".partial")
            self._remove_tree(partial)
            try:
                self._debootstrap(partial)
                self._configure_base(partial)
            except BaseException:
                with _sigint_deferred(), contextlib.suppress(HostError, OSError):
                    self._remove_tree(partial)
                raise
            partial.rename(self.base)
            log.info("base %s built in %.0f s", self.base, time.monotonic() - started)
        return self.base

    def _ensure_key(self) -> None:
        if not self.key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labtest", "-f", str(self.key)])
        self.key.chmod(0o600)

    def _base_in_use(self) -> bool:
        needle = f"lowerdir={self.base},"
        return any(needle in line for line in Path("/proc/mounts").read_text().splitlines())

    def _remove_tree(self, folder: Path) -> None:
        for point in _mounts_under(folder):  # debootstrap mounts /proc and /sys inside; a killed one leaves them
            _quiet(["umount", "-l", str(point)])
        if _mounts_under(folder):
            raise HostError(f"cannot remove {folder}: something is still mounted below it")
        if folder.exists():
            shutil.rmtree(folder)

    def _debootstrap(self, target: Path) -> None:
        mirror, _ = self._mirrors()
        build_log = self.top / "roots" / f"{self.suite}.build.log"
        log.info("debootstrap %s from %s into %s (log: %s)", self.suite, mirror, target, build_log)
        argv = [
            "debootstrap",
            "--variant=minbase",
            "--components=main",
            f"--include={','.join(PACKAGES)}",
            self.suite,
            str(target),
            mirror,
        ]
        # In a session of its own, so that on Ctrl-C or a timeout the whole debootstrap tree is stopped (killing
        # only the top shell leaves its children writing into the target).
        with build_log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=1800)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        if code != 0:
            tail = "\n".join(build_log.read_text().splitlines()[-25:])
            raise HostError(f"debootstrap failed (exit {code}); {build_log} ends with:\n{tail}")

    def _mirrors(self) -> tuple[str, str | None]:
        mirror, security = apt_mirrors()
        return self.mirror or mirror, self.security_mirror or security

    def _configure_base(self, root: Path) -> None:
        def chroot(*argv: str) -> str:
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
            return _run(["chroot", str(root), *argv], what=f"in the base: {argv[0]}", env=env)

        mirror, security = self._mirrors()
        lines = [f"deb {mirror} {self.suite} main", f"deb {mirror} {self.suite}-updates main"]
        if security:
            lines.append(f"deb {security} {self.suite}-security main")
        (root / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
        chroot("systemctl", "enable", "systemd-networkd.service")  # the static address is written per host
        # No console login on the pipe; no apt runs of its own in the middle of a test (it would hold the lock).
        chroot("systemctl", "mask", "console-getty.service", "apt-daily.timer", "apt-daily-upgrade.timer")
        # Empty machine-id: systemd makes one at boot (a file saying "uninitialized" would run first-boot presets).
        (root / "etc/machine-id").write_text("")
        (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
        for host_key in (root / "etc/ssh").glob("ssh_host_*"):  # each host gets its own at up()
            host_key.unlink()
        (root / "etc/hostname").write_text("debian\n")  # debootstrap copies this machine's name
        chroot("useradd", "--create-home", "--shell", "/bin/bash", USER)
        sudoers = root / "etc/sudoers.d" / USER
        sudoers.write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
        sudoers.chmod(0o440)
        (root / "etc/ssh/sshd_config.d/labtest.conf").write_text("UseDNS no\nPermitRootLogin prohibit-password\n")
        self._install_login(root)
        # This machine's egress may intercept TLS: trust its extra CAs (Debian's pip, curl and apt use the store).
        extra_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        for ca in extra_cas:
            shutil.copy2(ca, root / "usr/local/share/ca-certificates" / ca.name)
        if extra_cas:
            chroot("update-ca-certificates")
        resolv = root / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        shutil.copy2("/etc/resolv.conf", resolv)
        with contextlib.suppress(HostError):  # warm apt's lists; a host without them runs apt-get update itself
            chroot("apt-get", "update", "-q")
        chroot("apt-get", "clean")
        (root / STAMP).write_text(BASE_RECIPE + "\n")

    def _user_ids(self, root: Path) -> tuple[int, int]:
        for line in (root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == USER:
                return int(fields[2]), int(fields[3])
        raise HostError(f"no user {USER} in {root}/etc/passwd")

    def _install_login(self, root: Path) -> None:
        """The harness key for root and ci, and their pip cache folders (bind targets), in a rootfs. A host booted
        again keeps the keys it was given since (as a machine's disk does): the harness key is added when missing."""
        uid, gid = self._user_ids(root)
        public = Path(f"{self.key}.pub").read_text()
        for home, owner in ((root / "root", (0, 0)), (root / "home" / USER, (uid, gid))):
            ssh_dir = home / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            keys = ssh_dir / "authorized_keys"
            kept = keys.read_text() if keys.is_file() else ""
            if public.strip() not in kept.splitlines():
                keys.write_text(kept + ("" if not kept or kept.endswith("\n") else "\n") + public)
            (ssh_dir / "authorized_keys").chmod(0o600)
            (home / ".cache" / "pip").mkdir(parents=True, exist_ok=True)
            for path in (ssh_dir, ssh_dir / "authorized_keys", home / ".cache", home / ".cache" / "pip"):
                os.chown(path, *owner)

    # -- bringing hosts up -----------------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        """The host called ``name`` (c1, c2, ...) of this pool, from its recorded state."""
        index = int(name.removeprefix("c")) if re.fullmatch(r"c\d+", name) else 0
        if not index or not (self.run_dir / name / "ip").is_file():
            raise HostError(f"no host {name} in the pool on {self.bridge} (run dir {self.run_dir})")
        return self._host(index)

    def hosts(self) -> list[Host]:
        """Every host this pool has started (running or not), c1 first."""
        if not self.run_dir.is_dir():
            return []
        indexes = [int(d.name[1:]) for d in self.run_dir.glob("c*") if re.fullmatch(r"c\d+", d.name)]
        return [self._host(i) for i in sorted(indexes) if (self.run_dir / f"c{i}" / "ip").is_file()]

    def _host(self, index: int) -> Host:
        name = f"c{index}"
        return Host(name=name, ip=f"{self.net}.{10 + index}", key=self.key, machine=self.machine_prefix + name)

    def up(self, n: int, *, timeout: float = 180) -> list[Host]:
        """Start hosts c1..cN (those not already running), wait until each answers ssh and systemd has finished
        starting; return them. Builds the base first if there is none."""
        if not 1 <= n <= 200:
            raise ValueError(f"n must be 1..200 (got {n})")
        self.build_base()
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._network_up()
        hosts = [self._host(i) for i in range(1, n + 1)]
        for host in hosts:
            if not self.is_running(host):
                self._start(host)
        deadline = time.monotonic() + timeout
        for host in hosts:
            self.wait_ssh(host, timeout=max(1.0, deadline - time.monotonic()))
        for host in hosts:
            self._wait_systemd(host, timeout=max(10.0, deadline - time.monotonic()))
            self._wait_user_login(host)
        log.info("%d host(s) up on %s in %.1f s", n, self.bridge, time.monotonic() - started)
        return hosts

    def root_of(self, host: Host | str) -> Path:
        """The host's root folder as this machine sees it (its overlay, mounted while the pool exists, the host
        on or off): to read or change its disk while it is off, as one would with a machine's disk."""
        target = self.host(host) if isinstance(host, str) else host
        return self.run_dir / target.name / "root"

    def _network_up(self) -> None:
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        saved = self.run_dir / "ip_forward.orig"
        if not saved.exists():
            saved.write_text(forward.read_text())
        if not _quiet(["ip", "link", "show", "dev", self.bridge]):
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        if f"{self.net}.1/24" not in _run(["ip", "-4", "-o", "addr", "show", "dev", self.bridge]):
            _run(["ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        forward.write_text("1\n")
        if not _quiet(["nft", "list", "table", "ip", self.nft_table]):
            rules = (
                f"table ip {self.nft_table} {{\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    ip saddr {self.net}.0/24 oifname != "{self.bridge}" masquerade\n'
                "  }\n"
                "}\n"
            )
            _run(["nft", "-f", "-"], input=rules)

    def _start(self, host: Host) -> None:
        folder = self.run_dir / host.name
        root = folder / "root"
        for sub in ("upper", "work", "root"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        if root not in _mounts_under(root):
            lower = f"lowerdir={self.base},upperdir={folder / 'upper'},workdir={folder / 'work'}"
            _run(["mount", "-t", "overlay", "overlay", "-o", lower, str(root)])
        network = root / "etc/systemd/network"
        network.mkdir(parents=True, exist_ok=True)
        (network / "10-host0.network").write_text(
            f"[Match]\nName=host0\n[Network]\nAddress={host.ip}/24\nGateway={self.net}.1\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        (root / "etc/hostname").write_text(f"{host.name}\n")
        (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n")
        if not (root / "etc/ssh/ssh_host_ed25519_key").exists():
            _run(["ssh-keygen", "-A", "-f", str(root)])
        self._install_login(root)
        args = list(self.nspawn_args)
        if self.pip_cache:
            for user, target in (("root", "/root/.cache/pip"), (USER, f"/home/{USER}/.cache/pip")):
                cache = self.pip_cache / user
                cache.mkdir(parents=True, exist_ok=True)
                if user == USER:
                    os.chown(cache, *self._user_ids(root))
                args.append(f"--bind={cache}:{target}")
        (folder / "ip").write_text(host.ip + "\n")
        (folder / "nspawn.pid").unlink(missing_ok=True)
        argv = ["bash", "-c", WRAPPER, WRAPPER_NAME, str(root), host.machine, host.name, self.bridge]
        argv += [str(folder / "nspawn.pid"), *args]
        with (folder / "console.log").open("ab") as console:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._procs[host.name] = proc
        (folder / "wrapper.pid").write_text(f"{proc.pid}\n")
        log.info("started %s (%s) as wrapper pid %d", host.name, host.ip, proc.pid)

    # -- talking to hosts ------------------------------------------------------------------------------------------

    def ssh(
        self,
        host: Host | str,
        *cmd: str,
        check: bool = True,
        timeout: float = 120,
        user: str = "root",
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on the host over ssh (as root unless ``user``; words joined by ssh, run by the remote shell,
        as with ``ssh host a b``). Output is captured as text; ``check`` raises HostCommandError on failure."""
        target = self.host(host) if isinstance(host, str) else host
        argv = target.ssh_command(*cmd, user=user)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=False)
        if check and done.returncode != 0:
            raise HostCommandError(done.returncode, argv, done.stdout, done.stderr)
        return done

    def _wrapper_pid(self, host: Host) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.run_dir / host.name / "wrapper.pid").read_text())
        return None

    def is_running(self, host: Host | str) -> bool:
        """Whether the host's wrapper process is alive (it lives across reboots; it ends on poweroff)."""
        target = self.host(host) if isinstance(host, str) else host
        proc = self._procs.get(target.name)
        if proc is not None:
            return proc.poll() is None  # our child: poll() also reaps it
        pid = self._wrapper_pid(target)
        if pid is None or not _alive(pid):
            return False
        argv = _cmdline(pid)  # the PID may have been reused by now
        return WRAPPER_NAME in argv and str(self.run_dir / target.name / "root") in argv

    def wait_stopped(self, host: Host | str, timeout: float = 60) -> bool:
        """Wait until the host is off (poweroff inside ends nspawn with 0, and the wrapper with it); True if so."""
        deadline = time.monotonic() + timeout
        while self.is_running(host):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def wait_ssh(self, host: Host | str, timeout: float = 120) -> None:
        """Wait until the host answers ssh; HostError (with its console's last lines) if it does not in time."""
        target = self.host(host) if isinstance(host, str) else host
        deadline = time.monotonic() + timeout
        while True:
            if self.ssh(target, "true", check=False, timeout=15).returncode == 0:
                return
            if not self.is_running(target):
                raise HostError(f"{target.name} stopped before answering ssh:\n{self.console_tail(target)}")
            if time.monotonic() > deadline:
                raise HostError(f"{target.name} did not answer ssh in {timeout:.0f} s:\n{self.console_tail(target)}")
            time.sleep(0.5)

    def _wait_systemd(self, host: Host, timeout: float) -> str:
        done = self.ssh(host, "timeout", str(int(timeout)), "systemctl", "is-system-running", "--wait", check=False)
        state = done.stdout.strip()
        if state == "degraded":
            failed = self.ssh(host, "systemctl", "--failed", "--no-legend", "--plain", check=False).stdout.strip()
            log.warning("%s is degraded: %s", host.name, failed)
        elif state != "running":
            raise HostError(f"{host.name}: systemd did not finish starting ({state or done.stderr.strip()})")
        return state

    def _wait_user_login(self, host: Host) -> None:
        """The test user can log in: a boot leaves /run/nologin (pam_nologin refuses everyone but root) until
        systemd-user-sessions.service removes it, and a host where that unit failed answers root only. Seen once
        in CI on a worker booted again; here it is told with the unit's own log and started once more."""
        if self.ssh(host, "true", user=USER, check=False, timeout=30).returncode == 0:
            return
        unit = "systemd-user-sessions.service"
        why = self.ssh(host, f"systemctl status --no-pager -l {unit}; ls -l /run/nologin /etc/nologin", check=False)
        log.warning("%s refuses %s logins; %s:\n%s%s", host.name, USER, unit, why.stdout, why.stderr)
        self.ssh(host, "systemctl", "restart", unit, check=False, timeout=60)
        if self.ssh(host, "true", user=USER, check=False, timeout=30).returncode != 0:
            raise HostError(f"{host.name} refuses {USER} logins over ssh:\n{why.stdout}{self.console_tail(host)}")

    def reboot(self, host: Host | str, timeout: float = 120) -> None:
        """Reboot the host from inside and wait until it is back (a fresh boot: a file in /run is gone)."""
        target = self.host(host) if isinstance(host, str) else host
        marker = "/run/lab-harness-before-reboot"
        self.ssh(target, "touch", marker)
        self.ssh(target, "systemctl", "reboot", check=False, timeout=30)  # the connection may drop: ignore
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running(target):
                raise HostError(f"{target.name} stopped instead of rebooting:\n{self.console_tail(target)}")
            if self.ssh(target, "test", "!", "-e", marker, check=False, timeout=15).returncode == 0:
                self._wait_systemd(target, timeout=max(10.0, deadline - time.monotonic()))
                self._wait_user_login(target)
                return
            time.sleep(0.5)
        raise HostError(f"{target.name} did not come back from a reboot in {timeout:.0f} s")

    def power_off_hard(self, host: Host | str, timeout: float = 30) -> None:
        """Pull the plug: SIGKILL to the host's wrapper, its nspawn and every process inside at once (no shutdown,
        no unit stops, no final sync by anything inside), then clear what nspawn leaves behind so that ``up()``
        boots it again. Its disk (the overlay's upper folder) keeps what the kernel was given: this is a machine
        dying, not a disk losing its cache."""
        target = self.host(host) if isinstance(host, str) else host
        folder = self.run_dir / target.name
        victims: set[int] = set()
        if self.is_running(target):
            victims.add(self._wrapper_pid(target) or 0)
        with contextlib.suppress(OSError, ValueError):
            nspawn = int((folder / "nspawn.pid").read_text())
            if _alive(nspawn) and "systemd-nspawn" in Path(_cmdline(nspawn)[0]).name:
                victims.add(nspawn)
        victims.discard(0)
        for pid in list(victims):
            victims.update(_descendants(pid))
        for pid in victims:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in victims):
            self._reap(target.name)
            if time.monotonic() > deadline:
                raise HostError(f"{target.name}: processes {sorted(p for p in victims if _alive(p))} survived SIGKILL")
            time.sleep(0.1)
        self._reap(target.name)
        with contextlib.suppress(OSError):  # nspawn's lock on the image, which only its own exit removes
            root = (folder / "root").stat()
            (NSPAWN_LOCKS / f"inode-{root.st_dev}:{root.st_ino}").unlink(missing_ok=True)
        _quiet(["ip", "link", "delete", f"vb-{target.machine}"])
        with contextlib.suppress(OSError):
            shutil.rmtree(Path("/run/systemd/nspawn/propagate") / target.machine)
        log.info("%s powered off hard (%d processes killed)", target.name, len(victims))

    def console_tail(self, host: Host | str, lines: int = 20) -> str:
        name = host if isinstance(host, str) else host.name
        console = self.run_dir / name / "console.log"
        if not console.exists():
            return "(no console log)"
        return "\n".join(console.read_text(errors="replace").splitlines()[-lines:])

    def inventory(self, groups: dict[str, Sequence[Host]] | None = None) -> str:
        """An Ansible INI inventory of the hosts (group ``hosts``, plus ``groups``), logging in as ci with become."""
        hosts = self.hosts()
        out = ["[hosts]", *(f"{h.name} ansible_host={h.ip}" for h in hosts), ""]
        for group, members in (groups or {}).items():
            out += [f"[{group}]", *(h.name for h in members), ""]
        out += [
            "[all:vars]",
            f"ansible_user={USER}",
            "ansible_become=true",
            f"ansible_ssh_private_key_file={self.key}",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
            " -o IdentitiesOnly=yes'",
            "ansible_python_interpreter=/usr/bin/python3",
            "",
        ]
        return "\n".join(out)

    # -- tearing down ----------------------------------------------------------------------------------------------

    def down(self, *, grace: float = 30) -> None:
        """Remove everything this pool made, whatever state it is in: stop the hosts (TERM to the recorded PIDs,
        KILL after ``grace`` s), unmount the overlays, delete the bridge and nftables table, restore ip_forward,
        remove the run folder and nspawn's leftovers in /run. Ctrl-C waits until it is done. HostError at the end
        lists what could not be cleaned."""
        problems: list[str] = []
        with _sigint_deferred():
            folders = sorted(self.run_dir.glob("c*")) if self.run_dir.is_dir() else []
            self._stop_processes(folders, grace, problems)
            for folder in folders:
                with contextlib.suppress(OSError):  # nspawn's lock on the image; one killed by SIGKILL leaves it
                    root = (folder / "root").stat()
                    if folder / "root" in _mounts_under(folder / "root"):
                        (NSPAWN_LOCKS / f"inode-{root.st_dev}:{root.st_ino}").unlink(missing_ok=True)
                for point in _mounts_under(folder):
                    if not _quiet(["umount", str(point)]) and not _quiet(["umount", "-l", str(point)]):
                        problems.append(f"cannot unmount {point}")
                with contextlib.suppress(OSError):
                    _quiet(["ip", "link", "delete", f"vb-{self.machine_prefix}{folder.name}"])
                propagate = Path("/run/systemd/nspawn/propagate") / f"{self.machine_prefix}{folder.name}"
                with contextlib.suppress(OSError):
                    shutil.rmtree(propagate)
            if _quiet(["nft", "list", "table", "ip", self.nft_table]) and not _quiet(
                ["nft", "delete", "table", "ip", self.nft_table]
            ):
                problems.append(f"cannot delete nftables table ip {self.nft_table}")
            if _quiet(["ip", "link", "show", "dev", self.bridge]) and not _quiet(["ip", "link", "delete", self.bridge]):
                problems.append(f"cannot delete bridge {self.bridge}")
            saved = self.run_dir / "ip_forward.orig"
            # Another pool (another bridge) still routes through this machine: switching forwarding off under
            # it cut its hosts off the registries ("Temporary failure in name resolution" in their pip).
            if saved.is_file() and not _other_pools_running(self.bridge):
                try:
                    Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text())
                except OSError as error:
                    problems.append(f"cannot restore ip_forward: {error}")
            if self.run_dir.exists():
                if _mounts_under(self.run_dir):
                    problems.append(f"not removing {self.run_dir}: still mounted below it")
                else:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                    if self.run_dir.exists():
                        problems.append(f"cannot remove {self.run_dir}")
                    with contextlib.suppress(OSError):
                        self.run_dir.parent.rmdir()  # top/run, when no other pool uses it
            self._procs.clear()
        if problems:
            raise HostError("down() left things behind: " + "; ".join(problems))

    def _stop_processes(self, folders: Sequence[Path], grace: float, problems: list[str]) -> None:
        pids: dict[str, list[int]] = {}  # host -> [wrapper, nspawn] that are ours and alive
        for folder in folders:
            host = self._host(int(folder.name[1:])) if re.fullmatch(r"c\d+", folder.name) else None
            if host is None:
                continue
            mine = []
            if self.is_running(host):
                mine.append(self._wrapper_pid(host) or 0)
            with contextlib.suppress(OSError, ValueError):
                nspawn = int((folder / "nspawn.pid").read_text())
                if _alive(nspawn) and "systemd-nspawn" in Path(_cmdline(nspawn)[0]).name:
                    mine.append(nspawn)
            pids[host.name] = [pid for pid in mine if pid]
            for pid in pids[host.name][:1]:
                _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, mine in pids.items():
            while any(_alive(pid) for pid in mine) and time.monotonic() < deadline:
                self._reap(name)
                time.sleep(0.2)
            if any(_alive(pid) for pid in mine):
                log.warning("%s did not stop in %.0f s: SIGKILL", name, grace)
                victims = {pid for pid in mine if _alive(pid)}
                for pid in list(victims):
                    victims.update(_descendants(pid))
                for pid in victims:
                    _signal(pid, signal.SIGKILL)
                end = time.monotonic() + 10
                while any(_alive(pid) for pid in victims) and time.monotonic() < end:
                    self._reap(name)
                    time.sleep(0.2)
                if any(_alive(pid) for pid in victims):
                    problems.append(f"{name}: processes {sorted(p for p in victims if _alive(p))} survived SIGKILL")
            self._reap(name)

    def _reap(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            proc.poll()


# -- command line ----------------------------------------------------------------------------------------------------


def pool_from_env(**overrides: object) -> HostPool:
    """A pool configured by LAB_TEST_HOSTS_TOP / _BRIDGE / _NET (the defaults otherwise), then ``overrides``."""
    settings: dict[str, object] = {
        "top": os.environ.get("LAB_TEST_HOSTS_TOP") or DEFAULT_TOP,
        "bridge": os.environ.get("LAB_TEST_HOSTS_BRIDGE") or DEFAULT_BRIDGE,
        "net": os.environ.get("LAB_TEST_HOSTS_NET") or DEFAULT_NET,
    }
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return HostPool(**settings)  # type: ignore[arg-type]


def second_pool_from_env() -> HostPool:
    """The pool beside pool_from_env()'s, for a second lane of host tests: LAB_TEST_HOSTS_BRIDGE2 and _NET2, else
    that pool's bridge with a 2 after it and the next /24 (br-labtest2, 10.200.1); the same top folder (base, key,
    pip cache)."""
    first = pool_from_env()
    a, b, c = first.net.split(".")
    return pool_from_env(
        bridge=os.environ.get("LAB_TEST_HOSTS_BRIDGE2") or f"{first.bridge[:14]}2",
        net=os.environ.get("LAB_TEST_HOSTS_NET2") or f"{a}.{b}.{(int(c) + 1) % 256}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hosts.vmhosts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", help=f"top folder (LAB_TEST_HOSTS_TOP, default {DEFAULT_TOP})")
    parser.add_argument("--bridge", help=f"bridge (LAB_TEST_HOSTS_BRIDGE, default {DEFAULT_BRIDGE})")
    parser.add_argument("--net", help=f"first three octets of the /24 (LAB_TEST_HOSTS_NET, default {DEFAULT_NET})")
    parser.add_argument("--nspawn-arg", action="append", default=[], help="extra systemd-nspawn argument (repeat)")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="debootstrap the cached base rootfs (once)")
    build.add_argument("--rebuild", action="store_true", help="build it again even if it is there")
    sub.add_parser("up", help="start hosts c1..cN and wait for them").add_argument("n", type=int, nargs="?", default=1)
    sub.add_parser("down", help="stop the hosts and remove everything the pool made")
    sub.add_parser("inventory", help="print an Ansible inventory of the hosts")
    ssh = sub.add_parser("ssh", help="ssh to a host as root (interactive without CMD)")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    pool = pool_from_env(top=args.top, bridge=args.bridge, net=args.net, nspawn_args=args.nspawn_arg)
    try:
        if args.command == "build":
            started = time.monotonic()
            print(pool.build_base(rebuild=args.rebuild), f"({time.monotonic() - started:.0f} s)")
        elif args.command == "up":
            for host in pool.up(args.n):
                print(f"{host.name} {host.ip}")
        elif args.command == "down":
            pool.down()
        elif args.command == "inventory":
            print(pool.inventory(), end="")
        elif args.command == "ssh":
            host = pool.host(args.host)
            if not args.cmd:
                argv_ssh = host.ssh_command(user="root")
                os.execvp(argv_ssh[0], [argv_ssh[0], "-t", *argv_ssh[1:]])  # noqa: S606 - an interactive login
            return subprocess.run(host.ssh_command(*args.cmd, user="root"), check=False).returncode
    except (HostsUnavailable, HostError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
