"""Fixtures every gcp test may use."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gcp.fake_gcp_api import FakeGcp, Served
from tests.gcp.gcp_vms import OUTPUTS, RESOURCES
from tests.gcp.gcs_refusals import gcs_says  # noqa: F401  (GCS's 403/409 answers, where the emulator has none)


@pytest.fixture
def fake_gcp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcp]:
    """The Google Cloud REST stand-in (tests/gcp/fake_gcp_api.py) on a free port, with LAB_COMPUTE_API,
    LAB_SERVICEUSAGE_API and LAB_RESOURCEMANAGER_API pointing at it (toolkit.gcp.api then calls it without
    credentials)."""
    with Served() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        yield fake


@pytest.fixture
def lab_state(isolated: Path) -> Path:
    """A gcp lab that is up (stack dev): a real SSH key for the lab, and the checkpoint of its last `lab up`."""
    from tests.gcp.pulumi_fakes import write_checkpoint

    ssh_dir = isolated / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "id_ed25519")], check=True)
    backend = isolated / ".lab" / "pulumi"
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    return backend


@pytest.fixture(autouse=True)
def said_afresh() -> None:
    """Each test hears the once-only lines of toolkit.labs.ssh again."""
    from toolkit.labs import ssh as remote_lab

    remote_lab._SAID.clear()
