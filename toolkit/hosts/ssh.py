"""The hosts of a remote lab (ssh and gcp targets) and the one way the toolkit reaches them: OpenSSH.

Every SSH use (Ansible, tunnels, trial slots, backups) shares the same options: the stack's key, the
stack's own known-hosts file, connection sharing (ControlMaster/ControlPersist) and keep-alives that notice
a host that went away. Host keys: the ssh target's machines (the user's own) are trusted on first use and a
changed key is refused; the gcp target's VMs are pinned before the first connection from the keys GCE
publishes for them (`toolkit.labs.ssh.pin_host_keys`) and checked strictly: an unknown or different key
is refused.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit import proc
from toolkit.config import paths, schema
from toolkit.errors import LabError

TRACKER = "tracker"
WORKER = "worker"
CONTROL_PERSIST_S = 30
CONNECT_TIMEOUT_S = 10
ALIVE_INTERVAL_S = 5
ALIVE_COUNT = 3  # a host that stops answering is noticed within ALIVE_INTERVAL_S * ALIVE_COUNT
# `extra` options for a session on a connection of its own, not the shared master: its end is its own (a tunnel that
# closes, a slot's runner session that ends when its worker's keep-alives go unanswered).
OWN_CONNECTION = ("-o", "ControlMaster=no", "-o", "ControlPath=none")


@dataclass(frozen=True)
class Host:
    """One machine of the lab: its name in the lab (tracker, worker-1, ...), how to reach it, its role."""

    name: str
    address: str
    role: str


@dataclass(frozen=True)
class Access:
    """How the toolkit logs in: user, private key, the stack's known-hosts file, and whether host keys must
    already be in it (`strict`: pinned keys only) or are trusted on first use."""

    user: str
    key: Path
    known_hosts: Path
    strict: bool = False

    def options(self) -> list[str]:
        control = _control_dir()
        return [
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"StrictHostKeyChecking={'yes' if self.strict else 'accept-new'}",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o",
            f"ServerAliveInterval={ALIVE_INTERVAL_S}",
            "-o",
            f"ServerAliveCountMax={ALIVE_COUNT}",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={control}/%C",
            "-o",
            f"ControlPersist={CONTROL_PERSIST_S}s",
            "-o",
            "LogLevel=ERROR",
        ]

    def login(self, host: Host) -> str:
        return f"{self.user}@{host.address}"

    def ssh(self, host: Host, command: Sequence[str] | None = None, *, extra: Sequence[str] = ()) -> list[str]:
        """The ssh argv running `command` (quoted for the remote shell) on a host. `extra` options come
        first, so they win over the shared ones (ssh keeps the first value of each option)."""
        argv = ["ssh", *extra, *self.options(), self.login(host)]
        if command:
            argv += ["--", shlex.join(command)]
        return argv


# A socket's path must fit sun_path: 104 bytes on macOS and the BSDs, 108 on Linux, its NUL included. ssh makes the
# master's socket as "<ControlPath>.<16 random characters>" before renaming it (OpenSSH mux.c, muxserver_listen) and
# refuses a path that does not fit (misc.c, unix_listener: "path too long"); %C is 40 hex characters.
SUN_PATH_MAX = 104
CONTROL_SOCKET_TAIL = len("/") + 40 + len(".") + 16


def _control_dir() -> Path:
    """Where ControlMaster sockets live: private, and short enough for a socket path. A long temporary folder (macOS
    gives each user one under /var/folders/, ~50 characters) falls back to /tmp."""
    folder = Path(tempfile.gettempdir()) / f"lab-ssh-{os.getuid()}"
    if len(os.fsencode(folder)) + CONTROL_SOCKET_TAIL >= SUN_PATH_MAX:
        folder = Path("/tmp") / f"lab-ssh-{os.getuid()}"  # noqa: S108 (a folder of our own, checked below)
    with contextlib.suppress(FileExistsError):  # a file or a link there is told below
        folder.mkdir(mode=0o700)
    made = folder.lstat()  # not followed: a link someone else left there is refused, wherever it points
    if not stat.S_ISDIR(made.st_mode) or made.st_uid != os.getuid():
        raise LabError(
            f"{folder} is not a folder of your own", hint="remove it, or set TMPDIR to a short folder of your own"
        )
    folder.chmod(0o700)
    return folder


def hosts_of(settings: schema.Settings) -> list[Host]:
    """The ssh target's machines, from the stack file: the tracker, then worker-1, worker-2, ..."""
    if not settings.tracker_host:
        raise LabError("the stack names no tracker", hint="set lab:trackerHost in the stack file")
    found = [Host(TRACKER, settings.tracker_host, TRACKER)]
    found += [Host(f"worker-{i}", address, WORKER) for i, address in enumerate(settings.worker_hosts, start=1)]
    return found


def access_of(settings: schema.Settings) -> Access:
    key = Path(settings.ssh_private_key_path).expanduser()
    if not key.is_file():
        raise NoKey(key)
    state = paths.stack_home(settings.stack)
    state.mkdir(parents=True, exist_ok=True)
    return Access(user=settings.ssh_user, key=key, known_hosts=state / "known_hosts")


def find(hosts: Sequence[Host], name: str) -> Host:
    for host in hosts:
        if name in (host.name, host.address):
            return host
    known = ", ".join(h.name for h in hosts)
    raise LabError(f"no host {name!r} in this lab", hint=f"its hosts: {known}")


def run(
    access: Access,
    host: Host,
    command: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 120,
    stdin: str | None = None,
) -> proc.Result:
    """Run a command on a host and capture its output; an unreachable host is a one-line LabError."""
    result = proc.run(access.ssh(host, command), check=False, timeout=timeout, stdin=stdin)
    if result.returncode == 255:
        raise failure(access, host, result.stderr, "no answer")
    if check and result.returncode != 0:
        raise proc.CommandFailed(result)
    return result


class NoKey(LabError):
    """This machine has not the lab's SSH key (a CI runner, another laptop): it cannot log in to the hosts."""

    def __init__(self, key: Path) -> None:
        self.key = key
        super().__init__(
            f"no private key at {key} (the key of lab:sshPublicKeyPath without .pub)",
            hint="create one with `ssh-keygen -t ed25519` or point lab:sshPublicKeyPath at your key's .pub",
        )


class Unreachable(LabError):
    """SSH could not reach a host (down, powered off, network gone)."""

    def __init__(self, host: Host, reason: str, hint: str | None = None) -> None:
        self.host = host
        super().__init__(
            f"cannot reach {host.name} ({host.address}) over SSH: {reason}",
            hint=hint or "check that it is up and that lab:sshUser and lab:sshPublicKeyPath let you log in",
        )


class HostKeyRefused(Unreachable):
    """The host did not show the key known for it (pinned, or trusted on first use): SSH refused it."""


# OpenSSH's own words (sshconnect.c): "Host key for <host> has changed and you have requested strict
# checking." / "No ED25519 host key is known for <host> and you have requested strict checking.", each
# followed by "Host key verification failed."
_KEY_CHANGED = ("has changed and you have requested strict checking", "REMOTE HOST IDENTIFICATION HAS CHANGED")
_KEY_UNKNOWN = "host key is known for"
_DENIED = "Permission denied (publickey"


def failure(access: Access, host: Host, stderr: str, fallback: str) -> Unreachable:
    """What an ssh exit status 255 means, as one line: a refused host key, a refused login, or no answer."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else fallback
    if any(marker in stderr for marker in _KEY_CHANGED):
        return HostKeyRefused(
            host,
            "its host key is not the one known for it, so the connection was refused",
            hint="if the VM was recreated, `lab up` pins its new keys; if not, someone may be in the way: "
            "do not connect",
        )
    if _KEY_UNKNOWN in stderr and access.strict:
        return HostKeyRefused(
            host,
            "no host key is pinned for it (GCE has not published its keys, or they were not read)",
            hint="`lab up` waits for the keys and pins them; the VM needs metadata enable-guest-attributes=TRUE",
        )
    if _DENIED in stderr and access.strict:
        return Unreachable(
            host,
            last,
            hint="if your organization enforces constraints/compute.requireOsLogin, the VMs ignore the lab's key "
            "(`lab doctor --target gcp` checks it); otherwise check lab:sshUser and lab:sshPublicKeyPath",
        )
    return Unreachable(host, last)


def fetch_folder(access: Access, host: Host, remote_parent: str, name: str, local_parent: Path) -> Path:
    """Copy a remote folder (read with sudo) to local_parent/name, streamed as tar over the SSH connection."""
    local_parent.mkdir(parents=True, exist_ok=True)
    remote = access.ssh(host, ["sudo", "-n", "tar", "-C", remote_parent, "-cf", "-", name])
    with subprocess.Popen(remote, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as sender:
        receiver = subprocess.run(
            ["tar", "-C", str(local_parent), "-xf", "-"], stdin=sender.stdout, capture_output=True, check=False
        )
        assert sender.stdout is not None  # noqa: S101 -- piped above
        sender.stdout.close()
        error = sender.stderr.read().decode(errors="replace").strip() if sender.stderr else ""
        sender.wait()
    if sender.returncode == 255:
        raise failure(access, host, error, "connection lost")
    if sender.returncode != 0 or receiver.returncode != 0:
        reason = error or receiver.stderr.decode(errors="replace").strip()
        raise LabError(f"copying {remote_parent}/{name} from {host.name} failed: {reason.splitlines()[-1:]}")
    return local_parent / name


def send_folder(access: Access, host: Host, folder: Path, remote_parent: str, owner: str | None = None) -> str:
    """Copy a local folder to remote_parent/<its name> (written with sudo); returns the remote path."""
    untar = ["sudo", "-n", "tar", "-C", remote_parent, "-xf", "-", "--no-same-owner"]
    prepare = ["sudo", "-n", "mkdir", "-p", remote_parent]
    script = f"{shlex.join(prepare)} && {shlex.join(untar)}"
    if owner:
        script += f" && sudo -n chown -R {shlex.quote(owner)} {shlex.quote(remote_parent + '/' + folder.name)}"
    with subprocess.Popen(["tar", "-C", str(folder.parent), "-cf", "-", folder.name], stdout=subprocess.PIPE) as sender:
        received = subprocess.run(
            [*access.ssh(host), "--", script], stdin=sender.stdout, capture_output=True, check=False
        )
        assert sender.stdout is not None  # noqa: S101
        sender.stdout.close()
        sender.wait()
    if received.returncode == 255:
        raise failure(access, host, received.stderr.decode(errors="replace"), "connection lost")
    if received.returncode != 0 or sender.returncode != 0:
        reason = received.stderr.decode(errors="replace").strip().splitlines()
        raise LabError(f"copying {folder} to {host.name} failed: {reason[-1] if reason else 'tar failed'}")
    return f"{remote_parent}/{folder.name}"


def forward(access: Access, host: Host, local_port: int, target: str, target_port: int) -> subprocess.Popen:
    """`ssh -N -L` on a connection of its own (closing it closes the forward); returns once it listens."""
    import socket

    argv = access.ssh(
        host,
        extra=[
            "-N",
            *OWN_CONNECTION,
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{local_port}:{target}:{target_port}",
        ],
    )
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
            if process.returncode == 255 and "forward" not in error.lower():
                raise failure(access, host, error, "no answer")
            raise LabError(
                f"cannot forward 127.0.0.1:{local_port} to {target}:{target_port} on {host.name}: "
                f"{error.splitlines()[-1] if error else 'ssh exited'}",
                hint="is that local port free? pick another one",
            )
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", local_port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise LabError(f"the tunnel to {host.name} did not open within {CONNECT_TIMEOUT_S + 10} s")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
