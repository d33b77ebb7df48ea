"""A lab on remote hosts (the ssh target; the gcp target reuses it once its VMs exist).

The controller (this machine) keeps the stack's state in `$LAB_HOME/stacks/<stack>/`:
  known_hosts  the hosts' SSH keys: trusted on first use (ssh target), written from the pins (gcp)
  hostkeys.json  gcp: each VM's SSH host keys as GCE published them, pinned per instance id
  ansible/     ansible-runner's private folder (artifacts of the last runs)
  backups/     verified backups downloaded from the tracker
  secrets/     each worker's own Jupyter token, jupyter_token.<worker>, and the stack's datasets_token (the
               tracker's dataset server asks it of every request) (0600, in a 0700 folder)
The hosts are configured by the packaged playbooks (`toolkit.hosts.configure`); the tracker keeps its DBs in
/srv/lab and runs the tracker agent (`toolkit.tracker.agent`) for backups and restores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from toolkit.config import paths, schema, stack, stack_init
from toolkit.console import age
from toolkit.envs.spec import stack_requirements
from toolkit.errors import EXIT_BACKUP_FAILED, LabError
from toolkit.hosts import configure
from toolkit.hosts import ssh as remote
from toolkit.labs import local as local_lab
from toolkit.labs.base import (
    Ask,
    DownRequest,
    Forward,
    Lab,
    Report,
    RestoreRequest,
    Table,
    UpRequest,
    backup_failed,
    keeps_its_data,
)
from toolkit.sweeps.place import SweepPlace
from toolkit.tracker import backups
from toolkit.tracker import dashboard as optuna_dashboard

DATA = "/srv/lab"
GUARD_STATE = "/var/lib/lab/guard"  # the budget guard's own folder (root's alone): the budget `lab up` hands it
TRACKER_USER = "lab-tracker"
AGENT = ["/opt/lab/venv/bin/python", "-m", "toolkit.tracker.agent"]
OPTUNA_PORT = 5001
JUPYTER_PORT = 8888
DASHBOARD_UNIT = "lab-optuna-dashboard.service"  # optuna-dashboard on the tracker's 127.0.0.1, over the proxy
TRACKER_UNITS = ("lab-mlflow.service", "lab-optuna.service", DASHBOARD_UNIT, "lab-backup.timer", "lab-replica.service")
# What takes writes (the dashboard's go through the proxy; it is stopped with it so that it never shows a
# restored DB from its caches): stopped first, started last.
SERVING = TRACKER_UNITS[:3]
REPLICA_UNIT = "lab-replica.service"
UNDONE = "pre-restore"  # a restore's copy of what it replaced: never restored on its own
# The lab_tracker task that brings back a tracker without a DB (it runs, and so counts as changed, only then).
RESTORE_TASK = "Restore the newest of the replica and the backups as the tracker's DBs"
WORKER_UNITS = ("lab-jupyter.service", "lab-idle.timer")
AGENT_TIMEOUT_S = 1800
BUDGET_READ_TIMEOUT_S = 20  # the tracker's budget record: a terminal's sweep reads it every 30 s
REPLICA_CATCH_UP_TIMEOUT_S = 240  # the agent's wait: toolkit.tracker.replica.CATCH_UP_TIMEOUT_S per DB, and SSH
TOKEN_FILE_PREFIX = "jupyter_token."  # noqa: S105 -- a file name: secrets/jupyter_token.<worker>
DATASETS_TOKEN = "datasets_token"  # noqa: S105 -- a file name: secrets/datasets_token, the tracker's dataset server's

Say = Callable[[str], None]

if TYPE_CHECKING:
    from toolkit.console import Ui
    from toolkit.labs.prerequisites import Check
    from toolkit.sweeps.hosting import SweepHost


@dataclass(frozen=True)
class SshLab(Lab):
    """A lab on hosts reached over SSH: the `Lab` of the ssh target, and what the gcp lab is once its VMs run."""

    target: ClassVar[str] = "ssh"
    settings: schema.Settings
    hosts: tuple[remote.Host, ...]
    access: remote.Access
    root: Path
    bucket: str | None
    # gcp: every VM of the lab and its state now (None for the ssh target); `hosts` holds the reachable ones
    gcp: GcpView | None = None

    # -- the `Lab` interface (the work is in the functions below) ----------------------------------------------
    @classmethod
    def open(cls, stack_name: str, ui: Ui | None = None) -> SshLab:
        return open_lab(stack_name, "ssh")

    @classmethod
    def prerequisites(
        cls, public_key_path: str, project: str | None, settings: schema.Settings | None = None
    ) -> list[Check]:
        from toolkit.labs import prerequisites as checks

        return checks.machine() + checks.reaching_hosts(public_key_path)

    @classmethod
    def ask_init(cls, ask: Ask, raw: dict[str, Any]) -> None:
        ask("lab:trackerHost", "Tracker machine (an address or a ~/.ssh/config alias)")
        ask(
            "lab:workerHosts",
            "Worker machines, comma-separated (empty for none)",
            default="",
            make=stack_init.split_answer,
        )

    def up(self, request: UpRequest, ui: Ui) -> Report:
        if request.preview:
            return preview_up(self)
        report = configure_lab(self, ui, {})
        priced_up(self)
        return report

    def hand_budget(self, document: dict[str, Any]) -> None:
        """The tracker's guard reads it from its own folder, which only root writes (`lab-budget-guard.service`)."""
        path = f"{GUARD_STATE}/budget.json"
        remote.run(self.access, self.tracker, ["sudo", "-n", "tee", path], stdin=json.dumps(document), timeout=60)

    def budget_record(self) -> dict[str, Any] | None:
        """The tracker's budget record (root's: read through the SSH user's passwordless sudo)."""
        command = ["sudo", "-n", "cat", f"{GUARD_STATE}/budget.json"]
        ran = remote.run(self.access, self.tracker, command, check=False, timeout=BUDGET_READ_TIMEOUT_S)
        if ran.returncode != 0:
            if "No such file" in ran.stderr:
                return {}
            said = ran.stderr.strip()[-200:]
            raise LabError(f"could not read {GUARD_STATE}/budget.json on {self.tracker.name}: {said}")
        try:
            record = json.loads(ran.stdout)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def status(self, ui: Ui) -> Report:
        return hosts_status(self, ui)

    def backup(self, ui: Ui) -> Report:
        made, document = backup(self, reason="manual", say=ui.say)
        document.update({"path": str(made.path), "tracker_path": document.get("path")})
        lines = [f"backup {made.manifest.id} -> {made.path} (taken on {self.tracker.name}, verified here)"]
        if document.get("uploaded"):
            lines.append(f"uploaded and verified: {document['uploaded']}")
        return Report(document, lines)

    def restore(self, request: RestoreRequest, ui: Ui) -> Report:
        if request.at is not None:
            return restore_at(self, request, ui)
        chosen = local_lab.choose_backup(
            self.backups_dir, self.bucket, self.stack, request, ui, "take one with `lab backup`"
        )
        restore(self, chosen, stop=request.stop, say=ui.say)
        return Report(
            {"stack": self.stack, "restored": chosen.manifest.id},
            [f"restored {chosen.manifest.id} on {self.tracker.name}"],
        )

    def down(self, request: DownRequest, ui: Ui) -> Report:
        report = stop_lab(self, request, ui)
        from toolkit.cost import uptime

        uptime.record_down(self.stack)
        return report

    def sweep_place(
        self, exits: contextlib.ExitStack, parallel: int | None, gpus: list[str] | None, ui: Ui
    ) -> SweepPlace:
        from toolkit.cost import prices

        return sweep_place(self, exits, parallel, gpus, prices.host_hourly)

    detach_by_default: ClassVar[bool] = True

    def sweep_host(self) -> SweepHost:
        from toolkit.sweeps.hosting import TrackerSweeps

        return TrackerSweeps(self.access, self.tracker, DATA, TRACKER_USER)

    def detached_place(self, parallel: int | None, gpus: list[str] | None) -> dict[str, Any]:
        from toolkit.cost import prices

        return detached_place(self, parallel, gpus, prices.host_hourly)

    def study_storage(self) -> contextlib.AbstractContextManager[Any]:
        return study_storage(self)

    def forwards(self, mlflow_port: int, jupyter_port: int, dashboard_port: int) -> list[Forward]:
        facts = tracker_facts(self)
        plan = [
            Forward("MLflow", self.tracker, mlflow_port, facts.get("mlflow_bind", "127.0.0.1"), schema.MLFLOW_PORT),
            Forward(
                "Optuna dashboard",
                self.tracker,
                dashboard_port,
                "127.0.0.1",
                int(facts.get("dashboard_port", optuna_dashboard.DEFAULT_PORT)),
            ),
        ]
        plan += [  # each worker has its own token
            Forward(f"Jupyter on {w.name}", w, jupyter_port + i, "127.0.0.1", JUPYTER_PORT, "/lab", self.token_file(w))
            for i, w in enumerate(self.workers)
        ]
        return plan

    def open_forward(self, forward: Forward) -> Any:
        return remote.forward(self.access, forward.host, forward.local_port, forward.address, forward.remote_port)

    def login(self, host: str, command: list[str] | None) -> list[str]:
        for stopped in self.stopped:
            if host in (stopped.host.name, stopped.instance):
                raise LabError(
                    f"{stopped.host.name} ({stopped.instance}) is {stopped.describe()}", hint="`lab up` starts it"
                )
        found = remote.find(self.hosts, host)
        return self.access.ssh(found, command or None, extra=[] if command else ["-t"])

    @property
    def stopped(self) -> tuple[HostState, ...]:
        """gcp: the lab's VMs that cannot be used now (stopped, preempted, starting, gone)."""
        return tuple(s for s in self.gcp.states if not s.usable) if self.gcp else ()

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

    def token_file(self, host: remote.Host) -> Path:
        """A worker's own Jupyter token (no two hosts share one; the local lab's is local_lab's)."""
        return self.root / "secrets" / f"{TOKEN_FILE_PREFIX}{host.name}"


def _resolved(stack_name: str, target: str) -> tuple[schema.Settings, schema.Resolution]:
    stack_file, resolution = stack.load(stack_name, target=target)
    if resolution.problems or resolution.settings is None:
        first = resolution.problems[0] if resolution.problems else "its values cannot be read"
        raise LabError(
            f"{stack_file.path.name}: {first}",
            hint=f"`lab config validate --stack {stack_name}` lists every problem",
        )
    return resolution.settings, resolution


def settings_for(stack_name: str, target: str) -> schema.Settings:
    """The stack's settings, which must be valid for the target."""
    return _resolved(stack_name, target)[0]


def open_lab(stack_name: str, target: str, *, say: Say | None = None) -> SshLab:
    """The stack's remote lab: its settings must be valid for the target. gcp: the VMs' state and addresses
    are read now (Compute API), their host keys pinned; stopped VMs are left out of `hosts` (said once)."""
    settings, resolution = _resolved(stack_name, target)
    if target == "gcp":
        return gcp_lab_of(settings, gcp_hosts(settings, say or _stderr), say or _stderr)
    root = local_lab.check_lab_home() / "stacks" / settings.stack
    root.mkdir(parents=True, exist_ok=True)
    hosts = tuple(remote.hosts_of(settings))
    bucket = settings.bucket_name if resolution.sources.get("lab:bucketName") == "stack" else None
    return SshLab(settings=settings, hosts=hosts, access=remote.access_of(settings), root=root, bucket=bucket)


def _stderr(line: str) -> None:
    from toolkit.console import err

    err().print(line, highlight=False)


# -- gcp: the VMs as they are now -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostState:
    """One VM of the gcp lab: its host (address "" when it has none now), GCE name, zone and status."""

    host: remote.Host
    instance: str
    zone: str
    status: str  # GCE's (RUNNING, TERMINATED, ...), MISSING (no such VM), or UNKNOWN (from the last outputs)
    id: str = ""

    @property
    def usable(self) -> bool:
        return self.status in ("RUNNING", "UNKNOWN") and bool(self.host.address)

    def describe(self) -> str:
        if self.status in ("TERMINATED", "STOPPING", "SUSPENDED", "SUSPENDING"):
            return f"stopped ({self.status}: preempted, or powered off when idle)"
        if self.status in ("PROVISIONING", "STAGING"):
            return f"starting ({self.status})"
        if self.status == "MISSING":
            return "missing (no such VM in GCP)"
        if self.status == "RUNNING" and not self.host.address:
            return "running without an external address"
        return self.status.lower()


@dataclass(frozen=True)
class GcpView:
    """The gcp lab's VMs, tracker first. `live`: read from the Compute API now; otherwise from the last
    `lab up`'s outputs (`note` says why), which may be stale."""

    states: tuple[HostState, ...]
    bucket: str | None
    project: str
    live: bool
    note: str = ""

    @property
    def tracker(self) -> HostState:
        return self.states[0]

    @property
    def hosts(self) -> tuple[remote.Host, ...]:
        return tuple(s.host for s in self.states if s.usable)


_SAID: set[str] = set()


def _say_once(key: str, line: str, say: Say) -> None:
    if key not in _SAID:
        _SAID.add(key)
        say(line)


def gcp_hosts(settings: schema.Settings, say: Say = lambda line: None) -> GcpView:
    """The gcp lab's VMs now: names and zones from the stack's Pulumi outputs (read without the Pulumi CLI),
    status and addresses from the Compute API (one aggregated list filtered on the label lab=<stack>). Without
    credentials or API access, the outputs' addresses, and that is said once."""
    from toolkit.gcp import api as gcp_api
    from toolkit.gcp import pulumi_state

    backend = pulumi_state.backend_url(settings)
    state = pulumi_state.read(backend, settings.stack)
    outputs = state.outputs if state else {}
    bucket = outputs.get("bucket_name") or None
    from_outputs = hosts_from_outputs(outputs, settings.stack, backend)  # raises when the lab is not up
    project = str(outputs.get("project") or settings.project or "")
    names = [str(outputs.get("tracker_name") or "")]
    workers = outputs.get("worker_names") or []
    names += [str(n) for n in workers] if isinstance(workers, list) else []
    zones = [str(outputs.get("zone") or settings.zone or "")]
    zones += [str(outputs.get("worker_zone") or settings.zone or "")] * (len(names) - 1)
    addresses = {h.name: h.address for h in from_outputs}

    def fallback(why: str) -> GcpView:
        _say_once(
            f"{settings.stack}:fallback",
            f"could not read the VMs' current state from GCP ({why}); using the addresses of the last `lab up`, "
            "which a preempted or stopped VM no longer has",
            say,
        )
        states = [HostState(h, names[i] if i < len(names) else "", "", "UNKNOWN") for i, h in enumerate(from_outputs)]
        return GcpView(tuple(states), bucket, project, live=False, note=why)

    if not names[0]:
        return fallback("the stack's outputs predate tracker_name/worker_names; `lab up` adds them")
    try:
        listing = gcp_api.labelled(project, settings.labels["lab"], ("instances",))
    except LabError as exc:
        return fallback(exc.one_line())
    found = {i.name: i for i in listing.instances()}
    states: list[HostState] = []
    for index, (name, zone) in enumerate(zip(names, zones, strict=True)):
        lab_name = remote.TRACKER if index == 0 else f"worker-{index}"
        role = remote.TRACKER if index == 0 else remote.WORKER
        instance = found.get(name)
        if instance is None:
            unanswered = any(zone in scope for scope in listing.unreachable)
            status = "UNKNOWN" if unanswered else "MISSING"
            address = addresses.get(lab_name, "") if unanswered else ""
            states.append(HostState(remote.Host(lab_name, address, role), name, zone, status))
            continue
        address = (instance.external_ip or "") if instance.status == "RUNNING" else ""
        states.append(
            HostState(remote.Host(lab_name, address, role), name, instance.zone, instance.status, instance.id)
        )
    view = GcpView(tuple(states), bucket, project, live=True)
    for host_state in view.states:
        if not host_state.usable:
            _say_once(
                f"{settings.stack}:{host_state.host.name}:{host_state.status}",
                f"{host_state.host.name} ({host_state.instance}) is {host_state.describe()}: left out"
                + (" of trial slots and tunnels" if host_state.host.role == remote.WORKER else "")
                + "; `lab up` starts it",
                say,
            )
    return view


def hosts_from_outputs(outputs: dict[str, Any], stack_name: str, backend: str = "") -> tuple[remote.Host, ...]:
    """The tracker, then worker-1, worker-2, ... at their external addresses as the last `lab up` saw them;
    workers without one (stopped, preempted) are left out. The program's outputs are the contract: tests run
    the program under mocks and hand its outputs here."""
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


def gcp_lab_of(settings: schema.Settings, view: GcpView, say: Say = lambda line: None) -> SshLab:
    """The gcp lab over its usable VMs, with SSH checking host keys strictly against the pins."""
    root = local_lab.check_lab_home() / "stacks" / settings.stack
    root.mkdir(parents=True, exist_ok=True)
    tracker = view.tracker
    if not tracker.usable:
        raise LabError(
            f"the tracker ({tracker.instance}) of stack {settings.stack} is {tracker.describe()}",
            hint="`lab up` starts it",
        )
    access = replace(remote.access_of(settings), strict=True)
    lab = SshLab(settings=settings, hosts=view.hosts, access=access, root=root, bucket=view.bucket, gcp=view)
    pin_host_keys(lab, say)
    return lab


def agent(lab: SshLab, *args: str, timeout: float = AGENT_TIMEOUT_S) -> str:
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


def priced_up(lab: SshLab) -> None:
    """The hosts are up for `lab cost` and the budget from now, each at its price (`hosts:` in the price table, by
    the host's name in the lab or its address)."""
    from toolkit.cost import prices, uptime

    lines = []
    for host in lab.hosts:
        price = prices.host_hourly(host.name)
        price = prices.host_hourly(host.address) if price is None else price
        lines.append(prices.PriceLine(host.role, host.name, 1, price, host.address))
    uptime.record_up(lab.stack, lines)


def extravars(lab: SshLab, restore_from: Path | None) -> dict[str, Any]:
    import toolkit

    for worker in lab.workers:
        local_lab.ensure_token(lab.token_file(worker))
    local_lab.ensure_token(lab.root / "secrets" / DATASETS_TOKEN)
    return {
        "lab_stack": lab.stack,
        "lab_toolkit_src": str(Path(toolkit.__file__).resolve().parent),
        "lab_mlflow_port": schema.MLFLOW_PORT,
        "lab_optuna_port": OPTUNA_PORT,
        "lab_jupyter_port": JUPYTER_PORT,
        # each worker's own token; the value is a lookup, so no token lands in the runner's files or events
        "lab_jupyter_token": "{{ lookup('ansible.builtin.file', '"
        + str(lab.root / "secrets" / TOKEN_FILE_PREFIX)
        + "' ~ inventory_hostname) }}",
        # the stack's dataset token (the tracker's dataset server asks it of every request), as a lookup too
        "lab_datasets_token": "{{ lookup('ansible.builtin.file', '"
        + str(lab.root / "secrets" / DATASETS_TOKEN)
        + "') }}",
        "lab_bucket": lab.bucket or "",
        "lab_backup_keep": lab.settings.backup_keep,
        "lab_backup_days": lab.settings.backup_days,
        "lab_idle_minutes": f"{lab.settings.idle_minutes:g}",  # 30, not 30.0 (a fraction is taken: 0.25)
        "lab_restore_from": str(restore_from) if restore_from else "",
        "lab_replica": lab.settings.replica or "",  # empty: the role's default (the bucket's, else on the tracker)
        "lab_replica_sync_interval": lab.settings.replica_sync_interval,  # lab:replicaSyncInterval
        "lab_datasets": list(lab.settings.datasets),  # fetched onto every worker at configure time
    }


def newest_verified_backup(lab: SshLab, say: Say) -> backups.Backup | None:
    """The newest backup here that verifies, a candidate for a tracker without a DB (a restore's copy of what
    it replaced is none: it holds what a person undid)."""
    for candidate in backups.listing(lab.backups_dir):
        if candidate.manifest.reason == UNDONE:
            continue
        try:
            backups.verify(candidate.path)
        except LabError as exc:
            say(f"skipping backup {candidate.manifest.id}: {exc.one_line()}")
            continue
        return candidate
    return None


def reachable(lab: SshLab, hosts: tuple[remote.Host, ...] | None = None) -> dict[str, str | None]:
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
    lab: SshLab, say: Say, on_change: Callable[[configure.Report], None]
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


def tracker_facts(lab: SshLab) -> dict[str, Any]:
    text = remote.run(lab.access, lab.tracker, ["cat", "/etc/lab/tracker.json"], check=False).stdout
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise LabError(f"{lab.tracker.name} is not configured yet", hint="run `lab up` first") from None


def backup(lab: SshLab, *, reason: str, say: Say) -> tuple[backups.Backup, dict[str, Any]]:
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
    backup_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(backup_id, str) or not backups.valid_id(backup_id):
        raise LabError(f"{lab.tracker.name} answered a backup id that is not one: {str(backup_id)[:60]!r}")
    lab.backups_dir.mkdir(parents=True, exist_ok=True)
    backups.clear_incoming(lab.backups_dir)
    incoming = backups.incoming_folder(lab.backups_dir, backup_id)
    try:
        fetched = remote.fetch_folder(lab.access, lab.tracker, f"{DATA}/backups", backup_id, incoming)
        backups.fsync_tree(fetched)  # on disk before it is called verified
        # The tracker ran the quick check as it took it; the sha256s prove these are the same bytes.
        manifest = backups.verify(fetched, backups.QUICK_CHECK)
        if manifest.id != backup_id:
            raise LabError(f"the backup fetched from {lab.tracker.name} is {manifest.id}, not {backup_id}")
        final = lab.backups_dir / backup_id
        fetched.rename(final)
        backups.fsync(lab.backups_dir)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    backups.rotate(lab.backups_dir, keep_last=lab.settings.backup_keep, keep_days=lab.settings.backup_days)
    say(f"backup {backup_id} taken on {lab.tracker.name}, downloaded and verified")
    return backups.Backup(final, manifest), document


def units_state(lab: SshLab, host: remote.Host) -> dict[str, str]:
    units = TRACKER_UNITS if host.role == remote.TRACKER else WORKER_UNITS
    result = remote.run(lab.access, host, ["systemctl", "is-active", *units], check=False, timeout=30)
    states = result.stdout.split()
    return dict(zip(units, states + ["unknown"] * (len(units) - len(states)), strict=True))


def restore(lab: SshLab, chosen: backups.Backup, *, stop: bool, say: Say) -> None:
    """Send a verified backup to the tracker and put it in place, keeping the DBs it replaces."""
    active = tracker_active(lab, stop)
    remote_path = remote.send_folder(lab.access, lab.tracker, chosen.path, f"{DATA}/restore", owner=TRACKER_USER)
    install_on_tracker(lab, remote_path, active)
    say(f"restored {chosen.manifest.id} on {lab.tracker.name}")


def tracker_active(lab: SshLab, stop: bool) -> list[str]:
    """The tracker's units that run now and that a restore stops (MLflow, the Optuna proxy, the replica); a
    LabError when MLflow or the proxy runs and `stop` was not asked for."""
    states = units_state(lab, lab.tracker)
    if any(states.get(unit) == "active" for unit in SERVING) and not stop:
        raise LabError("the tracker is running", hint="pass --stop to stop it first (it is started again after)")
    return [unit for unit in (*SERVING, REPLICA_UNIT) if states.get(unit) == "active"]


def install_on_tracker(lab: SshLab, remote_path: str, active: list[str]) -> None:
    """The agent's restore of a backup folder on the tracker, with `active` stopped around it: MLflow and the
    proxy first, the replica last (it ships their last writes); started again replica first. The replica then
    follows the restored DBs; what it held before stays in its history (`lab restore --at`)."""
    if active:
        remote.run(lab.access, lab.tracker, ["sudo", "-n", "systemctl", "stop", *active])
    try:
        agent(lab, "restore", "--from", remote_path)
    finally:
        if active:
            remote.run(lab.access, lab.tracker, ["sudo", "-n", "systemctl", "start", *reversed(active)])


def restore_at(lab: SshLab, request: RestoreRequest, ui: Ui) -> Report:
    """`lab restore --at TIME`: the tracker as it was then, from the replica. The replica's DBs at TIME become a
    verified backup on the tracker (reason `replica`) before anything is touched; then, like any restore, the
    DBs it replaces are kept as a backup and it is installed."""
    if request.name or request.from_bucket:
        raise LabError("--at restores from the replica", hint="give either --at TIME or a backup, not both")
    assert request.at is not None  # noqa: S101 -- only called with --at
    url = replica_url(lab)
    moment = request.at.astimezone(dt.timezone.utc).isoformat()
    made = json.loads(agent(lab, "replica-snapshot", "--replica", url, "--at", moment))
    backup_id, path = made.get("id"), made.get("path")
    if not isinstance(backup_id, str) or not backups.valid_id(backup_id) or path != f"{DATA}/backups/{backup_id}":
        raise LabError(f"{lab.tracker.name} answered a backup that is not one: {str(made)[:80]}")
    ui.say(f"the tracker as it was at {moment}, from {url}: verified (backup {backup_id} on {lab.tracker.name})")
    install_on_tracker(lab, path, tracker_active(lab, request.stop))
    return Report(
        {"stack": lab.stack, "restored": backup_id, "at": moment, "replica": url},
        [f"restored the tracker as it was at {moment} on {lab.tracker.name} (backup {backup_id})"],
    )


def replica_url(lab: SshLab) -> str:
    """The replica the tracker replicates to, as its role wrote it (lab:replica, else the role's default)."""
    url = tracker_facts(lab).get("replica")
    if not isinstance(url, str) or not url:
        raise LabError(f"{lab.tracker.name} has no replica yet", hint="run `lab up` to set it up")
    return url


def stop_services(lab: SshLab, say: Say, on_change: Callable[[configure.Report], None]) -> configure.Report | None:
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


def wait_for_ssh(lab: SshLab, host: remote.Host, timeout: float) -> None:
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


# -- host keys ------------------------------------------------------------------------------------------------

PINS = "hostkeys.json"
HOST_KEY_WAIT_S = 600


def fingerprint(key_b64: str) -> str:
    """A key's SHA256 fingerprint as `ssh-keygen -l` prints it."""
    import base64
    import hashlib

    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _read_pins(path: Path) -> dict[str, dict[str, Any]]:
    try:
        pins = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in pins.items() if isinstance(v, dict)} if isinstance(pins, dict) else {}


def _write_private(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(path)


def _known_lines(known_hosts: Path) -> dict[str, list[str]]:
    """The known-hosts file's lines by their (first) host field."""
    lines: dict[str, list[str]] = {}
    try:
        text = known_hosts.read_text(encoding="utf-8")
    except OSError:
        return lines
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            for name in fields[0].split(","):
                lines.setdefault(name, []).append(line)
    return lines


def pin_host_keys(lab: SshLab, say: Say = lambda line: None, wait_s: float = 0) -> list[str]:
    """gcp: make the stack's known_hosts hold, for each usable VM's current address, the SSH host keys GCE
    published for that VM (guest attributes `hostkeys/`), so the first connection is already checked.

    Keys are pinned per instance id in hostkeys.json: a VM stopped and started again (new ephemeral address)
    keeps its pin; a recreated VM (new id) is pinned anew from GCE, never from the old VM. A VM whose keys are
    not published yet is waited for up to `wait_s` (the guest agent writes them on first boot); returns the
    names of usable hosts left without keys. VMs pinned before this existed (no pin, keys trusted on first
    use) keep the keys already in known_hosts for their address."""
    view = lab.gcp
    if view is None:
        return []
    from toolkit.gcp import api as gcp_api

    pins_path = lab.root / PINS
    pins = _read_pins(pins_path)
    existing = _known_lines(lab.access.known_hosts)
    deadline = time.monotonic() + wait_s
    missing: list[str] = []
    lines: list[str] = []
    for state in view.states:
        if not state.usable:
            continue
        pin = pins.get(state.instance)
        legacy = pin is None  # never pinned: a VM from before pinning, its keys trusted on first use
        current = pin is not None and (not view.live or str(pin.get("id")) == state.id)
        if not current and view.live:
            keys: dict[str, str] = {}
            while True:
                try:
                    keys = gcp_api.host_keys(view.project, state.zone, state.instance)
                except LabError as exc:
                    say(f"could not read the host keys of {state.host.name}: {exc.one_line()}")
                if keys or time.monotonic() >= deadline:
                    break
                time.sleep(5)
            if keys:
                pin = {"id": state.id, "keys": keys}
                pins[state.instance] = pin
                current = True
                shown = ", ".join(f"{kind} {fingerprint(value)}" for kind, value in sorted(keys.items()))
                say(f"pinned the SSH host keys GCE published for {state.host.name}: {shown}")
            elif pin is not None:
                del pins[state.instance]  # a new VM under an old name: the old VM's keys are not its keys
                pin = None
        if current and pin is not None:
            lines += [f"{state.host.address} {kind} {value}" for kind, value in sorted(pin["keys"].items())]
        elif legacy and existing.get(state.host.address):
            lines += existing[state.host.address]  # trusted on first use before pinning existed
        else:
            missing.append(state.host.name)
    _write_private(pins_path, json.dumps(pins, indent=1, sort_keys=True) + "\n")
    _write_private(lab.access.known_hosts, "".join(line + "\n" for line in lines))
    return missing


def forget_changed_host_keys(lab: SshLab) -> None:
    """Before the first connection after `lab up`. gcp: pin the VMs' host keys from GCE, waiting for new VMs to
    publish them; a VM that does not is an error (it would be refused anyway). ssh target (machines the user
    already has, trusted on first use): forget the keys of addresses that are new or moved since the last
    `lab up` (kept in hosts.json); the rest stay."""
    from toolkit import proc

    if lab.gcp is not None:
        missing = pin_host_keys(lab, _stderr, wait_s=HOST_KEY_WAIT_S)
        if missing:
            raise LabError(
                f"GCE published no SSH host keys for {', '.join(missing)} within {HOST_KEY_WAIT_S // 60} min, "
                "so the lab will not connect to it",
                hint="its guest agent writes them on first boot when the VM has metadata "
                "enable-guest-attributes=TRUE; a VM created without it: recreate it (`lab down`, `lab up`)",
            )
        return
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
    """After `lab down` on gcp: the machines are gone, and so are their keys and pins."""
    for name in ("known_hosts", "known_hosts.old", "hosts.json", PINS):
        (lab_root / name).unlink(missing_ok=True)


# -- what the commands ask of a lab on hosts (the ssh target, and the gcp target once its VMs run) --------------


def preview_up(lab: SshLab) -> Report:
    """`lab up --preview` on hosts: which hosts `up` would configure, as what, with which playbook; no host is
    reached, nothing is run or recorded."""
    hosts = [{"name": h.name, "address": h.address, "role": h.role} for h in lab.hosts]
    lines = [f"preview of the {lab.target} lab of stack {lab.stack}: no host was reached, nothing was run or recorded"]
    lines += [f"  {h['name']:12} {h['address']:24} {h['role']}: the site playbook would configure it" for h in hosts]
    lines.append(
        "`lab up` would run the site playbook (site.yml) on these hosts as "
        f"{lab.access.user}, restore the tracker if it has no DB, and count the lab as up from then (`lab cost`)"
    )
    return Report({"stack": lab.stack, "target": lab.target, "preview": True, "hosts": hosts}, lines)


def configure_lab(lab: SshLab, ui: Ui, stages: dict[str, float]) -> Report:
    """`lab up` on the hosts: reach them, run the site playbook (a live table), say where MLflow is.
    `stages` are the durations of what came before (gcp: preview, pulumi up, wait for SSH)."""
    from toolkit.hosts import configure

    started = time.monotonic()
    stages = dict(stages)
    before = sum(stages.values())
    unreachable = {n: why for n, why in reachable(lab).items() if why}
    stages["reach hosts"] = time.monotonic() - started
    if unreachable:
        name, why = next(iter(unreachable.items()))
        raise LabError(why or f"cannot reach {name}", hint="start the machine, or fix the stack's hosts")
    with ui.live() as show:
        report, _ = configure_hosts(lab, ui.say, lambda r: show(configure.table(r)))
    stages["configure"] = report.seconds
    facts = tracker_facts(lab)
    tracker_state = report.hosts.get(lab.tracker.name)
    restored = last_restore(lab, ui.say) if tracker_state and RESTORE_TASK in tracker_state.changed_tasks else None
    replica_state = units_state(lab, lab.tracker).get(REPLICA_UNIT, "unknown")
    stages["total"] = before + time.monotonic() - started
    document = {
        "stack": lab.stack,
        "target": "gcp" if lab.gcp else lab.target,
        "configure": report.as_dict(),
        "restored": restored,
        "tracker": facts,
        "replica": {"url": facts.get("replica"), "running": replica_state == "active"},
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
    }
    changed = report.changed
    lines = [
        f"{len(lab.hosts)} hosts configured: "
        + ("nothing changed" if changed == 0 else f"{changed} change{'s' * (changed != 1)}")
    ]
    if restored:
        lines.append(describe_restore(restored))
    lines.append(f"MLflow   {facts.get('mlflow_url')}  (inside the lab's network)")
    lines.append(f"replica  {facts.get('replica')}")
    if replica_state != "active":
        lines.append(
            f"warning: the replica is {replica_state}, so the tracker's DBs are not replicated: "
            "`lab ssh tracker -- journalctl -u lab-replica` says why (it is retried; MLflow is not affected)"
        )
    lines.append("reach MLflow and Jupyter from here with `lab tunnel`")
    lines.append("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
    return Report(document, lines)


def last_restore(lab: SshLab, say: Say) -> dict[str, Any] | None:
    """What the tracker came back from when `lab up` found it without a DB (the agent's record)."""
    try:
        found = json.loads(agent(lab, "status")).get("last_restore")
    except (LabError, ValueError) as exc:
        say(f"could not read what the tracker was restored from: {exc}")
        return None
    return found if isinstance(found, dict) else None


def describe_restore(restored: dict[str, Any]) -> str:
    if restored.get("source") == "empty":
        return "the tracker had no DB, and there was no replica and no backup: it starts empty"
    old = age(float(restored.get("age_s") or 0))
    passed = restored.get("passed_over") or []
    also = f" ({len(passed)} newer could not be used: {passed[0]})" if passed else ""
    return f"the tracker had no DB: restored {restored.get('label')}, the newest state there is, {old} old{also}"


def hosts_status(
    lab: SshLab | None,
    ui: Ui,
    *,
    target: str = "ssh",
    stack_name: str = "",
    root: Path | None = None,
    bucket: str | None = None,
    view: GcpView | None = None,
) -> Report:
    """`lab status` of a lab on hosts: each host's services (checked in parallel), the tracker's facts and
    newest backup, the backups kept here. gcp: also the VMs that are stopped (from `view`), shown as such."""
    from rich.markup import escape

    if lab is not None:
        stack_name, root, bucket = lab.stack, lab.root, lab.bucket
    assert root is not None  # noqa: S101 -- given when there is no lab on hosts
    states = view.states if view else ()

    def look(host: remote.Host) -> dict[str, Any]:
        info: dict[str, Any] = {"role": host.role, "address": host.address, "state": "running"}
        assert lab is not None  # noqa: S101 -- only usable hosts are looked at, and they have a lab
        try:
            info["services"] = units_state(lab, host)
            info["reachable"] = True
        except LabError as exc:
            info.update(reachable=False, error=exc.one_line(), services={}, state="unreachable")
        return info

    usable = lab.hosts if lab else ()
    with ThreadPoolExecutor(max_workers=max(len(usable), 1)) as pool:
        hosts = dict(zip([h.name for h in usable], pool.map(look, usable), strict=True))
    for host_state in states:
        name = host_state.host.name
        if name in hosts:
            hosts[name].update(instance=host_state.instance, zone=host_state.zone, status=host_state.status)
            continue
        hosts[name] = {
            "role": host_state.host.role,
            "address": host_state.host.address or None,
            "state": "stopped" if "stopped" in host_state.describe() else host_state.status.lower(),
            "status": host_state.status,
            "instance": host_state.instance,
            "zone": host_state.zone,
            "reachable": False,
            "services": {},
            "error": host_state.describe(),
        }
    order = [s.host.name for s in states] or list(hosts)
    hosts = {name: hosts[name] for name in order if name in hosts}
    tracker: dict[str, Any] = {}
    if lab is not None and hosts[lab.tracker.name]["reachable"]:
        try:
            facts = tracker_facts(lab)
            asked = ["--replica", facts["replica"]] if facts.get("replica") else []
            tracker = {**facts, **json.loads(agent(lab, "status", *asked))}
        except LabError as exc:
            tracker = {"error": exc.one_line()}
    info = local_lab.backups_info(root / "backups")
    document: dict[str, Any] = {
        "stack": stack_name,
        "target": target,
        "state_dir": str(root),
        "hosts": hosts,
        "tracker": tracker,
        "backups": info,
        "bucket": bucket,
    }
    if view is not None:
        document["addresses"] = "compute api" if view.live else "last lab up (could not ask GCP: " + view.note + ")"
    replica = replica_status(tracker, hosts)
    if replica is not None:
        document["replica"] = replica
    rows: list[tuple[str, ...]] = []
    for name, host in hosts.items():
        if host["state"] == "stopped":
            services = f"[dim]stopped[/dim]: {escape(host['error'])}"
        elif not host["reachable"] and host["state"] != "unreachable":
            services = f"[yellow]{escape(host['state'])}[/yellow]: {escape(host['error'])}"
        elif not host["reachable"]:
            services = f"[red]unreachable[/red]: {escape(host['error'])}"
        else:
            services = ", ".join(
                f"{unit.split('.')[0]} "
                + ("[green]active[/green]" if state == "active" else f"[yellow]{state}[/yellow]")
                for unit, state in host["services"].items()
            )
        rows.append((name, host["role"], host["address"] or "-", services))
    notes: list[str] = []
    if view is not None and not view.live:
        notes.append(f"addresses from the last `lab up` (GCP could not be asked: {escape(view.note)})")
    if tracker.get("mlflow_url"):
        notes.append(f"MLflow {tracker['mlflow_url']} (inside the lab's network; `lab tunnel` reaches it from here)")
    newest = tracker.get("newest_backup")
    if newest:
        notes.append(f"newest backup on the tracker: {newest['id']} ({tracker.get('backups')} kept there)")
    if info["latest"]:
        notes.append(f"newest backup here: {info['latest']}, {age(info['age_s'])} old ({info['count']} kept)")
    else:
        notes.append("no backup here yet: `lab backup` takes one")
    if replica is not None:
        notes.append(describe_replica(replica))
    table = Table(f"lab {stack_name} ({target})", ("host", "role", "address", "services"), rows)
    return Report(document, notes, tables=[table])


def replica_status(tracker: dict[str, Any], hosts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The replica as `lab status` shows it (the local lab's shape): its URL, whether Litestream runs on the
    tracker, its newest position and how old that is; None when the tracker did not answer."""
    found = tracker.get("replica")
    if not isinstance(found, dict):
        return None
    services = next((h["services"] for h in hosts.values() if h.get("role") == remote.TRACKER), {})
    shown = {
        "url": found.get("url"),
        "running": services.get(REPLICA_UNIT) == "active",
        "newest_txid": found.get("newest_txid"),
        "newest_at": found.get("newest_at"),
        "age_s": found.get("age_s"),
        "local_txid": found.get("local_txid"),
        "behind_txids": found.get("behind_txids"),
        "lag_s": found.get("lag_s"),
        "last_error": None,  # in the tracker's journal: `lab ssh tracker -- journalctl -u lab-replica`
        "read_error": found.get("read_error"),
    }
    return shown


def describe_replica(replica: dict[str, Any]) -> str:
    from rich.markup import escape

    line = escape(local_lab.replica_line(replica))
    if replica.get("behind_txids"):
        line += " (`lab ssh tracker -- journalctl -u lab-replica` says why)"
    return line


def stop_lab(lab: SshLab, request: DownRequest, ui: Ui) -> Report:
    """`lab down` of the ssh target: nothing written before it is lost (`down_backup`), then the lab's services
    stop; the machines stay."""
    from toolkit.hosts import configure
    from toolkit.sweeps import dispatch as sweeps

    keeps_its_data(request)
    sweeps.interrupt_running(lab.root, ui.say)  # this machine's `lab dispatch`, as Ctrl-C stops it
    detached = stop_sweeps(lab, ui.say)  # the tracker's, the same way
    made = None
    caught_up = False
    try:
        made, caught_up = down_backup(lab, say=ui.say, restart=not request.force)
    except ServingAgain as exc:
        raise LabError(
            "the backup failed, so nothing was stopped (MLflow and the Optuna proxy are running again): "
            + exc.cause.one_line(),
            hint="fix that, or pass --force to stop without a backup",
            code=EXIT_BACKUP_FAILED,
        ) from None
    except LabError as exc:
        if exc.code == EXIT_BACKUP_FAILED:
            raise  # MLflow, stopped for the backup, could not be started again: it says so
        backup_failed(exc, request, ui)
    with ui.live() as show:
        report = stop_services(lab, ui.say, lambda r: show(configure.table(r)))
    document = {
        "backup": str(made.path) if made else None,
        "replica_caught_up": caught_up,
        "stopped_on": sorted(report.hosts) if report else [],
        "sweeps_stopped": detached,
    }
    where = ", ".join(report.hosts) if report else "no host answered"
    lines = [f"the lab's services are stopped ({where}); the machines stay as they were"]
    if made:
        lines.append(f"backup {made.manifest.id} verified: {made.path}")
    if not caught_up:
        lines.append("the replica did not catch up (see above): the backup holds the last writes")
    return Report(document, lines)


class ServingAgain(LabError):
    """`lab down`'s backup failed, and MLflow and the Optuna proxy, stopped for it, run again; `cause` is why."""

    def __init__(self, cause: LabError) -> None:
        self.cause = cause
        super().__init__(f"{cause.one_line()} (MLflow and the Optuna proxy are running again)")


def down_backup(lab: SshLab, *, say: Say, restart: bool) -> tuple[backups.Backup, bool]:
    """What `lab down` keeps before anything goes, in this order: MLflow and the Optuna proxy stop taking writes
    (root, through the SSH user's passwordless sudo, as the playbooks' become); the replica catches up with the
    DBs' last transaction (when it cannot, a warning: the snapshot holds them); a backup is taken on the tracker,
    downloaded and verified here. Returns it and whether the replica caught up.

    When the backup fails, `restart` starts MLflow and the proxy again and raises `ServingAgain`; without it (a
    forced down) they stay stopped and the backup's error is raised as it is. A tracker that cannot be reached is
    its connection error as it is (gcp's teardown then has the VM back itself up as it stops)."""
    states = units_state(lab, lab.tracker)
    serving = [unit for unit in SERVING if states.get(unit) == "active"]
    try:
        if serving:
            remote.run(lab.access, lab.tracker, ["sudo", "-n", "systemctl", "stop", *serving])
            say(f"MLflow and the Optuna proxy stopped taking writes on {lab.tracker.name}")
        caught_up = replica_catch_up(lab, running=states.get(REPLICA_UNIT) == "active", say=say)
        made, _ = backup(lab, reason="down", say=say)
    except remote.Unreachable:
        raise
    except LabError as exc:
        if not restart or not serving:
            raise
        try:
            remote.run(lab.access, lab.tracker, ["sudo", "-n", "systemctl", "start", *serving])
        except LabError as again:
            raise LabError(
                f"the backup failed ({exc.one_line()}), and MLflow could not be started again: {again.one_line()}",
                hint="`lab up` starts it again",
                code=EXIT_BACKUP_FAILED,
            ) from None
        raise ServingAgain(exc) from None
    return made, caught_up


def replica_catch_up(lab: SshLab, *, running: bool, say: Say) -> bool:
    """Once writes have stopped: wait until the tracker's replica holds each DB's last transaction (the agent's
    `replica-catch-up`). False, said as a warning, when Litestream is not running or cannot catch up: the
    snapshot that follows still holds every write."""
    if not running:
        say("warning: the replica is not running on the tracker, so only the snapshot keeps the last writes")
        return False
    try:
        answer = json.loads(agent(lab, "replica-catch-up", timeout=REPLICA_CATCH_UP_TIMEOUT_S))
    except (LabError, ValueError) as exc:
        why = exc.one_line() if isinstance(exc, LabError) else f"an answer that is not JSON ({exc})"
        say(f"warning: the replica did not catch up ({why}); the snapshot still holds every write")
        return False
    dbs = answer.get("dbs") if isinstance(answer, dict) and answer.get("caught_up") is True else None
    if not isinstance(dbs, dict):
        shown = str(answer)[:80]
        say(f"warning: the replica did not catch up (the tracker answered {shown}); the snapshot still holds them")
        return False
    for name, position in sorted(dbs.items()):
        txid = position.get("replica_txid") if isinstance(position, dict) else None
        say(f"replica caught up with {name} (transaction {txid})")
    return True


def sweep_place(
    lab: SshLab,
    exits: contextlib.ExitStack,
    parallel: int | None,
    gpus: list[str] | None,
    price: Callable[[str], float | None],
) -> SweepPlace:
    """The workers' slots, and tunnels to the tracker's MLflow and Optuna storage for the dispatcher."""
    from toolkit.sweeps import slots, ssh_slots

    if gpus:
        raise LabError("--gpus is for the local target", hint="remote workers report their own GPUs")
    if not lab.workers:
        raise LabError("the lab has no workers to run trials on", hint="list them in lab:workerHosts")
    facts = tracker_facts(lab)
    mlflow_port, optuna_port = remote.free_port(), remote.free_port()
    for local_port, address, port in (
        (mlflow_port, facts.get("mlflow_bind", "127.0.0.1"), facts.get("mlflow_port", 5000)),
        (optuna_port, "127.0.0.1", facts.get("optuna_port", OPTUNA_PORT)),
    ):
        tunnel = remote.forward(lab.access, lab.tracker, local_port, address, int(port))
        exits.callback(tunnel.wait, 10)
        exits.callback(tunnel.terminate)
    slot_list = ssh_slots.ssh_slots(lab.access, list(lab.workers), lab.settings.runs_per_gpu)
    if parallel:
        slot_list = slot_list[:parallel]
    slots.price_slots(slot_list, price, lambda slot: slot.host.name)
    store = facts.get("datasets_store")  # as the workers reach it: the bucket's datasets/, or the tracker's server
    here = store
    if store and str(store).startswith("http://"):  # the tracker's dataset server: through a tunnel from here
        here_port = remote.free_port()
        address = facts.get("mlflow_bind", "127.0.0.1")
        tunnel = remote.forward(lab.access, lab.tracker, here_port, address, int(facts["datasets_port"]))
        exits.callback(tunnel.wait, 10)
        exits.callback(tunnel.terminate)
        here = f"http://127.0.0.1:{here_port}"
    return SweepPlace(
        slot_list,
        f"http://127.0.0.1:{mlflow_port}",
        lab.root / "sweeps",
        optuna_port,
        data_store=store,
        data_store_here=here,
        data_token_here=lab.root / "secrets" / DATASETS_TOKEN,
        requirements=stack_requirements(lab.settings.requirements),
    )


def detached_place(
    lab: SshLab, parallel: int | None, gpus: list[str] | None, price: Callable[[str], float | None]
) -> dict[str, Any]:
    """A detached sweep on the tracker: the workers' slots as the tracker reaches them (its /etc/lab/tracker.json),
    with each worker's price per hour."""
    if gpus:
        raise LabError("--gpus is for the local target", hint="remote workers report their own GPUs")
    if not lab.workers:
        raise LabError("the lab has no workers to run trials on", hint="list them in lab:workerHosts")
    return {
        "kind": "tracker",
        "parallel": parallel,
        "runs_per_gpu": lab.settings.runs_per_gpu,
        "prices": {worker.name: price(worker.name) for worker in lab.workers},
    }


def stop_sweeps(lab: SshLab, say: Say) -> list[str]:
    """`lab down`: the tracker's detached sweeps stop as Ctrl-C stops them (trials interrupted and queued); a
    tracker that cannot be asked has none running that could write."""
    from toolkit.sweeps.hosting import TrackerSweeps

    try:
        return TrackerSweeps(lab.access, lab.tracker, DATA, TRACKER_USER).stop_all(say)
    except LabError as exc:
        say(f"could not ask the tracker for running sweeps: {exc.one_line()}")
        return []


@contextlib.contextmanager
def study_storage(lab: SshLab) -> Iterator[Any]:
    """The tracker's Optuna storage proxy, through an SSH tunnel open while the block runs."""
    import optuna

    port = int(tracker_facts(lab).get("optuna_port", OPTUNA_PORT))
    local_port = remote.free_port()
    tunnel = remote.forward(lab.access, lab.tracker, local_port, "127.0.0.1", port)
    try:
        yield optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=local_port)
    finally:
        tunnel.terminate()
        tunnel.wait(10)
