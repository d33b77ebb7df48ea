"""The lab's configuration keys: names, types, defaults, and every rule about them, in one place.

The Pulumi program (`infra/stack_config.py`) and the toolkit (`toolkit/config/stack.py`) both hand their raw
values to `resolve`, so a stack is judged the same way by `lab config validate` and by the engine.
Raw values may be native YAML (a stack file) or strings (Pulumi's runtime config, lists as JSON).

This module imports nothing heavy: it runs on every `lab` command.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from toolkit.config import machines

TARGETS = ("gcp", "ssh", "local")
BUDGET_PERIODS = ("up", "month")
MLFLOW_PORT = 5000
# lab:allowedSshCidrs: a range (or ranges together) wider than this is refused; wider than NARROW is a warning.
WIDEST_SSH_PREFIX = 8
NARROW_SSH_PREFIX = 24

DEFAULT_WORKER_IMAGE = (
    "projects/deeplearning-platform-release/global/images/family/pytorch-2-9-cu129-ubuntu-2204-nvidia-580"
)


@dataclass(frozen=True)
class Key:
    """One configuration key of a stack file."""

    name: str
    kind: str  # "string", "integer", "number", "boolean" or "list"
    doc: str
    default: Any = None
    derived: str | None = None  # how the default is derived, when it is not a constant
    required_for: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    minimum: int | None = None

    @property
    def attribute(self) -> str:
        """The Settings attribute: lab:workerDiskGb -> worker_disk_gb, gcp:project -> project."""
        name = self.name.split(":", 1)[1]
        return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


KEYS: tuple[Key, ...] = (
    Key(
        "lab:target",
        "string",
        "where the hosts come from: gcp, ssh or local (--target overrides)",
        default="gcp",
        choices=TARGETS,
    ),
    Key("gcp:project", "string", "the GCP project id", required_for=("gcp",)),
    Key("gcp:region", "string", "the GCP region, e.g. us-central1", required_for=("gcp",)),
    Key("gcp:zone", "string", "the zone the lab runs in, inside gcp:region", required_for=("gcp",)),
    Key("lab:zones", "list", "ordered zones to try when a zone has no capacity", derived="[gcp:zone]"),
    Key("lab:workers", "integer", "number of GPU workers (0 allowed)", default=1, minimum=0),
    Key(
        "lab:workerMachineType",
        "string",
        "worker machine type: a2-highgpu-1g (A100 40GB), g2-standard-8 (L4), n1-standard-8 (+ lab:workerGpu)",
        default="a2-highgpu-1g",
    ),
    Key("lab:workerGpu", "string", "accelerator attached to N1 workers, e.g. nvidia-tesla-t4", default=None),
    Key("lab:workerGpuCount", "integer", "accelerators per N1 worker", default=1, minimum=1),
    Key("lab:spot", "boolean", "spot (preemptible) workers", default=True),
    Key(
        "lab:workerImage",
        "string",
        "worker boot image or image family (a Deep Learning VM image)",
        default=DEFAULT_WORKER_IMAGE,
    ),
    Key("lab:workerDiskGb", "integer", "worker boot disk size in GB (pd-ssd)", default=150, minimum=10),
    Key("lab:trackerMachineType", "string", "tracker VM machine type; never preemptible", default="e2-standard-2"),
    Key("lab:trackerDiskGb", "integer", "tracker data disk size in GB", default=30, minimum=10),
    Key("lab:sshUser", "string", "login for SSH and Ansible", default="lab"),
    Key("lab:sshPublicKeyPath", "string", "public key installed for lab:sshUser", default="~/.ssh/id_ed25519.pub"),
    Key(
        "lab:trackerHost",
        "string",
        "ssh target: the tracker machine (an address or a ~/.ssh/config alias)",
        required_for=("ssh",),
    ),
    Key("lab:workerHosts", "list", "ssh target: the worker machines (addresses or aliases)", default=()),
    Key(
        "lab:allowedSshCidrs",
        "list",
        "who may reach SSH, e.g. [203.0.113.7/32]; world-open is refused",
        default=(),
        required_for=("gcp",),
    ),
    Key("lab:bucketName", "string", "artifact bucket name (globally unique)", derived="<gcp:project>-lab-<stack>"),
    Key("lab:bucketLocation", "string", "artifact bucket location", derived="gcp:region"),
    Key(
        "lab:datasets",
        "list",
        "datasets every worker gets at configure time: NAME or NAME@VERSION (the newest when none is named)",
        default=(),
    ),
    Key(
        "lab:destroyData",
        "boolean",
        "let `pulumi destroy` delete the bucket and its data (normally it is retained)",
        default=False,
    ),
    Key("lab:runsPerGpu", "integer", "parallel trials per GPU", default=1, minimum=1),
    Key("lab:backupKeep", "integer", "tracker backups to keep: the newest this many", default=10, minimum=1),
    Key("lab:backupDays", "integer", "and the newest backup of each day for this many days", default=14, minimum=0),
    Key(
        "lab:replica",
        "string",
        "where the tracker's DBs are replicated continuously (Litestream), for point-in-time restore: a gs://, s3://"
        " or file:// URL",
        derived="gs://<bucket>/replica/<stack>, else $LAB_HOME/stacks/<stack>/replica",
    ),
    Key(
        "lab:replicaSyncInterval",
        "string",
        "how often the replica ships the tracker's DBs' new writes (Litestream's sync-interval, 100ms to 10m): shorter"
        " loses less on a crash and costs more bucket operations (docs/costs.md)",
        default="250ms",
    ),
    Key(
        "lab:stateBackend",
        "string",
        "where Pulumi keeps the gcp target's state: a folder (file://PATH) or gs://BUCKET, reachable by a scheduled"
        " `lab down` elsewhere",
        derived="file://$LAB_HOME/pulumi",
    ),
    Key(
        "lab:secretsProvider",
        "string",
        "how Pulumi encrypts the stack's secrets: passphrase (from PULUMI_CONFIG_PASSPHRASE or"
        " PULUMI_CONFIG_PASSPHRASE_FILE) or gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K",
        default="passphrase",
    ),
    Key(
        "lab:idleMinutes",
        "number",
        "a worker powers itself off after this many minutes idle (0 = never; a fraction is taken)",
        default=30,
        minimum=0,
    ),
    Key("lab:budgetUsd", "number", "spend allowed per budget period (USD); the tracker's guard stops the lab there"),
    Key(
        "lab:budgetPeriod",
        "string",
        "what lab:budgetUsd covers: up (since the last `lab up`) or month (the calendar month, UTC)",
        default="up",
        choices=BUDGET_PERIODS,
    ),
    Key("lab:maxHours", "number", "the longest the lab's workers may run without a new `lab up` (hours)"),
    Key(
        "lab:requirements",
        "string",
        "the experiments' environment of sweeps whose notebook's folder names none: a requirements.txt, or a"
        " pyproject.toml with its uv.lock (a path; a relative one from the project folder, the one holding"
        " Pulumi.yaml)",
    ),
)

KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}

# Provider settings of pulumi-gcp that a stack may carry and the lab passes through untouched.
GCP_PASSTHROUGH_KEYS = frozenset(
    {
        "gcp:credentials",
        "gcp:accessToken",
        "gcp:impersonateServiceAccount",
        "gcp:billingProject",
        "gcp:userProjectOverride",
        "gcp:requestTimeout",
        "gcp:defaultLabels",
        "gcp:addPulumiAttributionLabel",  # pulumi-gcp (pulumi_gcp/config/vars.py); Terraform's name is not pulumi-gcp's
    }
)

_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# lab:replicaSyncInterval: a Go duration of one unit, as Litestream reads it (time.ParseDuration), in a range that
# keeps the bucket's operations bounded (at 100ms, 10 uploads a second per DB being written) and the RPO useful.
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
REPLICA_SYNC_RANGE_S = (0.1, 600.0)


def duration_s(text: str) -> float | None:
    """`250ms`, `1s`, `1.5m` in seconds; None for anything else."""
    found = _DURATION.match(text.strip()) if isinstance(text, str) else None
    return float(found.group(1)) * _DURATION_UNITS[found.group(2)] if found else None


_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
_KMS_KEY = re.compile(r"^gcpkms://projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")
_UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# A dataset as lab:datasets and a space file's data: name it: NAME[@VERSION] (toolkit.data.manifest's patterns).
DATASET_REF = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}(@[A-Za-z0-9._-]{1,64})?")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a stack, named by its key."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass(frozen=True)
class Secret:
    """A value Pulumi keeps encrypted in the stack file; the lab never needs to read it."""

    def __str__(self) -> str:
        return "[secret]"


@dataclass(frozen=True)
class Settings:
    """A stack's resolved settings: every key of KEYS as a typed attribute, defaults filled in."""

    stack: str
    target: str
    project: str | None
    region: str | None
    zone: str | None
    zones: tuple[str, ...]
    workers: int
    worker_machine_type: str
    worker_gpu: str | None
    worker_gpu_count: int
    spot: bool
    worker_image: str
    worker_disk_gb: int
    tracker_machine_type: str
    tracker_disk_gb: int
    ssh_user: str
    ssh_public_key_path: str
    tracker_host: str | None
    worker_hosts: tuple[str, ...]
    allowed_ssh_cidrs: tuple[str, ...]
    bucket_name: str | None
    bucket_location: str | None
    destroy_data: bool
    runs_per_gpu: int
    backup_keep: int
    backup_days: int
    replica: str | None
    state_backend: str | None
    secrets_provider: str
    idle_minutes: float
    budget_usd: float | None = None
    budget_period: str = "up"
    max_hours: float | None = None
    datasets: tuple[str, ...] = ()
    requirements: str | None = None
    replica_sync_interval: str = "250ms"

    @property
    def replica_sync_s(self) -> float:
        """lab:replicaSyncInterval in seconds (validated when the settings were resolved)."""
        return duration_s(self.replica_sync_interval) or 0.25

    @property
    def name_prefix(self) -> str:
        """Prefix of every cloud resource name: lab-<stack>, as a DNS label."""
        return "lab-" + dns_label(self.stack, 40)

    @property
    def tracker_account_id(self) -> str:
        """The tracker VM's service account id (6-30 characters)."""
        return "lab-" + dns_label(self.stack, 18) + "-tracker"

    @property
    def worker_account_id(self) -> str:
        """The workers' service account id (6-30 characters)."""
        return "lab-" + dns_label(self.stack, 18) + "-worker"

    @property
    def labels(self) -> dict[str, str]:
        """Labels on everything the lab creates, so `lab down` can find what is left."""
        return {"lab": dns_label(self.stack, 63), "managed-by": "lab"}

    @property
    def worker_gpus(self) -> machines.GpuShape | None:
        return machines.worker_gpus(self.worker_machine_type, self.worker_gpu, self.worker_gpu_count)

    @property
    def mlflow_port(self) -> int:
        return MLFLOW_PORT

    @property
    def ssh_private_key_path(self) -> str:
        """The key lab logs in with: the public key's path without `.pub`."""
        return self.ssh_public_key_path.removesuffix(".pub")


@dataclass
class Resolution:
    """What `resolve` made of a stack: the settings (None when a value could not be read) and problems."""

    settings: Settings | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # allowed, but worth a second look
    values: dict[str, Any] = field(default_factory=dict)  # key -> resolved value
    sources: dict[str, str] = field(default_factory=dict)  # key -> "stack", "default" or "derived"


def dns_label(text: str, limit: int) -> str:
    """Lowercase letters, digits and dashes, at most `limit` long: fit for GCP names and labels."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].rstrip("-") or "lab"


def _coerce(key: Key, value: Any) -> tuple[Any, str | None]:
    """The value as the key's type, or an error saying what was expected."""
    if isinstance(value, dict) and set(value) == {"secure"}:
        return Secret(), None
    if key.kind == "string":
        if isinstance(value, str) and value.strip():
            return value.strip(), None
        return None, f"expected text, got {_show(value)}"
    if key.kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value), None
        return None, f"expected a whole number, got {_show(value)}"
    if key.kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), None
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d*)?\s*", value):
            return float(value), None
        return None, f"expected a number, got {_show(value)}"
    if key.kind == "boolean":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return value.strip().lower() == "true", None
        return None, f"expected true or false, got {_show(value)}"
    # list of strings; Pulumi's runtime hands lists over as JSON text
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, f"expected a list, got {_show(value)}"
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(v.strip() for v in value), None
    return None, f"expected a list of text values such as [a, b], got {_show(value)}"


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_key_problem(name: str) -> Problem:
    known = [*KEYS_BY_NAME, *GCP_PASSTHROUGH_KEYS]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:
        lowered = {k.lower(): k for k in known}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    hint = f"; did you mean {close[0]}?" if close else "; `lab config show` lists the keys"
    return Problem(name, f"unknown key{hint}")


def resolve(raw: Mapping[str, Any], *, stack: str, target: str | None = None) -> Resolution:
    """Check a stack's raw key/value pairs against every rule and fill in defaults.

    `target` overrides lab:target (as --target does). Every problem found is reported, not just the first.
    """
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    unreadable: set[str] = set()  # keys whose value is not of the key's type

    for name in raw:
        if name not in KEYS_BY_NAME and name not in GCP_PASSTHROUGH_KEYS:
            problems.append(unknown_key_problem(name))

    for key in KEYS:
        if key.name in raw and raw[key.name] is not None:
            value, error = _coerce(key, raw[key.name])
            if error:
                problems.append(Problem(key.name, error))
                unreadable.add(key.name)
                continue
            values[key.name] = value
            sources[key.name] = "stack"
        elif key.derived is None:
            values[key.name] = key.default
            sources[key.name] = "default"

    if target is not None:
        values["lab:target"] = target
        sources["lab:target"] = "--target"
    chosen = values.get("lab:target")
    if isinstance(chosen, str) and chosen not in TARGETS:
        problems.append(Problem("lab:target", f"{chosen!r} is not a target; choose one of {', '.join(TARGETS)}"))
    elif isinstance(chosen, str):
        for key in KEYS:
            missing = values.get(key.name) in (None, ())
            if chosen in key.required_for and missing and key.name not in unreadable:
                problems.append(Problem(key.name, f"required for the {chosen} target; set it in the stack file"))

    _derive(values, sources, stack)
    problems.extend(_check_values(values, sources))
    cidrs = values.get("lab:allowedSshCidrs")
    warnings = _cidr_warnings(cidrs) if isinstance(cidrs, tuple) and not problems else []

    settings = None
    if not unreadable:
        settings = Settings(stack=stack, **{key.attribute: _plain(values.get(key.name)) for key in KEYS})
    return Resolution(settings=settings, problems=problems, warnings=warnings, values=values, sources=sources)


def _plain(value: Any) -> Any:
    return None if isinstance(value, Secret) else value


def _derive(values: dict[str, Any], sources: dict[str, str], stack: str) -> None:
    zone, project, region = values.get("gcp:zone"), values.get("gcp:project"), values.get("gcp:region")
    if "lab:zones" not in values:
        values["lab:zones"] = (zone,) if isinstance(zone, str) else ()
        sources["lab:zones"] = "derived"
    if "lab:bucketName" not in values:
        values["lab:bucketName"] = (
            f"{dns_label(project, 40)}-lab-{dns_label(stack, 20)}" if isinstance(project, str) else None
        )
        sources["lab:bucketName"] = "derived"
    if "lab:replica" not in values:
        values["lab:replica"] = None  # the lab fills it in per target (toolkit.tracker.replica.default_url)
        sources["lab:replica"] = "derived"
    if "lab:stateBackend" not in values:
        values["lab:stateBackend"] = None  # the toolkit fills in file://$LAB_HOME/pulumi (toolkit.gcp.pulumi_engine)
        sources["lab:stateBackend"] = "derived"
    if "lab:bucketLocation" not in values:
        values["lab:bucketLocation"] = region.upper() if isinstance(region, str) else None
        sources["lab:bucketLocation"] = "derived"


def _check_values(values: dict[str, Any], sources: dict[str, str]) -> list[Problem]:
    """The rules that look at values (and at pairs of them), once each value has its type."""
    problems: list[Problem] = []

    def value(name: str) -> Any:
        found = values.get(name)
        return None if isinstance(found, Secret) else found

    for key in KEYS:
        found = value(key.name)
        if (
            key.minimum is not None
            and isinstance(found, int | float)
            and not isinstance(found, bool)
            and found < key.minimum
        ):
            problems.append(Problem(key.name, f"must be at least {key.minimum}, got {found:g}"))

    project = value("gcp:project")
    if isinstance(project, str) and not _PROJECT_ID.match(project):
        problems.append(
            Problem(
                "gcp:project",
                f"{project!r} is not a project id (6-30 lowercase letters, digits and dashes, starting with a letter)",
            )
        )
    region = value("gcp:region")
    if isinstance(region, str) and not _REGION.match(region):
        problems.append(Problem("gcp:region", f"{region!r} is not a region name such as us-central1"))
        region = None
    # lab:zones derived from gcp:zone would only repeat gcp:zone's problem.
    listed = list(value("lab:zones") or ()) if sources.get("lab:zones") == "stack" else []
    for name, zones in (("gcp:zone", [value("gcp:zone")]), ("lab:zones", listed)):
        for zone in zones:
            if not isinstance(zone, str):
                continue
            match = _ZONE.match(zone)
            if not match:
                problems.append(Problem(name, f"{zone!r} is not a zone name such as us-central1-a"))
            elif region and match.group(1) != region:
                problems.append(
                    Problem(name, f"zone {zone} is not in region {region}; use a {region}-* zone or change gcp:region")
                )

    worker_type, tracker_type = value("lab:workerMachineType"), value("lab:trackerMachineType")
    for name, machine_type in (("lab:workerMachineType", worker_type), ("lab:trackerMachineType", tracker_type)):
        if isinstance(machine_type, str) and not machines.MACHINE_TYPE.match(machine_type):
            problems.append(Problem(name, f"{machine_type!r} is not a machine type such as e2-standard-2"))
    gpu_count = value("lab:workerGpuCount")
    if isinstance(worker_type, str) and machines.MACHINE_TYPE.match(worker_type) and isinstance(gpu_count, int):
        mismatch = machines.gpu_problem(worker_type, value("lab:workerGpu"), gpu_count)
        if mismatch:
            problems.append(Problem("lab:workerMachineType", mismatch))

    problems.extend(_budget_problems(value))
    problems.extend(_cidr_problems(value("lab:allowedSshCidrs") or ()))
    problems.extend(_host_problems(value("lab:trackerHost"), value("lab:workerHosts") or ()))

    bucket = value("lab:bucketName")
    if isinstance(bucket, str) and (not _BUCKET.match(bucket) or ".." in bucket or bucket.startswith("goog")):
        problems.append(
            Problem(
                "lab:bucketName",
                f"{bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, dashes, dots or underscores)",
            )
        )
    interval = value("lab:replicaSyncInterval")
    if isinstance(interval, str):
        seconds = duration_s(interval)
        low, high = REPLICA_SYNC_RANGE_S
        if seconds is None or not low <= seconds <= high:
            problems.append(
                Problem(
                    "lab:replicaSyncInterval",
                    f"{interval!r} is not a sync interval from 100ms to 10m; write e.g. 250ms, 1s or 10s",
                )
            )
    replica = value("lab:replica")
    if isinstance(replica, str):
        problems.extend(_replica_problems(replica))
    backend = value("lab:stateBackend")
    if isinstance(backend, str):
        problems.extend(_backend_problems(backend))
    provider = value("lab:secretsProvider")
    if isinstance(provider, str) and provider != "passphrase" and not _KMS_KEY.match(provider):
        problems.append(
            Problem(
                "lab:secretsProvider",
                f"{provider!r} is neither passphrase nor a KMS key such as"
                " gcpkms://projects/P/locations/global/keyRings/R/cryptoKeys/K",
            )
        )
    for ref in value("lab:datasets") or ():
        if not isinstance(ref, str) or not DATASET_REF.fullmatch(ref):
            problems.append(Problem("lab:datasets", f"{ref!r} is not NAME or NAME@VERSION, e.g. cifar100 or stl10@v2"))
    user = value("lab:sshUser")
    if isinstance(user, str) and (not _UNIX_USER.match(user) or user == "root"):
        problems.append(Problem("lab:sshUser", f"{user!r} is not a usable login name (lowercase, not root)"))
    return problems


def _budget_problems(value: Any) -> list[Problem]:
    problems = []
    for name in ("lab:budgetUsd", "lab:maxHours"):
        found = value(name)
        if isinstance(found, float) and found <= 0:
            problems.append(Problem(name, f"must be more than 0, got {found:g}; leave it out for no limit"))
    period = value("lab:budgetPeriod")
    if isinstance(period, str) and period not in BUDGET_PERIODS:
        problems.append(Problem("lab:budgetPeriod", f"{period!r} is not a budget period; choose up or month"))
    return problems


def _backend_problems(backend: str) -> list[Problem]:
    key = "lab:stateBackend"
    if backend.startswith("gs://"):
        bucket = backend.removeprefix("gs://").split("/", 1)[0]
        if not _BUCKET.match(bucket) or ".." in bucket:
            return [Problem(key, f"{bucket!r} is not a valid bucket name; use gs://BUCKET such as gs://my-lab-state")]
        return []
    if backend.startswith("file://"):
        path = backend.removeprefix("file://")
        if not (path.startswith("/") or path.startswith("~")):
            return [Problem(key, f"{backend!r} needs an absolute folder, such as file://~/.lab/pulumi")]
        return []
    return [Problem(key, f"{backend!r} is not a state backend; use file://FOLDER or gs://BUCKET")]


REPLICA_SCHEMES = ("gs://", "s3://", "file://")
# Litestream's SFTP client (sftp/replica_client.go, Init) signs in only with a password from the URL or a key
# file named in its configuration (`key-path`), never an SSH agent, and skips the host-key check unless
# `host-key-path` names one: the lab provisions neither on the replicating machine, so it refuses sftp://.
SFTP_REFUSED = (
    "an sftp:// replica is not supported: Litestream signs in to SFTP only with a password or a key file on the"
    " replicating machine, which the lab does not provision; use s3:// (any S3-compatible store: MinIO on a NAS,"
    " R2), gs:// or file://"
)
# The options Litestream's S3 client reads from an s3:// URL's query string, for S3-compatible stores (MinIO,
# R2, ...): s3://BUCKET/PATH?endpoint=http://HOST:PORT&region=R (litestream 0.5.17, s3/replica_client.go
# NewReplicaClientFromURL; an endpoint implies path-style URLs). Its gs:// and file:// clients read none.
S3_REPLICA_OPTIONS = (
    "endpoint",
    "region",
    "forcePathStyle",
    "skipVerify",
    "signPayload",
    "sign-payload",
    "requireContentMD5",
    "require-content-md5",
)
_S3_BOOLEAN_OPTIONS = frozenset(S3_REPLICA_OPTIONS[2:])
_ENDPOINT = re.compile(r"^(https?://)?[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")


# A file:// replica's folder becomes the tracker user's (lab_tracker: "Create the replica's folder on this host",
# chown + 0750), so it must be a folder of its own: never one the system, a user's login, or the lab itself needs.
# Trees refused with everything below them (FHS 3.0's system hierarchy; /var holds the package manager's and the
# services' state, so only folders below /var/tmp, which survives reboots, are allowed there):
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run")
_SYSTEM_TREES += ("/sbin", "/snap", "/sys", "/usr", "/var")
# Folders refused themselves (what is below them may be a replica's own folder):
_VAR_TMP = "/var/tmp"  # noqa: S108 -- a folder name checked against, not a file made
_SYSTEM_FOLDERS = ("/home", "/mnt", "/media", "/opt", "/srv", "/tmp", _VAR_TMP, "/lost+found")  # noqa: S108
# The lab's own folders on its hosts (role defaults: lab_tracker_data, lab_base_venv's /opt/lab), with the one a
# replica may use: the role's default replica folder (lab_tracker_replica_dir).
_LAB_TREES = ("/srv/lab", "/opt/lab")
_LAB_REPLICA_DIR = "/srv/lab/replica"


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _replica_folder_problem(path: str) -> str | None:
    """Why a file:// replica may not be `path` (absolute, or ~/...), or None."""
    if path == "~" or path.startswith("~/"):
        home, rest = "~", path[1:]
    elif path.startswith("~"):
        return "another user's home (write '~user'); name the folder as an absolute path"
    else:
        home, rest = "", path
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "a path with '..'; name the folder itself"
    full = "/" + "/".join(parts)
    if home:
        if not parts:
            return "a user's home folder"
        return "a user's SSH folder" if parts[0] == ".ssh" else None
    if full == "/":
        return "the root folder"
    if _under(full, _LAB_REPLICA_DIR):
        return None
    if any(_under(full, tree) for tree in _LAB_TREES):
        return "the lab's own folder (the tracker's data, the lab's venv)"
    below_var_tmp = full.startswith(_VAR_TMP + "/")
    if any(_under(full, tree) and not below_var_tmp for tree in _SYSTEM_TREES) or full in _SYSTEM_FOLDERS:
        return "a system folder"
    if len(parts) == 2 and parts[0] == "home":
        return "a user's home folder"
    if len(parts) >= 3 and parts[0] == "home" and parts[2] == ".ssh":
        return "a user's SSH folder"
    return None


def _replica_problems(url: str) -> list[Problem]:
    key = "lab:replica"
    if url.startswith("sftp://"):
        return [Problem(key, f"{url!r}: {SFTP_REFUSED}")]
    if not url.startswith(REPLICA_SCHEMES):
        schemes = ", ".join(s.removesuffix("://") for s in REPLICA_SCHEMES)
        return [Problem(key, f"{url!r} is not a replica URL; use one of {schemes}, e.g. gs://BUCKET/replica/STACK")]
    scheme, rest = url.split("://", 1)
    where, _, query = rest.partition("?")
    host = where.split("/", 1)[0]
    if scheme == "file" and not where.startswith(("/", "~")):
        return [Problem(key, f"{url!r} needs an absolute folder, such as file:///srv/replica")]
    if scheme == "file" and (why := _replica_folder_problem(where)):
        return [
            Problem(
                key,
                f"{url!r} is {why}: the tracker's replica folder becomes the tracker user's; choose a folder of its"
                " own, such as file:///srv/replica",
            )
        ]
    if scheme != "file" and not host:
        return [Problem(key, f"{url!r} names no bucket or host")]
    if ":" in host.rpartition("@")[0]:
        return [Problem(key, f"{url!r} holds a password; the stack file is no place for one (use the environment)")]
    if query and scheme in ("gs", "file"):
        return [Problem(key, f"{url!r}: a {scheme}:// replica takes no options (?{query})")]
    if query and scheme == "s3":
        return _s3_option_problems(url, query)
    return []


def _s3_option_problems(url: str, query: str) -> list[Problem]:
    key = "lab:replica"
    problems = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in S3_REPLICA_OPTIONS:
            known = ", ".join(S3_REPLICA_OPTIONS)
            problems.append(Problem(key, f"{url!r}: unknown option {name!r}; an s3:// replica takes {known}"))
        elif name in _S3_BOOLEAN_OPTIONS and value not in ("true", "false"):
            problems.append(Problem(key, f"{url!r}: {name} is true or false, got {value!r}"))
        elif name == "endpoint" and not _ENDPOINT.match(value):
            problems.append(Problem(key, f"{url!r}: endpoint {value!r} is not http(s)://HOST[:PORT]"))
        elif name == "region" and not re.fullmatch(r"[a-z0-9-]+", value):
            problems.append(Problem(key, f"{url!r}: region {value!r} is not a region name such as us-east-1"))
    return problems


def _host_problems(tracker: str | None, workers: tuple[str, ...]) -> list[Problem]:
    problems: list[Problem] = []
    for key, hosts in (("lab:trackerHost", [tracker] if tracker else []), ("lab:workerHosts", list(workers))):
        for host in hosts:
            if not _HOST.match(host):
                problems.append(Problem(key, f"{host!r} is not a host name, address or ssh alias"))
    seen = [h for h in ([tracker] if tracker else []) + list(workers)]
    for host in sorted({h for h in seen if seen.count(h) > 1}):
        problems.append(Problem("lab:workerHosts", f"{host} is listed twice; each machine has one role in the lab"))
    return problems


def _ipv4_ranges(cidrs: tuple[str, ...]) -> list[ipaddress.IPv4Network]:
    found = []
    for text in cidrs:
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(text, strict=False)
            if isinstance(network, ipaddress.IPv4Network):
                found.append(network)
    return found


def _cidr_problems(cidrs: tuple[str, ...]) -> list[Problem]:
    problems: list[Problem] = []
    key = "lab:allowedSshCidrs"
    whole = "opens SSH to the whole internet; list only your own addresses, e.g. your IP as x.x.x.x/32"
    for text in cidrs:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(Problem(key, f"{text!r} is not an address range such as 203.0.113.7/32"))
            continue
        if network.prefixlen == 0:
            problems.append(Problem(key, f"{text} {whole}"))
        elif network.version == 6:
            problems.append(Problem(key, f"{text}: the lab's VMs have IPv4 addresses only; list IPv4 ranges"))
        elif str(network) != text and "/" in text:
            problems.append(Problem(key, f"{text} has host bits set; did you mean {network}?"))
        elif network.prefixlen < WIDEST_SSH_PREFIX:
            problems.append(
                Problem(
                    key,
                    f"{text} opens SSH to {network.num_addresses:,} addresses (wider than a /{WIDEST_SSH_PREFIX}); "
                    "list only your own addresses, e.g. your IP as x.x.x.x/32",
                )
            )
    if problems:
        return problems
    # Ranges that are each narrow enough may still add up to most of the internet (0.0.0.0/1 + 128.0.0.0/1).
    union = list(ipaddress.collapse_addresses(_ipv4_ranges(cidrs)))
    covered = sum(network.num_addresses for network in union)
    if covered > 2 ** (32 - WIDEST_SSH_PREFIX):
        shown = ", ".join(str(network) for network in union[:3]) + (" ..." if len(union) > 3 else "")
        problems.append(
            Problem(
                key,
                f"together these ranges ({shown}) open SSH to {covered:,} addresses, more than a "
                f"/{WIDEST_SSH_PREFIX}" + (f"; that {whole}" if covered == 2**32 else "; list only your own addresses"),
            )
        )
    return problems


def _cidr_warnings(cidrs: tuple[str, ...]) -> list[Problem]:
    """Ranges that are allowed but wider than a /24: usually a whole provider's network, not one person's."""
    return [
        Problem(
            "lab:allowedSshCidrs",
            f"{network} lets {network.num_addresses:,} addresses try SSH (wider than a /{NARROW_SSH_PREFIX}); "
            "is it only yours?",
        )
        for network in _ipv4_ranges(cidrs)
        if network.prefixlen < NARROW_SSH_PREFIX
    ]
