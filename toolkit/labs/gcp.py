"""The gcp target: Pulumi makes the hosts exist or go away; everything after "the hosts exist" is the remote
lab's (`toolkit.labs.ssh`), shared with the ssh target.

`provision` (lab up): preview with the cost per hour, confirm, the persistent stack's `up` (the bucket), then
the lab's `up` in the first zone with capacity (stockouts remembered per zone, quota errors named), on-demand
only when allowed. `teardown` (lab down): the stack's lock, a verified backup of the tracker, destroy of the
lab's stack (never the persistent one unless --destroy-data), and a check that nothing of the stack is left.
Both take the engine as an argument: the real one is `toolkit.gcp.pulumi_engine.AutomationEngine`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from toolkit.config import paths, schema, stack, stack_init
from toolkit.errors import EXIT_BACKUP_FAILED, EXIT_LEFTOVERS, EXIT_LOCKED, EXIT_UNVERIFIED, LabError
from toolkit.gcp import artifact_bucket as lab_bucket
from toolkit.gcp import pulumi_engine, pulumi_state
from toolkit.labs.base import Ask, DownRequest, Forward, Lab, Report, RestoreRequest, UpRequest
from toolkit.sweeps.place import SweepPlace

if TYPE_CHECKING:
    from toolkit.console import Ui
    from toolkit.labs.prerequisites import Check
    from toolkit.sweeps.hosting import SweepHost

Say = Callable[[str], None]
Confirm = Callable[[str], bool]
STOCKOUT_FILE = "stockouts.json"
UPTIME_STACK_KEY = "gcp"


def settings_of(stack_name: str, warn: Say | None = None) -> schema.Settings:
    """The stack's settings, which must be valid for the gcp target; `warn` hears what is allowed but risky."""
    stack_file, resolution = stack.load(stack_name, target="gcp")
    if resolution.problems or resolution.settings is None:
        first = resolution.problems[0] if resolution.problems else "its values cannot be read"
        raise LabError(
            f"{stack_file.path.name}: {first}",
            hint=f"`lab config validate --stack {stack_name} --target gcp` lists every problem",
        )
    for warning in resolution.warnings if warn else ():
        warn(f"warning: {stack_file.path.name}: {warning}")
    return resolution.settings


@contextlib.contextmanager
def stack_lock(settings: schema.Settings, doing: str) -> Iterator[None]:
    """One `lab up`/`lab down` of a stack at a time on this machine, and none while Pulumi's own lock
    (taken by a run here or elsewhere, e.g. a scheduled `lab down` on a CI runner) is held."""
    folder = paths.stack_home(settings.stack)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "engine.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another lab process"
            raise LabError(
                f"the stack {settings.stack} is busy: {holder}",
                hint="wait for it to finish, then run this again",
                code=EXIT_LOCKED,
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"`lab {doing}` (pid {os.getpid()}) since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        held = pulumi_state.locks(pulumi_state.backend_url(settings), settings.stack)
        if held:
            raise LabError(
                f"the stack {settings.stack} is locked in its Pulumi state ({held[0].describe()})",
                hint="wait for that run to finish; if it died, `pulumi cancel` (or delete "
                f"{held[0].path} in the backend) releases it",
                code=EXIT_LOCKED,
            )
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def confirm_with(yes: bool) -> Confirm:
    """Confirmation: --yes says yes; without a terminal there is no one to ask, so it is an error."""

    def ask(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise LabError(f"{question} needs a yes, and there is no terminal to ask", hint="pass --yes")
        import typer

        return typer.confirm(question, default=False)

    return ask


# -- lab up ---------------------------------------------------------------------------------------------------


@dataclass
class Provisioned:
    outputs: dict[str, Any]
    zone: str | None
    on_demand: bool
    stages: dict[str, float] = field(default_factory=dict)


def hourly_lines(settings: schema.Settings, on_demand: bool = False) -> tuple[list[Any], float]:
    """The priced resources of the stack and the total per hour (toolkit.cost.prices)."""
    from dataclasses import replace

    from toolkit.cost import prices

    priced = replace(settings, spot=settings.spot and not on_demand)
    lines = prices.hourly(priced)
    return lines, sum(float(line.usd_per_hour or 0) for line in lines)


def plan_summary(plan: pulumi_engine.Plan) -> str:
    parts = [f"{plan.counts.get(op, 0)} to {op}" for op in ("create", "update", "replace", "delete")]
    return ", ".join(parts) + f", {plan.counts.get('same', 0)} unchanged"


def provision(
    settings: schema.Settings,
    engine: pulumi_engine.Engine,
    *,
    confirm: Confirm,
    say: Say,
    show: Callable[[pulumi_engine.Plan, list[Any], float], None],
    preview_only: bool = False,
    fallback_on_demand: bool = False,
) -> Provisioned | None:
    """Preview, confirm, then `up` zone by zone until one has capacity. None after a preview only."""
    from toolkit.gcp import capacity
    from toolkit.gcp import diagnose as gcp_errors

    stages: dict[str, float] = {}
    state = pulumi_state.read(pulumi_state.backend_url(settings), settings.stack)
    quota_preflight(settings, state, say, refuse=not preview_only)  # before anything that bills
    current = state.outputs.get("worker_zone") if state else None
    memory = capacity.StockoutMemory(paths.stack_home(settings.stack) / STOCKOUT_FILE)
    configured = list(settings.zones) or [settings.zone or ""]
    zones = capacity.zones_to_try(configured, current if isinstance(current, str) else None, memory.recent())

    started = time.monotonic()
    plan = engine.preview(pulumi_engine.RunChoices(worker_zone=zones[0]), say)
    stages["preview"] = time.monotonic() - started
    lines, total = hourly_lines(settings)
    show(plan, lines, total)
    if preview_only:
        return None
    if plan.changes and not confirm(f"Apply these changes to the stack {settings.stack}?"):
        raise LabError("nothing was changed: the changes were not confirmed", hint="pass --yes to skip the question")

    started = time.monotonic()
    _moved_bucket_is_kept(settings, state)
    lab_bucket.keep(settings, engine.persistent(), say)  # first: the lab's stack grants roles on the bucket
    stages["persistent stack"] = time.monotonic() - started

    started = time.monotonic()
    tried: list[str] = []
    attempts = [(zone, False) for zone in zones]
    if fallback_on_demand and settings.spot:
        attempts += [(zone, True) for zone in zones]
    for zone, on_demand in attempts:
        choices = pulumi_engine.RunChoices(worker_zone=zone, on_demand=on_demand)
        if on_demand and (zone, on_demand) == attempts[len(zones)]:
            say("no zone had spot capacity: trying on-demand workers (--fallback-on-demand)")
        try:
            outputs = engine.up(choices, say)
        except pulumi_engine.EngineFailed as exc:
            found = capacity.classify(exc.text)
            if isinstance(found, capacity.Stockout):
                memory.remember(found.zone or zone)
                tried.append(zone)
                say(f"{zone} has no capacity for the workers now; trying the next zone")
                continue
            if isinstance(found, capacity.Quota):
                raise LabError(found.message(settings.project or "")) from None
            setup = gcp_errors.explain(exc.text, settings.project or "")  # an API off, an organization policy
            if setup is not None:
                raise setup from None
            raise
        stages["pulumi up"] = time.monotonic() - started
        return Provisioned(outputs=outputs, zone=zone, on_demand=on_demand, stages=stages)
    raise capacity.no_capacity_message(tried, fallback_on_demand)


# -- quota pre-flight (lab up) ---------------------------------------------------------------------------------


def quota_preflight(settings: schema.Settings, state: pulumi_state.State | None, say: Say, *, refuse: bool) -> None:
    """The Compute quotas the VMs not created yet need (toolkit.gcp.quotas), asked before the Pulumi run: a short
    GPU quota would otherwise fail the workers after the tracker, its disk and address already bill. Refused
    with one line (a warning for --preview); when GCP cannot be asked, said, and `up` goes on (GCP's own refusal
    is still named: toolkit.gcp.capacity.Quota)."""
    from toolkit.gcp import quotas

    instances = state.of_type(INSTANCE_TYPE) if state else []
    existing = sum(1 for r in instances if r.name.startswith(WORKER_PREFIX))
    tracker = any(r.name == "tracker" for r in instances)
    try:
        report = quotas.read(settings, existing_workers=existing, tracker_exists=tracker)
    except LabError as exc:
        say(f"warning: the project's quotas could not be read, so they are not checked before `up`: {exc.one_line()}")
        return
    if not report.shortfalls:
        return
    short = report.shortfalls[0]
    more = f" (and {len(report.shortfalls) - 1} more short)" if len(report.shortfalls) > 1 else ""
    line = f"not enough GCP quota for the stack {settings.stack}: {short.line()}{more}"
    if not refuse:
        say(f"warning: {line}; `lab up` would refuse")
        return
    raise LabError(f"{line}; nothing was created", hint=short.fix(settings.project))


def _moved_bucket_is_kept(settings: schema.Settings, state: pulumi_state.State | None) -> None:
    """A lab's stack from before the persistent stack may still hold the bucket. The program no longer declares it
    there, so the next `up` deletes it from that stack: only from the state while it is retain-on-delete (the old
    program's choice unless lab:destroyData), from GCS otherwise. The latter is refused."""
    if settings.destroy_data and lab_bucket.in_state(state, settings.bucket_name or ""):
        raise LabError(
            f"the stack {settings.stack} still holds gs://{settings.bucket_name} with lab:destroyData true, so "
            "this `lab up` would delete it while moving it to the lab's persistent stack",
            hint="set lab:destroyData to false for this one `lab up` (the bucket then moves, kept)",
        )


def record_up(settings: schema.Settings, done: Provisioned) -> None:
    """The lab's priced resources start their uptime now (`lab cost`)."""
    from toolkit.cost import uptime

    lines, _ = hourly_lines(settings, done.on_demand)
    uptime.record_up(settings.stack, lines)


# -- lab down -------------------------------------------------------------------------------------------------


@dataclass
class TornDown:
    destroyed: int
    backup: Path | None
    bucket_deleted: str | None
    leftovers: list[str]
    stages: dict[str, float] = field(default_factory=dict)
    leftover_check: Any = None  # gcp_api.LeftoverCheck: whether GCP could be asked what is left
    backup_by: str = "ssh"  # ssh: taken over SSH and downloaded here; tracker: the tracker's own, as it stopped


INSTANCE_TYPE = "gcp:compute/instance:Instance"
WORKER_PREFIX = "worker-"  # the workers' names in the program (infra/workers.py: <name>-<index>)
FINAL_BACKUP_REASON = "shutdown"  # the reason the tracker's stop-time backup writes into its manifest
FINAL_BACKUP_TIMEOUT_S = 600.0
CLOCK_SKEW_S = 120.0  # a final backup may be stamped this much before the stop request, by the tracker's clock


def worker_urns(state: pulumi_state.State) -> list[str]:
    """The worker VMs in the state: what costs the most, and holds nothing that must be kept."""
    return [r.urn for r in state.of_type(INSTANCE_TYPE) if r.name.startswith(WORKER_PREFIX)]


def teardown(
    settings: schema.Settings,
    engine_factory: Callable[[], pulumi_engine.Engine],
    *,
    backup: Callable[[dict[str, Any]], Path | None],
    say: Say,
    stop_tracker: Callable[[dict[str, Any]], None] | None = None,
    final_backup_timeout: float = FINAL_BACKUP_TIMEOUT_S,
    destroy_data: bool = False,
    force: bool = False,
) -> TornDown | None:
    """Stop the GPU spend, keep the tracker's history, then destroy. None when there is nothing to destroy.

    1. The workers go first (a targeted destroy): they hold no state, and they are what costs.
    2. A verified backup of the tracker: `backup(outputs)` takes it over SSH once MLflow and the Optuna proxy
       stopped taking writes and the replica caught up, and returns its folder here (None when there is no
       tracker); when it fails, it starts them again before raising, unless `force`. When SSH cannot reach the
       tracker (a scheduled `lab down` on a machine outside lab:allowedSshCidrs), `stop_tracker(outputs)` stops
       the tracker VM instead; its shutdown unit takes a final backup and uploads it to the bucket, where it is
       found, downloaded and verified here.
    3. The rest is destroyed. If no verified backup could be had, the tracker and its data disk stay
       (EXIT_BACKUP_FAILED), unless `force`.
    """
    backend = pulumi_state.backend_url(settings)
    state = pulumi_state.read(backend, settings.stack)
    if state is None or not state.cloud_resources:
        # Down already; the bucket outlived that down in the persistent stack: --destroy-data destroys that too.
        deleted = lab_bucket.delete_kept(settings, lambda: engine_factory().persistent(), say) if destroy_data else None
        return TornDown(destroyed=0, backup=None, bucket_deleted=deleted, leftovers=[]) if deleted else None
    stages: dict[str, float] = {}
    engine = engine_factory()  # fails now, before anything, when there is no CLI to destroy with
    workers = worker_urns(state)
    if workers:
        started = time.monotonic()
        engine.destroy(say, targets=workers)
        stages["destroy workers"] = time.monotonic() - started
        say(f"{len(workers)} worker{'s' * (len(workers) != 1)} destroyed: the GPUs stopped billing")

    started = time.monotonic()
    made: Path | None = None
    backup_by = "ssh"
    try:
        try:
            made = backup(state.outputs)
        except LabError as exc:
            if not _unreachable(exc) or stop_tracker is None:
                raise
            say(f"{exc.one_line()}; asking the tracker to back itself up as it stops")
            made = _final_backup_by_tracker(settings, state.outputs, stop_tracker, say, final_backup_timeout)
            backup_by = "tracker"
    except LabError as exc:
        if not force:
            kept = "the tracker and its data disk are kept" + (", the workers are gone" if workers else "")
            raise LabError(
                f"the backup failed, so the tracker was not destroyed ({kept}): {exc.one_line()}",
                hint="fix that (is the tracker running? `lab up` starts it), or pass --force to destroy without one",
                code=EXIT_BACKUP_FAILED,
            ) from None
        say(f"warning: destroying without a backup (--force): {exc.one_line()}")
    stages["backup"] = time.monotonic() - started

    started = time.monotonic()
    engine.destroy(say)  # the lab's stack only: the bucket is the persistent stack's
    stages["destroy"] = time.monotonic() - started
    deleted = lab_bucket.delete_kept(settings, engine.persistent, say) if destroy_data else None
    after = pulumi_state.read(backend, settings.stack)
    left = [
        f"{r.type.split(':')[-1]} {r.name} (still in the Pulumi state)"
        for r in (after.cloud_resources if after else ())
    ]
    check = labelled_leftovers(settings, say)
    left += check
    return TornDown(
        destroyed=len(state.cloud_resources),
        backup=made,
        bucket_deleted=deleted,
        leftovers=left,
        stages=stages,
        leftover_check=check,
        backup_by=backup_by,
    )


def start_stopped_tracker(settings: schema.Settings, outputs: dict[str, Any], say: Say) -> bool:
    """`lab up`: a tracker that is stopped (a no-SSH `lab down` that kept it, a maintenance stop) is started, and
    waited for, before the lab is configured; True when it was. The program's desired_status="RUNNING" asks the same
    of Pulumi; this covers a tracker stopped while Pulumi ran, and one still STOPPING then."""
    from toolkit.gcp import api as gcp_api

    name, zone = outputs.get("tracker_name"), outputs.get("zone")
    if not isinstance(name, str) or not isinstance(zone, str):
        return False
    try:
        return bool(gcp_api.start_stopped(settings.project or "", zone, [name], say))
    except gcp_api.NotAsked as exc:  # as reading the hosts does: go on with what the outputs say
        say(f"warning: could not ask GCP whether the tracker runs: {exc.one_line()}")
        return False


def stop_tracker_vm(settings: schema.Settings, outputs: dict[str, Any], say: Say) -> None:
    """Without SSH (a scheduled `lab down` from elsewhere): stop the tracker VM through the Compute API and wait
    until it is off; its shutdown unit backs it up to the bucket on the way (teardown waits for that backup there)."""
    from toolkit.gcp import api as gcp_api

    name, zone = outputs.get("tracker_name"), outputs.get("zone")
    if not isinstance(name, str) or not isinstance(zone, str):
        raise LabError("the Pulumi state names no tracker VM to stop")
    say(f"stopping {name} through the Compute API")
    gcp_api.stop_instance(settings.project or "", zone, name)


def _unreachable(exc: LabError) -> bool:
    """This machine cannot SSH to the tracker: it is not let in, or it has not the lab's key at all."""
    from toolkit.hosts import ssh as remote

    return isinstance(exc, remote.Unreachable | remote.NoKey)


def _final_backup_by_tracker(
    settings: schema.Settings,
    outputs: dict[str, Any],
    stop_tracker: Callable[[dict[str, Any]], None],
    say: Say,
    timeout: float,
) -> Path:
    """Stop the tracker; its shutdown unit (playbooks/roles/lab_tracker, lab-final-backup.service) takes a
    backup as MLflow stops and uploads it. Wait for that backup in the bucket, download it and verify it."""
    from toolkit.tracker import backups, gcs

    bucket = outputs.get("bucket_name")
    if not isinstance(bucket, str) or not bucket:
        raise LabError("the tracker cannot be reached over SSH and the lab has no bucket to back up to")
    since = backups.now_utc() - dt.timedelta(seconds=CLOCK_SKEW_S)
    stop_tracker(outputs)
    say(f"the tracker stopped; waiting for its final backup in gs://{bucket}/{gcs.backup_prefix(settings.stack)}")
    found = gcs.wait_for_backup(bucket, settings.stack, since=since, reason=FINAL_BACKUP_REASON, timeout=timeout)
    home_backups = paths.stack_home(settings.stack) / "backups"
    # A fetch, not a restore: the quick check (the sha256s prove it is what the tracker checked).
    made = gcs.download(bucket, settings.stack, home_backups, backup_id=found, check=backups.QUICK_CHECK)
    say(f"backup {made.manifest.id}, taken by the tracker as it stopped, downloaded and verified: {made.path}")
    return made.path


def record_down(settings: schema.Settings) -> None:
    """The lab's uptime stops now (`lab cost`)."""
    from toolkit.cost import uptime

    uptime.record_down(settings.stack)


def labelled_leftovers(settings: schema.Settings, say: Say) -> Any:
    """Instances and disks still labelled with this stack in the project, asked of GCP's Compute API.

    Returns a `gcp_api.LeftoverCheck`: iterating it gives the leftovers (so `left += ...` works), and
    `.checked` is False when GCP could not be asked (no credentials, no network) or some zones did not
    answer; then this says so and `leftovers_error(left, check)` gives the exit code EXIT_UNVERIFIED."""
    from toolkit.gcp import api as gcp_api

    check = gcp_api.check_leftovers(settings.project or "", settings.labels["lab"])
    if not check.checked:
        say(f"warning: could not ask GCP for leftovers, so nothing left is NOT verified: {check.why}")
    return check


def leftovers_error(left: list[str], check: Any = None) -> LabError:
    """The error `lab down` ends with: leftovers found (EXIT_LEFTOVERS), or none found but the check could not
    run or was incomplete (EXIT_UNVERIFIED, with the gcloud commands that check by hand)."""
    unverified = check is not None and not check.checked
    if not left and unverified:
        return LabError(
            f"the lab is down as far as Pulumi knows, but whether anything labelled lab={check.label} is left in "
            f"project {check.project} could not be checked ({check.why})",
            hint=f"check with {check.commands()}, or run `lab down` again when GCP answers",
            code=EXIT_UNVERIFIED,
        )
    shown = "; ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    more = f" (and some zones did not answer: {check.why})" if unverified else ""
    return LabError(
        f"the lab is down, but these are left: {shown}{more}",
        hint="delete them in the console or with gcloud, or run `lab down` again",
        code=EXIT_LEFTOVERS,
    )


# -- the gcp target's `Lab` --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcpLab(Lab):
    """The gcp target: Pulumi makes (and destroys) the VMs; once they run, the lab is an `SshLab` on the hosts
    its outputs name, as they are now (Compute API)."""

    target: ClassVar[str] = "gcp"
    uptime_note: ClassVar[str] = "the lab is not up"
    settings: schema.Settings
    source: str  # the stack as the user named it (a name or a stack file's path)

    @classmethod
    def open(cls, stack_name: str, ui: Ui | None = None) -> GcpLab:
        return cls(settings=settings_of(stack_name, warn=ui.say if ui else None), source=stack_name)

    @classmethod
    def prerequisites(
        cls, public_key_path: str, project: str | None, settings: schema.Settings | None = None
    ) -> list[Check]:
        from toolkit.labs import prerequisites as checks

        return checks.machine() + checks.reaching_hosts(public_key_path) + checks.gcp(project, settings)

    @classmethod
    def ask_init(cls, ask: Ask, raw: dict[str, Any]) -> None:
        ask("gcp:project", "GCP project id")
        ask("gcp:zone", "Zone the lab runs in (its region follows), e.g. us-central1-a")
        zone = raw["gcp:zone"]
        ask(
            "lab:zones",
            f"Other zones to try, in order, when {zone} has no spot capacity (comma-separated; empty for none)",
            default="",
            make=lambda answer: [zone, *(z for z in stack_init.split_answer(answer) if z != zone)],
        )
        ask("lab:workers", "GPU workers", default="1", make=stack_init.number_answer)
        ask(
            "lab:workerMachineType",
            "Worker machine type (a2-highgpu-1g: A100 40GB, g2-standard-8: L4)",
            default=schema.KEYS_BY_NAME["lab:workerMachineType"].default,
        )
        ask(
            "lab:allowedSshCidrs",
            "Address ranges that may reach SSH, comma-separated (yours as x.x.x.x/32; `curl -s ifconfig.me` shows it)",
            make=stack_init.split_answer,
        )
        ask(
            "lab:stateBackend",
            "Where Pulumi keeps state: file://FOLDER or gs://BUCKET (empty: a folder under LAB_HOME)",
            default="",
        )

    @classmethod
    def init_defaults(cls, raw: dict[str, Any]) -> None:
        # Written out even at their defaults: the two values a gcp user most often changes.
        raw.setdefault("lab:workers", schema.KEYS_BY_NAME["lab:workers"].default)
        raw.setdefault("lab:workerMachineType", schema.KEYS_BY_NAME["lab:workerMachineType"].default)

    @classmethod
    def summary(cls, settings: schema.Settings) -> str:
        gpus = settings.worker_gpus
        gpu_text = f", {gpus.count} x {gpus.gpu} each" if gpus else ""
        kind = "spot" if settings.spot else "standard"
        return (
            f"target gcp, {settings.workers} {kind} worker{'s' * (settings.workers != 1)} "
            f"{settings.worker_machine_type}{gpu_text} in {settings.zone}"
        )

    # -- the lab on its VMs ----------------------------------------------------------------------------------
    @functools.cached_property
    def on_hosts(self) -> Any:
        """The `SshLab` on the VMs as they are now (stopped ones left out, said once), read once per command."""
        from toolkit.labs import ssh as remote_lab

        return remote_lab.open_lab(self.source, "gcp")

    def up(self, request: UpRequest, ui: Ui) -> Report:
        from toolkit.labs import ssh as remote_lab

        provisioned = _provision(self, request, ui)
        if isinstance(provisioned, Report):
            return provisioned  # --preview
        return remote_lab.configure_lab(self.on_hosts, ui, provisioned)

    def status(self, ui: Ui) -> Report:
        from toolkit.labs import ssh as remote_lab

        backend = pulumi_state.backend_url(self.settings)
        state = pulumi_state.read(backend, self.stack)
        if state is None or not state.outputs.get("tracker_external_ip"):
            left = len(state.cloud_resources) if state else 0
            return Report(
                {"stack": self.stack, "target": "gcp", "up": False, "resources": left},
                [f"the gcp lab of stack {self.stack} is not up (state: {backend}); `lab up` starts it"],
            )
        # The VMs as they are now (Compute API): a stopped worker is shown as stopped, not as unreachable.
        view = remote_lab.gcp_hosts(self.settings, ui.say)
        lab = remote_lab.gcp_lab_of(self.settings, view, ui.say) if view.tracker.usable else None
        return remote_lab.hosts_status(
            lab,
            ui,
            target="gcp",
            stack_name=self.stack,
            root=paths.stack_home(self.stack),
            bucket=view.bucket,
            view=view,
        )

    def backup(self, ui: Ui) -> Report:
        return self.on_hosts.backup(ui)

    def restore(self, request: RestoreRequest, ui: Ui) -> Report:
        return self.on_hosts.restore(request, ui)

    def down(self, request: DownRequest, ui: Ui) -> Report:
        return _down(self, request, ui)

    def budget_workers(self) -> dict[str, Any] | None:
        try:
            return self.detached_place(None, None).get("gcp")
        except LabError:
            return None

    def hand_budget(self, document: dict[str, Any]) -> None:
        self.on_hosts.hand_budget(document)

    def budget_record(self) -> dict[str, Any] | None:
        """The tracker's record, read over the lab on its VMs: the one this command opened already, else one opened
        for this reading only (`lab up` opens its own once its VMs run)."""
        from toolkit.labs import ssh as remote_lab

        on_hosts = self.__dict__.get("on_hosts") or remote_lab.open_lab(self.source, "gcp")
        return on_hosts.budget_record()

    def sweep_place(
        self, exits: contextlib.ExitStack, parallel: int | None, gpus: list[str] | None, ui: Ui
    ) -> SweepPlace:
        from toolkit.labs import ssh as remote_lab

        return remote_lab.sweep_place(self.on_hosts, exits, parallel, gpus, self.worker_price())

    def worker_price(self) -> Callable[[str], float | None]:
        """A worker's price per hour from the price table (on-demand after --fallback-on-demand)."""
        from dataclasses import replace

        from toolkit.cost import prices

        settings = self.settings
        state = pulumi_state.read(pulumi_state.backend_url(settings), settings.stack)
        spot = state.outputs.get("worker_spot") if state else None
        if isinstance(spot, bool):
            settings = replace(settings, spot=spot)
        price = prices.worker_hourly(settings)
        return lambda _: price

    detach_by_default: ClassVar[bool] = True

    def sweep_host(self) -> SweepHost:
        return self.on_hosts.sweep_host()

    def detached_place(self, parallel: int | None, gpus: list[str] | None) -> dict[str, Any]:
        """The tracker's place, and what it needs to start again a worker GCP stopped (its VM and zone)."""
        from toolkit.labs import ssh as remote_lab

        place = remote_lab.detached_place(self.on_hosts, parallel, gpus, self.worker_price())
        view = remote_lab.gcp_hosts(self.settings)
        machine = self.settings.worker_gpus
        place["gcp"] = {
            "project": view.project,
            "what": machine.gpu.removeprefix("nvidia-").removeprefix("tesla-").upper() if machine else "capacity",
            "workers": [
                {"name": state.host.name, "instance": state.instance, "zone": state.zone}
                for state in view.states[1:]
                if state.instance and state.zone
            ],
        }
        return place

    def study_storage(self) -> contextlib.AbstractContextManager[Any]:
        return self.on_hosts.study_storage()

    def forwards(self, mlflow_port: int, jupyter_port: int, dashboard_port: int) -> list[Forward]:
        return self.on_hosts.forwards(mlflow_port, jupyter_port, dashboard_port)

    def open_forward(self, forward: Forward) -> Any:
        return self.on_hosts.open_forward(forward)

    def login(self, host: str, command: list[str] | None) -> list[str]:
        return self.on_hosts.login(host, command)


def _provision(lab: GcpLab, request: UpRequest, ui: Ui) -> dict[str, float] | Report:
    """Pulumi's part of `lab up`: the stages' durations, or the preview's Report after --preview."""
    from toolkit.labs import ssh as remote_lab

    settings = lab.settings
    shown: dict[str, Any] = {}

    def show(plan: pulumi_engine.Plan, lines: list, total: float) -> None:
        shown["document"] = {
            "stack": settings.stack,
            "changes": plan.counts,
            "steps": [{"op": op, "type": kind, "name": name} for op, kind, name in plan.steps],
            "cost_per_hour_usd": round(total, 4),
            "priced": [line.as_dict() for line in lines],
        }
        if ui.json and request.preview:
            return  # the preview's document is the answer
        ui.show(f"preview of {settings.stack}: {plan_summary(plan)}")
        # One line per resource that changes, with Pulumi's own marks (pkg/resource/deploy/step.go RawPrefix).
        marks = {"create": "+ ", "update": "~ ", "replace": "+-", "delete": "- ", "import": "= "}
        for op, kind, name in plan.steps:
            ui.show(f"  {marks.get(op, '  ')} {op:8} {kind.split(':')[-1]:12} {name}", highlight=False)
        if not plan.steps:
            ui.show("  no changes", highlight=False)
        for line in lines:
            ui.show(f"  {line.describe()}")
        ui.show(f"estimated cost while up: ${total:.2f}/hour")

    backend = pulumi_state.backend_url(settings)
    if backend.startswith("gs://"):
        from toolkit.gcp import state_bucket

        state_bucket.ensure_state_bucket(
            backend.removeprefix("gs://").split("/", 1)[0], settings.project or "", settings.region or "US"
        )
    with stack_lock(settings, "up"):
        done = provision(
            settings,
            pulumi_engine.AutomationEngine(settings, paths.project_dir()),
            confirm=ui.confirm,
            say=ui.say,
            show=show,
            preview_only=request.preview,
            fallback_on_demand=request.fallback_on_demand,
        )
    if done is None:
        return Report(shown.get("document", {}), [])
    record_up(settings, done)
    start_stopped_tracker(settings, done.outputs, ui.say)
    hosts = lab.on_hosts
    started = time.monotonic()
    remote_lab.forget_changed_host_keys(hosts)
    for host in hosts.hosts:
        ui.say(f"waiting for SSH on {host.name} ({host.address})")
        remote_lab.wait_for_ssh(hosts, host, timeout=600)
    done.stages["wait for SSH"] = time.monotonic() - started
    return done.stages


def _down(lab: GcpLab, request: DownRequest, ui: Ui) -> Report:
    """`lab down` on gcp: the workers, then (over SSH) MLflow and the Optuna proxy stop taking writes, the replica
    catches up and a verified backup is taken (or, without SSH, the tracker's own as it stops), then the rest."""
    from toolkit.labs import ssh as remote_lab

    settings, say = lab.settings, ui.say
    if request.destroy_data:
        bucket = settings.bucket_name or "the lab's bucket"
        if not ui.confirm(f"Delete gs://{bucket} with every artifact and backup in it, for good?"):
            raise LabError("nothing was destroyed: deleting the data was not confirmed")
        if not ui.yes and not ui.confirm(f"Really delete gs://{bucket}? This cannot be undone"):
            raise LabError("nothing was destroyed: deleting the data was not confirmed twice")
    from toolkit.sweeps import dispatch as sweeps

    home = paths.stack_home(settings.stack)
    if home.is_dir():  # this machine's `lab dispatch`, stopped as Ctrl-C stops it, before its workers go
        sweeps.interrupt_running(home, say)

    caught_up: list[bool] = []

    def backup(outputs: dict[str, Any]) -> Path | None:
        """MLflow and the Optuna proxy stop taking writes, the replica catches up, a verified backup; when it fails,
        they run again (teardown then destroys nothing more), unless --force (everything goes anyway)."""
        if not outputs.get("tracker_external_ip"):
            say("no tracker in the Pulumi state: nothing to back up")
            return None
        made, replica_caught_up = remote_lab.down_backup(lab.on_hosts, say=say, restart=not request.force)
        caught_up.append(replica_caught_up)
        return made.path

    with stack_lock(settings, "down"):
        with contextlib.suppress(LabError):  # the tracker's detached sweeps, as Ctrl-C stops them, before their workers
            remote_lab.stop_sweeps(lab.on_hosts, say)
        done = teardown(
            settings,
            lambda: pulumi_engine.AutomationEngine(settings, paths.project_dir()),
            backup=backup,
            say=say,
            stop_tracker=functools.partial(stop_tracker_vm, settings, say=say),
            destroy_data=request.destroy_data,
            force=request.force,
        )
    record_down(settings)
    if done is None:
        return Report(
            {"stack": settings.stack, "destroyed": 0, "nothing_to_do": True},
            [f"nothing to do: the gcp lab of stack {settings.stack} is not up"],
        )
    remote_lab.forget_all_host_keys(paths.stack_home(settings.stack))
    document = {
        "stack": settings.stack,
        "destroyed": done.destroyed,
        "backup": str(done.backup) if done.backup else None,
        "bucket_deleted": done.bucket_deleted,
        "backup_by": done.backup_by if done.backup else None,
        "replica_caught_up": bool(caught_up and caught_up[-1]),
        "leftovers": done.leftovers,
        "leftovers_checked": bool(done.leftover_check is None or done.leftover_check.checked),
        "stages_s": {k: round(v, 1) for k, v in done.stages.items()},
    }
    lines = [f"destroyed {done.destroyed} resources of stack {settings.stack}"]
    if done.backup:
        by = " (taken by the tracker as it stopped)" if done.backup_by == "tracker" else ""
        lines.append(f"backup verified{by}: {done.backup}")
    if done.bucket_deleted:
        lines.append(f"deleted the bucket gs://{done.bucket_deleted} with its artifacts and backups")
    elif settings.bucket_name:
        lines.append(f"the bucket gs://{settings.bucket_name} and its backups stay (--destroy-data deletes them)")
    unchecked = done.leftover_check is not None and not done.leftover_check.checked
    failure = leftovers_error(done.leftovers, done.leftover_check) if done.leftovers or unchecked else None
    return Report(document, lines, failure)
