"""`lab doctor --install-pulumi`: the Automation API's installer into LAB_HOME/pulumi-cli, and doctor finding it.

These machines cannot reach get.pulumi.com, so the download failure is tested for real here; the real
install is a `cloud` test for machines that can. Where a CLI must already exist, a script answers
`pulumi version` as the real one does (the real CLI cannot be installed here).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
from pathlib import Path

import pytest

from tests.conftest import MACHINE_ENV

MANUAL = "; check your network or install it by hand: https://www.pulumi.com/docs/install/"
SDK = importlib.metadata.version("pulumi")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fake_cli(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cli = folder / "pulumi"
    cli.write_text(f'#!/bin/sh\n[ "$1" = version ] && echo {version}\n')
    cli.chmod(0o755)
    return cli


def reachable(host: str, port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


@pytest.fixture
def cli_root(isolated: Path) -> Path:
    return isolated / ".lab" / "pulumi-cli"


@pytest.fixture
def no_pulumi_on_path() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin"}


def test_no_network_is_one_line(lab, cli_root, no_pulumi_on_path):
    if reachable("get.pulumi.com"):
        pytest.skip("get.pulumi.com is reachable here: the cloud test installs for real")
    ran = lab("doctor", "--install-pulumi", env=no_pulumi_on_path)
    assert ran.code == 1
    *_, last = ran.err.strip().splitlines()
    assert last.startswith("error: could not download the Pulumi CLI from get.pulumi.com: ")
    assert last.endswith(MANUAL)
    assert f"downloading the Pulumi CLI v{SDK} from get.pulumi.com into {cli_root}" in ran.err
    assert not (cli_root / "bin" / "pulumi").exists()


def test_a_network_that_refuses_is_one_line(lab, cli_root, no_pulumi_on_path):
    # Through a proxy nothing listens on: the same failure on any machine, networked or not.
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {**no_pulumi_on_path, "https_proxy": proxy, "HTTPS_PROXY": proxy}
    ran = lab("doctor", "--install-pulumi", env=env)
    assert ran.code == 1
    last = ran.err.strip().splitlines()[-1]
    assert (
        last == f"error: could not download the Pulumi CLI from get.pulumi.com: [Errno 111] Connection refused{MANUAL}"
    )
    assert not (cli_root / "bin" / "pulumi").exists()


def test_already_installed_under_lab_home(lab, cli_root, no_pulumi_on_path):
    cli = fake_cli(cli_root / "bin", f"v{SDK}")
    proxy = f"http://127.0.0.1:{closed_port()}"  # would fail any download attempt
    ran = lab("doctor", "--install-pulumi", env={**no_pulumi_on_path, "https_proxy": proxy})
    assert ran.code == 0, ran.err
    assert ran.out.strip() == f"the Pulumi CLI v{SDK} is already installed at {cli}"


def test_already_on_path(lab, tmp_path, cli_root):
    cli = fake_cli(tmp_path / "bin", "v3.200.1")
    ran = lab("doctor", "--install-pulumi", env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert ran.code == 0, ran.err
    assert ran.out.strip() == f"the Pulumi CLI v3.200.1 is already installed at {cli}"
    assert not cli_root.exists()


def test_too_old_a_cli_is_not_enough(lab, tmp_path):
    fake_cli(tmp_path / "bin", "v3.99.0")
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "https_proxy": proxy}
    ran = lab("doctor", "--install-pulumi", env=env)
    assert ran.code == 1  # it tried to download a new one
    assert "could not download the Pulumi CLI from get.pulumi.com" in ran.err


def test_doctor_finds_the_cli_under_lab_home(lab, cli_root, no_pulumi_on_path):
    missing = json.loads(lab("doctor", "--target", "gcp", "--json", env=no_pulumi_on_path).out)
    check = {c["name"]: c for c in missing["checks"]}["pulumi CLI"]
    assert not check["ok"]
    assert check["detail"] == f"not on PATH nor in {cli_root / 'bin'}"
    assert check["fix"].startswith("lab doctor --install-pulumi")
    cli = fake_cli(cli_root / "bin", f"v{SDK}")
    found = json.loads(lab("doctor", "--target", "gcp", "--json", env=no_pulumi_on_path).out)
    check = {c["name"]: c for c in found["checks"]}["pulumi CLI"]
    assert check["ok"]
    assert check["detail"] == f"v{SDK} at {cli}"


@pytest.mark.cloud
def test_real_install(lab, cli_root, no_pulumi_on_path):
    if not reachable("get.pulumi.com"):
        pytest.skip("needs get.pulumi.com (no network to it from this machine)")
    env = {**no_pulumi_on_path}
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        if name in MACHINE_ENV:
            env[name] = MACHINE_ENV[name]
    ran = lab("doctor", "--install-pulumi", env=env, timeout=600)
    assert ran.code == 0, ran.err
    cli = cli_root / "bin" / "pulumi"
    assert ran.out.startswith(f"installed the Pulumi CLI v{SDK} at {cli}")
    again = lab("doctor", "--install-pulumi", env=env)
    assert again.out.strip() == f"the Pulumi CLI v{SDK} is already installed at {cli}"
    assert os.access(cli, os.X_OK)
