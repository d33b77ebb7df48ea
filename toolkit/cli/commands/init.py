"""`lab init`: a new stack file from flags (and, in a terminal, questions), checked before it is written.

For a gcp stack whose Pulumi state lives in gs://BUCKET, the bucket is created (or checked) first, so the
file is written only once its state backend is usable.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from toolkit.cli import options
from toolkit.config import schema, stack, stack_init
from toolkit.console import err, out
from toolkit.errors import LabError


def _split(values: list[str] | None) -> list[str]:
    """Repeated flags and comma-separated lists alike: --zones a,b --zones c -> [a, b, c]."""
    return [part for value in values or [] for part in re.split(r"[,\s]+", value) if part]


def _from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The answers the flags give, as raw stack keys; a key is absent when its flag was not given."""
    raw: dict[str, Any] = {}
    for key, value in flags.items():
        if isinstance(value, list):
            value = _split(value)
        if value not in (None, []):
            raw[key] = value
    return raw


def _derive(raw: dict[str, Any]) -> None:
    """What one answer gives another: the zone is the first of --zones (or leads them), the region is the zone's."""
    zones = raw.get("lab:zones")
    if zones and "gcp:zone" not in raw:
        raw["gcp:zone"] = zones[0]
    elif zones and raw.get("gcp:zone") not in zones:
        raw["lab:zones"] = [raw["gcp:zone"], *zones]
    zone = raw.get("gcp:zone")
    if isinstance(zone, str) and "gcp:region" not in raw and stack_init.region_of(zone):
        raw["gcp:region"] = stack_init.region_of(zone)


def _ask(
    raw: dict[str, Any],
    stack_name: str,
    key: str,
    question: str,
    *,
    default: str | None = None,
    make: Callable[[str], Any] = str,
) -> None:
    """Ask for one key the flags did not give, until the answer passes that key's rules.

    `default=None` makes an answer required; "" makes it optional (an empty answer leaves the key out).
    """
    if key in raw:
        return
    while True:
        answer = typer.prompt(question, default=default, show_default=bool(default)).strip()
        if not answer:
            return
        trial = {**raw, key: make(answer)}
        _derive(trial)
        wrong = [p for p in stack_init.problems(trial, stack_name) if p.key == key]
        if not wrong:
            raw.update(trial)
            return
        for problem in wrong:
            err().print(f"  {problem.message}", highlight=False, markup=False)


def _questions(raw: dict[str, Any], stack_name: str) -> None:
    """In a terminal: ask for what the flags left out, offering the defaults; each target asks its own keys."""
    from toolkit import labs

    default_target = schema.KEYS_BY_NAME["lab:target"].default
    _ask(raw, stack_name, "lab:target", f"Target ({', '.join(schema.TARGETS)})", default=default_target)
    _derive(raw)

    def ask(key: str, question: str, default: str | None = None, make: Callable[[str], Any] = str) -> None:
        _ask(raw, stack_name, key, question, default=default, make=make)

    labs.lab_class(raw["lab:target"]).ask_init(ask, raw)


def _state_bucket(raw: dict[str, Any]) -> str | None:
    backend = raw.get("lab:stateBackend")
    if isinstance(backend, str) and backend.startswith("gs://"):
        return backend.removeprefix("gs://").split("/", 1)[0]
    return None


def init(
    stack_name: options.Stack = options.STACK_DEFAULT,
    target: Annotated[
        Optional[options.TargetChoice],  # noqa: UP045
        typer.Option("--target", "-t", case_sensitive=False, help="Where the hosts come from (default: gcp)."),
    ] = None,
    project: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--project", metavar="PROJECT", help="gcp: the GCP project id."),
    ] = None,
    region: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--region", metavar="REGION", help="gcp: the region (default: the zone's)."),
    ] = None,
    zone: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--zone", metavar="ZONE", help="gcp: the zone the lab runs in (default: the first of --zones)."),
    ] = None,
    zones: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--zones",
            metavar="ZONE,...",
            help="gcp: zones to try in order when one has no capacity (repeat, or a,b,c); --zone leads them.",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--workers", metavar="N", help="gcp: number of GPU workers (0 allowed)."),
    ] = None,
    worker_machine_type: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--worker-machine-type", metavar="TYPE", help="gcp: e.g. a2-highgpu-1g (A100 40GB), g2-standard-8 (L4)."
        ),
    ] = None,
    ssh_cidr: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--ssh-cidr", metavar="CIDR", help="gcp: an address range that may reach SSH, e.g. 203.0.113.7/32 (repeat)."
        ),
    ] = None,
    state_backend: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--state-backend",
            metavar="URL",
            help="gcp: where Pulumi keeps state: file://FOLDER or gs://BUCKET (created if missing).",
        ),
    ] = None,
    secrets_provider: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--secrets-provider",
            metavar="PROVIDER",
            help="gcp: passphrase (default) or gcpkms://projects/P/.../cryptoKeys/K.",
        ),
    ] = None,
    tracker_host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--tracker-host", metavar="HOST", help="ssh: the tracker machine (an address or a ~/.ssh/config alias)."
        ),
    ] = None,
    worker_host: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--worker-host", metavar="HOST", help="ssh: a worker machine (repeat)."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Ask nothing: defaults for what the flags leave out, no confirmation.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing stack file.")] = False,
) -> None:
    """Write a new stack file (Pulumi.STACK.yaml) from flags, asking in a terminal for what they leave out;
    for a gs:// state backend, create the state bucket (versioned, public access prevention enforced)."""
    name, path = stack.stack_path(stack_name)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise stack_init.usage_error(f"{name!r} is not a stack name", hint="use letters, digits, '-', '_' or '.'")
    if path.exists() and not force:
        raise stack_init.refuse_overwrite(path)
    raw = _from_flags(
        {
            "lab:target": options.target_name(target),
            "gcp:project": project,
            "gcp:region": region,
            "gcp:zone": zone,
            "lab:zones": zones,
            "lab:workers": workers,
            "lab:workerMachineType": worker_machine_type,
            "lab:allowedSshCidrs": ssh_cidr,
            "lab:stateBackend": state_backend,
            "lab:secretsProvider": secrets_provider,
            "lab:trackerHost": tracker_host,
            "lab:workerHosts": worker_host,
        }
    )
    chosen = raw.get("lab:target")
    if chosen is not None:
        _refuse_misplaced(raw, chosen)
    interactive = not yes and sys.stdin.isatty()
    if interactive:
        _questions(raw, name)
    raw.setdefault("lab:target", schema.KEYS_BY_NAME["lab:target"].default)
    chosen = raw["lab:target"]
    _refuse_misplaced(raw, chosen)
    _derive(raw)
    from toolkit import labs

    kind = labs.lab_class(chosen)
    kind.init_defaults(raw)
    missing = stack_init.missing_required(raw, chosen)
    if missing:
        raise stack_init.usage_error(
            f"missing for the {chosen} target: {', '.join(missing)}",
            hint="pass them as flags, or run lab init in a terminal to be asked",
        )
    resolution = schema.resolve(raw, stack=name)
    if resolution.problems or resolution.settings is None:
        for problem in resolution.problems:
            print(f"{stack_init.labelled(problem.key)}: {problem.message}", file=sys.stderr)
        count = len(resolution.problems)
        raise LabError(
            f"{count} problem{'s' * (count != 1)} in the answers; nothing was written",
            hint="fix them and run lab init again",
        )
    settings = resolution.settings
    text = stack_init.render(raw, name)
    bucket = _state_bucket(raw)
    if interactive:
        out().print(text, highlight=False, markup=False)
        also = f" and make sure the state bucket gs://{bucket} exists in {settings.project}" if bucket else ""
        if not typer.confirm(f"Write {path}{also}?", default=True):
            raise LabError("nothing was written: not confirmed")
    if bucket:
        from toolkit.gcp.state_bucket import ensure_state_bucket

        location = settings.bucket_location or (settings.region or "").upper()
        created = ensure_state_bucket(bucket, settings.project or "", location)
        state = "created" if created else "checked"
        err().print(
            f"{state} the state bucket gs://{bucket}: versioning on, public access prevention enforced, "
            "uniform bucket-level access",
            highlight=False,
        )
    stack_init.write(path, text, force=force)
    out().print(f"[green]wrote[/green] {path} (target {chosen})", highlight=False)
    flag = "" if stack_name == stack.DEFAULT_STACK else f" --stack {stack_name}"
    out().print(kind.next_steps(flag), highlight=False)


def _refuse_misplaced(raw: dict[str, Any], target: str) -> None:
    wrong = stack_init.misplaced(raw, target)
    if len(wrong) == 1:
        message, hint = f"{wrong[0]} is not used by the {target} target", "leave it out"
    elif wrong:
        message, hint = f"{', '.join(wrong)} are not used by the {target} target", "leave them out"
    else:
        return
    raise stack_init.usage_error(message, hint=f"{hint}, or choose another --target")
