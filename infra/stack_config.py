"""The program's one reader of Pulumi config: every key goes through toolkit.config.schema, like `lab config`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pulumi

from toolkit.config import schema


def load() -> schema.Settings:
    """The stack's settings for the gcp target; every problem at once, as one error the engine reports."""
    raw: dict[str, str] = {}
    for key in schema.KEYS:
        namespace, name = key.name.split(":", 1)
        value = pulumi.Config(namespace).get(name)
        if value is not None:
            raw[key.name] = value
    resolution = schema.resolve(raw, stack=pulumi.get_stack(), target="gcp")
    if resolution.problems or resolution.settings is None:
        listed = "\n".join(f"  - {problem}" for problem in resolution.problems)
        raise pulumi.RunError(
            f"the stack's configuration has problems (`lab config validate` lists them too):\n{listed}"
        )
    for warning in resolution.warnings:
        pulumi.log.warn(str(warning))
    return resolution.settings


@dataclass(frozen=True)
class RunChoices:
    """What `lab up` decided for this run beyond the stack file (see toolkit.gcp.pulumi_engine.RunChoices)."""

    worker_zone: str
    spot: bool


def run_choices(settings: schema.Settings) -> RunChoices:
    """The zone the workers go to (lab's zone failover) and whether spot is waived (--fallback-on-demand).

    They arrive as LAB_WORKER_ZONE and LAB_WORKER_ON_DEMAND; without them, gcp:zone and lab:spot.
    """
    zone = os.environ.get("LAB_WORKER_ZONE", "").strip() or settings.zone or ""
    allowed = {settings.zone, *settings.zones}
    if zone not in allowed:
        raise pulumi.RunError(
            f"LAB_WORKER_ZONE={zone} is not gcp:zone or one of lab:zones ({', '.join(sorted(allowed))})"
        )
    on_demand = os.environ.get("LAB_WORKER_ON_DEMAND", "").strip() == "1"
    return RunChoices(worker_zone=zone, spot=settings.spot and not on_demand)


def ssh_public_key(settings: schema.Settings) -> str:
    """The public key installed for lab:sshUser, read from lab:sshPublicKeyPath."""
    path = Path(settings.ssh_public_key_path).expanduser()
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        raise pulumi.RunError(
            f"lab:sshPublicKeyPath: no public key at {path}; create one with "
            f"`ssh-keygen -t ed25519 -f {path.with_suffix('')}` or point the key "
            "at yours"
        ) from None
    if not key or "PRIVATE KEY" in key:
        raise pulumi.RunError(f"lab:sshPublicKeyPath: {path} is not a public key (use the .pub file)")
    return key.splitlines()[0]


def ssh_metadata(settings: schema.Settings) -> dict[str, str]:
    """Instance metadata that lets only the lab's key in, and only as lab:sshUser; and guest attributes on, so
    the guest agent publishes the VM's SSH host keys (`hostkeys/`) for the toolkit to pin before it first
    connects (https://cloud.google.com/compute/docs/metadata/manage-guest-attributes)."""
    return {
        "ssh-keys": f"{settings.ssh_user}:{ssh_public_key(settings)}",
        "block-project-ssh-keys": "TRUE",
        "enable-oslogin": "FALSE",
        "enable-guest-attributes": "TRUE",
    }
