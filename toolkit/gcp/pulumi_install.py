"""`lab doctor --install-pulumi`: the Pulumi CLI for users who have none, put under LAB_HOME.

The Automation API's own installer (`PulumiCommand.install`) downloads get.pulumi.com's install script and
runs it with an install root; the version is pinned to the pulumi SDK installed with lab, the pairing
Pulumi supports. `toolkit.gcp.pulumi_engine.find_cli` looks there when no `pulumi` is on PATH.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
        from toolkit.labs.prerequisites import install_command

        raise LabError(
            "the pulumi SDK is not installed, so there is no version to match", hint=install_command("gcp")
        ) from None


def _usable(path: Path) -> str | None:
    """The version of a CLI new enough for the lab, or None."""
    from toolkit.labs.prerequisites import MIN_PULUMI, pulumi_version

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
