"""A lab on remote hosts (the ssh target; the gcp target reuses it once its VMs exist).

The controller (this machine) keeps the stack's state in `$LAB_HOME/stacks/<stack>/`:
  known_hosts  the hosts' SSH keys, trusted on first use
  ansible/     ansible-runner's private folder (artifacts of the last runs)
  backups/     verified backups downloaded from the tracker
  secrets/     the Jupyter token (0600, in a 0700 folder)
The hosts are configured by the packaged playbooks (`toolkit.configure`); the tracker keeps its DBs in
/srv/lab and runs the tracker agent (`toolkit.tracker_agent`) for backups and restores.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import backups, configure, local_lab, paths, remote, schema, stack
from toolkit.errors import LabError

DATA = "/srv/lab"
TRACKER_USER = "lab-tracker"
AGENT = ["/opt/lab/venv/bin/python", "-m", "toolkit.tracker_agent"]
OPTUNA_PORT = 5001
JUPYTER_PORT = 8888
TRACKER_UNITS = ("lab-mlflow.service", "lab-optuna.service", "lab-backup.timer")
WORKER_UNITS = ("lab-jupyter.service", "lab-idle.timer")
AGENT_TIMEOUT_S = 1800

Say = Callable[[str], None]


@dataclass(frozen=True)
class RemoteLab:
    settings: schema.Settings
    hosts: tuple[remote.Host, ...]
    access: remote.Access
    root: Path
    bucket: str | None

    @property
    def stack(self) -> str:
        return self.settings.stack

    @property
    def tracker(self) -> remote.Host:
        return self.hosts[0]

    @property
    def workers(self) -> tuple[remote.Host, ...]:
        return self.hosts[1:]

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def token_file(self) -> Path:
        return self.root / "secrets" / "jupyter_token"


def open_lab(stack_name: str, target: str) -> RemoteLab:
    """The stack's remote lab: its settings must be valid for the target."""
    stack_file, resolution = stack.load(stack_name, target=target)
    if resolution.problems or resolution.settings is None:
        first = resolution.problems[0] if resolution.problems else "its values cannot be read"
        raise LabError(
            f"{stack_file.path.name}: {first}",
            hint=f"`lab config validate --stack {stack_name}` lists every problem",
        )
    settings = resolution.settings
    root = local_lab.check_lab_home() / "stacks" / settings.stack
    root.mkdir(parents=True, exist_ok=True)
    if target == "gcp":
        hosts, bucket = gcp_hosts(settings)
    else:
        hosts = tuple(remote.hosts_of(settings))
        bucket = settings.bucket_name if resolution.sources.get("lab:bucketName") == "stack" else None
    return RemoteLab(settings=settings, hosts=hosts, access=remote.access_of(settings), root=root, bucket=bucket)


def gcp_hosts(settings: schema.Settings) -> tuple[tuple[remote.Host, ...], str | None]:
    """The gcp lab's hosts and bucket, from the stack's Pulumi outputs (read without the Pulumi CLI)."""
    from toolkit import pulumi_state

    backend = pulumi_state.backend_url(settings)
    state = pulumi_state.read(backend, settings.stack)
    outputs = state.outputs if state else {}
    return hosts_from_outputs(outputs, settings.stack, backend), outputs.get("bucket_name") or None


def hosts_from_outputs(outputs: dict[str, Any], stack_name: str, backend: str = "") -> tuple[remote.Host, ...]:
    """The tracker, then worker-1, worker-2, ... at their external addresses; workers without one (stopped,
    preempted) are left out. The program's outputs are the contract: tests run the program under mocks and
    hand its outputs here."""
    tracker = outputs.get("tracker_external_ip")
    if not isinstance(tracker, str) or not tracker:
        where = f" in {backend}" if backend else ""
        raise LabError(
            f"the gcp lab of stack {stack_name} is not up (no tracker in its Pulumi state{where})", hint="run `lab up`"
        )
    found = [remote.Host(remote.TRACKER, tracker, remote.TRACKER)]
    addresses = outputs.get("worker_external_ips") or []
    found += [
        remote.Host(f"worker-{i}", address, remote.WORKER)
        for i, address in enumerate(addresses, start=1)
        if isinstance(address, str) and address
    ]
    return tuple(found)


def agent(lab: RemoteLab, *args: str, timeout: float = AGENT_TIMEOUT_S) -> str:
    """Run the tracker agent on the tracker, as the tracker's user; its stdout."""
    command = ["sudo", "-n", "-u", TRACKER_USER, *AGENT, *args, "--data", DATA, "--stack", lab.stack]
    result = remote.run(lab.access, lab.tracker, command, check=False, timeout=timeout)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit code {result.returncode}"
        if "No such file" in reason or "can't open file" in reason or "No module named" in reason:
            raise LabError(f"the tracker is not configured yet ({reason})", hint="run `lab up` first")
        raise LabError(f"on {lab.tracker.name}: {reason}")
    return result.stdout


def extravars(lab: RemoteLab, restore_from: Path | None) -> dict[str, Any]:
    import toolkit

    local_lab.ensure_token(lab.token_file)
    return {
        "lab_stack": lab.stack,
        "lab_toolkit_src": str(Path(toolkit.__file__).resolve().parent),
        "lab_mlflow_port": schema.MLFLOW_PORT,
        "lab_optuna_port": OPTUNA_PORT,
        "lab_jupyter_port": JUPYTER_PORT,
        # the value is a lookup, so the token itself never lands in the runner's files or events
        "lab_jupyter_token": "{{ lookup('ansible.builtin.file', '" + str(lab.token_file) + "') }}",
        "lab_bucket": lab.bucket or "",
        "lab_backup_keep": lab.settings.backup_keep,
        "lab_backup_days": lab.settings.backup_days,
        "lab_idle_minutes": lab.settings.idle_minutes,
        "lab_restore_from": str(restore_from) if restore_from else "",
    }


def newest_verified_backup(lab: RemoteLab, say: Say) -> backups.Backup | None:
    for candidate in backups.listing(lab.backups_dir):
        try:
            backups.verify(candidate.path)
        except LabError as exc:
            say(f"skipping backup {candidate.manifest.id}: {exc.one_line()}")
            continue
        return candidate
    return None


def reachable(lab: RemoteLab, hosts: tuple[remote.Host, ...] | None = None) -> dict[str, str | None]:
    """Host name -> None when SSH answers, else why not (checked in parallel)."""
    chosen = hosts if hosts is not None else lab.hosts

    def probe(host: remote.Host) -> str | None:
        try:
            remote.run(lab.access, host, ["true"], timeout=remote.CONNECT_TIMEOUT_S + 5)
        except LabError as exc:
            return exc.one_line()
        return None

    with ThreadPoolExecutor(max_workers=max(len(chosen), 1)) as pool:
        return dict(zip([h.name for h in chosen], pool.map(probe, chosen), strict=True))


def configure_hosts(
    lab: RemoteLab, say: Say, on_change: Callable[[configure.Report], None]
) -> tuple[configure.Report, backups.Backup | None]:
    """Run the site playbook: configure every host, restore the tracker when it has no DB yet."""
    restore_from = newest_verified_backup(lab, say)
    report = configure.run(
        "site.yml",
        lab.hosts,
        lab.access,
        extravars(lab, restore_from.path if restore_from else None),
        lab.root / "ansible",
        on_change=on_change,
    )
    return report, restore_from


def tracker_facts(lab: RemoteLab) -> dict[str, Any]:
    text = remote.run(lab.access, lab.tracker, ["cat", "/etc/lab/tracker.json"], check=False).stdout
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise LabError(f"{lab.tracker.name} is not configured yet", hint="run `lab up` first") from None


def backup(lab: RemoteLab, *, reason: str, say: Say) -> tuple[backups.Backup, dict[str, Any]]:
    """A backup taken on the tracker (the same code as `lab backup --local`), downloaded and verified here."""
    document = json.loads(
        agent(
            lab,
            "backup",
            "--keep",
            str(lab.settings.backup_keep),
            "--days",
            str(lab.settings.backup_days),
            "--reason",
            reason,
            "--json",
            *(["--bucket", lab.bucket] if lab.bucket else []),
        )
    )
    backup_id = document["id"]
    incoming = lab.backups_dir / f"{backups.INCOMING}{backup_id}"
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        fetched = remote.fetch_folder(lab.access, lab.tracker, f"{DATA}/backups", backup_id, incoming)
        manifest = backups.verify(fetched)
        final = lab.backups_dir / backup_id
        fetched.rename(final)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    backups.rotate(lab.backups_dir, keep_last=lab.settings.backup_keep, keep_days=lab.settings.backup_days)
    say(f"backup {backup_id} taken on {lab.tracker.name}, downloaded and verified")
    return backups.Backup(final, manifest), document


def units_state(lab: RemoteLab, host: remote.Host) -> dict[str, str]:
    units = TRACKER_UNITS if host.role == remote.TRACKER else WORKER_UNITS
    result = remote.run(lab.access, host, ["systemctl", "is-active", *units], check=False, timeout=30)
    states = result.stdout.split()
    return dict(zip(units, states + ["unknown"] * (len(units) - len(states)), strict=True))


def restore(lab: RemoteLab, chosen: backups.Backup, *, stop: bool, say: Say) -> None:
    """Send a verified backup to the tracker and put it in place, keeping the DBs it replaces."""
    running = [u for u, s in units_state(lab, lab.tracker).items() if s == "active" and u != "lab-backup.timer"]
    if running and not stop:
        raise LabError("the tracker is running", hint="pass --stop to stop it first (it is started again after)")
    remote_path = remote.send_folder(lab.access, lab.tracker, chosen.path, f"{DATA}/restore", owner=TRACKER_USER)
    if running:
        remote.run(lab.access, lab.tracker, ["sudo", "-n", "systemctl", "stop", *TRACKER_UNITS[:2]])
    try:
        agent(lab, "restore", "--from", remote_path)
    finally:
        if running:
            remote.run(lab.access, lab.tracker, ["sudo", "-n", "systemctl", "start", *TRACKER_UNITS[:2]])
    say(f"restored {chosen.manifest.id} on {lab.tracker.name}")


def stop_services(lab: RemoteLab, say: Say, on_change: Callable[[configure.Report], None]) -> configure.Report | None:
    """Stop the lab's services on every host that answers; machines are never deleted."""
    answers = reachable(lab)
    for name, why in answers.items():
        if why:
            say(f"{name} does not answer, so its services are already stopped ({why})")
    up_hosts = tuple(h for h in lab.hosts if answers[h.name] is None)
    if not up_hosts:
        return None
    return configure.run(
        "stop.yml", up_hosts, lab.access, {"lab_stack": lab.stack}, lab.root / "ansible", on_change=on_change
    )


def wait_for_ssh(lab: RemoteLab, host: remote.Host, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            remote.run(lab.access, host, ["true"], timeout=remote.CONNECT_TIMEOUT_S + 5)
            return
        except LabError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def state_dir(stack_name: str) -> Path:
    return paths.stack_home(stack_name)


def forget_changed_host_keys(lab: RemoteLab) -> None:
    """gcp: VMs come and go, so an address may now belong to a new machine with a new host key. Forget the
    keys of addresses that are new or moved since the last `lab up` (kept in hosts.json); the rest stay
    pinned. `lab down` on gcp forgets them all."""
    from toolkit import proc

    record = lab.root / "hosts.json"
    try:
        before = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        before = {}
    now = {host.name: host.address for host in lab.hosts}
    if lab.access.known_hosts.exists():
        for name, address in now.items():
            if before.get(name) != address:
                proc.run(["ssh-keygen", "-R", address, "-f", str(lab.access.known_hosts)], check=False)
    record.write_text(json.dumps(now, indent=2) + "\n")


def forget_all_host_keys(lab_root: Path) -> None:
    """After `lab down` on gcp: the machines are gone, and so are their keys."""
    for name in ("known_hosts", "known_hosts.old", "hosts.json"):
        (lab_root / name).unlink(missing_ok=True)
