"""A new stack file from answers: which flag sets which key, the checks, and the commented YAML `lab init` writes.

The answers are raw key/value pairs, judged by `schema.resolve` exactly as `lab config validate` judges the
file afterwards. Nothing heavy is imported here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolkit.config import schema
from toolkit.errors import EXIT_USAGE, LabError

# The flag of `lab init` that sets each key it writes.
FLAGS: dict[str, str] = {
    "lab:target": "--target",
    "gcp:project": "--project",
    "gcp:region": "--region",
    "gcp:zone": "--zone",
    "lab:zones": "--zones",
    "lab:workers": "--workers",
    "lab:workerMachineType": "--worker-machine-type",
    "lab:allowedSshCidrs": "--ssh-cidr",
    "lab:stateBackend": "--state-backend",
    "lab:secretsProvider": "--secrets-provider",
    "lab:trackerHost": "--tracker-host",
    "lab:workerHosts": "--worker-host",
}

# Keys only some targets use: a flag for one of them with another target is a mistake worth saying.
ONLY_FOR: dict[str, tuple[str, ...]] = {
    "gcp:project": ("gcp",),
    "gcp:region": ("gcp",),
    "gcp:zone": ("gcp",),
    "lab:zones": ("gcp",),
    "lab:workers": ("gcp",),
    "lab:workerMachineType": ("gcp",),
    "lab:allowedSshCidrs": ("gcp",),
    "lab:stateBackend": ("gcp",),
    "lab:secretsProvider": ("gcp",),
    "lab:trackerHost": ("ssh",),
    "lab:workerHosts": ("ssh",),
}

_ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")


def region_of(zone: str) -> str | None:
    """us-central1-a -> us-central1; None for text that is not a zone name."""
    match = _ZONE.match(zone)
    return match.group(1) if match else None


def labelled(key: str) -> str:
    """A key with the flag that sets it: `gcp:zone (--zone)`."""
    flag = FLAGS.get(key)
    return f"{key} ({flag})" if flag else key


def misplaced(raw: Mapping[str, Any], target: str) -> list[str]:
    """Flags given for keys this target does not use."""
    return [FLAGS[key] for key, targets in ONLY_FOR.items() if key in raw and target not in targets]


def missing_required(raw: Mapping[str, Any], target: str) -> list[str]:
    """Keys this target requires that the answers lack, as `key (--flag)`."""
    found = []
    for key in schema.KEYS:
        if target in key.required_for and raw.get(key.name) in (None, "", (), []):
            if key.name == "gcp:region" and not raw.get("gcp:zone"):
                continue  # --zone gives the region; asking for both would say the same thing twice
            found.append(labelled(key.name))
    return found


def problems(raw: Mapping[str, Any], stack: str) -> list[schema.Problem]:
    """Everything `lab config validate` would say about these answers."""
    return schema.resolve(raw, stack=stack).problems


def render(raw: Mapping[str, Any], stack: str) -> str:
    """The stack file: a header, then each key with its meaning as a comment, in the order of schema.KEYS."""
    target = raw.get("lab:target", "gcp")
    lines = [
        f"# The {stack} stack, written by `lab init`. Every key is documented in Pulumi.yaml;",
        f"# `lab config show --stack {stack}` lists the others with their defaults.",
        f"# After an edit: `lab config validate --stack {stack}`.",
    ]
    if target == "gcp" and raw.get("lab:secretsProvider", "passphrase") == "passphrase":
        lines.append("# Pulumi's secrets use a passphrase: set PULUMI_CONFIG_PASSPHRASE_FILE (a 0600 file) or")
        lines.append("# PULUMI_CONFIG_PASSPHRASE before `lab up`.")
    lines.append("config:")
    for key in schema.KEYS:
        if key.name not in raw:
            continue
        lines.append(f"  # {key.doc}")
        value = raw[key.name]
        if isinstance(value, (list, tuple)):
            lines.append(f"  {key.name}:" + (" []" if not value else ""))
            lines.extend(f"    - {_scalar(item)}" for item in value)
        else:
            lines.append(f"  {key.name}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    """One value as YAML, quoted only where YAML needs it."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").strip()


def write(path: Path, text: str, *, force: bool) -> None:
    """Write the stack file; an existing one is replaced (atomically) only with --force, keeping the keys
    Pulumi wrote into it (the passphrase's encryptionsalt: without it the stack's secrets cannot be read)."""
    from toolkit.config import stack

    try:
        if force:
            text = stack.keep_pulumi_keys(path, text)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(path)
        else:
            with path.open("x", encoding="utf-8") as handle:
                handle.write(text)
    except FileExistsError:
        raise refuse_overwrite(path) from None
    except OSError as exc:
        raise LabError(f"cannot write {path}: {exc.strerror}") from None


def refuse_overwrite(path: Path) -> LabError:
    return LabError(
        f"{path} already exists; lab init does not overwrite a stack file",
        hint="pass --force to replace it, or choose another --stack",
    )


def usage_error(message: str, hint: str | None = None) -> LabError:
    return LabError(message, hint=hint, code=EXIT_USAGE)


def split_answer(answer: str) -> list[str]:
    """A list answered in one line: comma- or space-separated (`a, b c` -> [a, b, c])."""
    return [part for part in re.split(r"[,\s]+", answer) if part]


def number_answer(answer: str) -> Any:
    """A whole number answered as text, else the text (the schema then names what is wrong with it)."""
    return int(answer) if re.fullmatch(r"-?\d+", answer.strip()) else answer
