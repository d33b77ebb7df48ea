"""`lab doctor --install-pulumi`: the Pulumi CLI for users who have none, put under LAB_HOME.

The Automation API's own installer (`PulumiCommand.install`) downloads get.pulumi.com's install script and
runs it with an install root; the version is pinned to the pulumi SDK installed with lab, the pairing
Pulumi supports. `toolkit.gcp.pulumi_engine.find_cli` looks there when no `pulumi` is on PATH.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit import proc
from toolkit.config import paths
from toolkit.errors import LabError

DOWNLOAD_TIMEOUT_S = 60.0
MANUAL = "check your network or install it by hand: https://www.pulumi.com/docs/install/"


@dataclass(frozen=True)
class Installed:
    """Where the CLI is, its version, and whether this run put it there."""

    path: Path
    version: str
    fresh: bool


def sdk_version() -> str:
    """The version of the pulumi SDK in this Python: the CLI version to install."""
    import importlib.metadata

    try:
        return importlib.metadata.version("pulumi")
    except importlib.metadata.PackageNotFoundError:
        from toolkit.config.paths import install_command

        raise LabError(
            "the pulumi SDK is not installed, so there is no version to match", hint=install_command("gcp")
        ) from None


def _usable(path: Path) -> str | None:
    """The version of a CLI new enough for the lab, or None."""

    version, _ = pulumi_version(str(path))
    return ".".join(map(str, version)) if version is not None and version >= MIN_PULUMI else None


def install(say: Callable[[str], None]) -> Installed:
    """Install the CLI into paths.pulumi_cli_root() unless a usable one is already found; one-line errors."""
    import subprocess
    import urllib.error

    from toolkit.gcp.pulumi_engine import find_cli

    found = find_cli()
    if found is not None:
        version = _usable(found)
        if version is not None:
            return Installed(found, version, fresh=False)
    wanted = sdk_version()
    root = paths.pulumi_cli_root()
    from pulumi.automation import PulumiCommand
    from semver import Version

    say(f"downloading the Pulumi CLI v{wanted} from get.pulumi.com into {root} ...")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib would otherwise wait forever on a silent network
    try:
        PulumiCommand.install(root=str(root), version=Version.parse(wanted))
    except urllib.error.URLError as exc:
        raise LabError(f"could not download the Pulumi CLI from get.pulumi.com: {exc.reason}", hint=MANUAL) from None
    except TimeoutError as exc:
        raise LabError(f"could not download the Pulumi CLI from get.pulumi.com: {exc}", hint=MANUAL) from None
    except subprocess.CalledProcessError as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else str(exc.output or "")
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        raise LabError(
            f"could not download the Pulumi CLI from get.pulumi.com: its installer exited {exc.returncode}: {last}",
            hint=MANUAL,
        ) from None
    except OSError as exc:
        raise LabError(f"could not install the Pulumi CLI into {root}: {exc}", hint=MANUAL) from None
    finally:
        socket.setdefaulttimeout(previous)
    binary = root / "bin" / "pulumi"
    version = _usable(binary)
    if version is None:
        raise LabError(f"the Pulumi installer finished but {binary} does not report a usable version", hint=MANUAL)
    return Installed(binary, version, fresh=True)


MIN_PULUMI = (3, 150, 0)


def pulumi_version(path: str) -> tuple[tuple[int, ...] | None, str]:
    """The version a Pulumi CLI reports, or None and why it could not tell."""
    try:
        result = proc.run([path, "version"], timeout=30)
    except LabError as exc:
        return None, f"{path} does not run: {exc.one_line()}"
    except OSError as exc:  # not executable, not a program (ENOEXEC), a broken interpreter line
        return None, f"{path} does not run: {exc.strerror or exc}"
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", result.stdout)
    if not match:
        shown = result.stdout.strip()[:60] or result.stderr.strip()[:60]
        return None, f"{path} printed no version: {shown!r}"
    return tuple(int(p) for p in match.groups()), ""


def pulumi_problem(path: str) -> tuple[tuple[int, ...] | None, str]:
    """The CLI's version, and what makes it unusable for the lab ("" when nothing does)."""
    version, problem = pulumi_version(path)
    if version is None:
        return None, problem
    if version < MIN_PULUMI:
        text, need = ".".join(map(str, version)), ".".join(map(str, MIN_PULUMI))
        return version, f"{path} is v{text}; the lab needs v{need} or newer"
    return version, ""


def pulumi_fix(path: Path) -> str:
    """How to get a working CLI instead of the one at `path`."""
    installed = paths.pulumi_cli_root() / "bin" / "pulumi"
    if path == installed:
        return f"reinstall it: rm -rf {paths.pulumi_cli_root()} && lab doctor --install-pulumi"
    return (
        f"{path} is the first `pulumi` on PATH: repair or remove it (pulumi self-update, or "
        "curl -fsSL https://get.pulumi.com | sh), or put a working one before it on PATH"
    )
