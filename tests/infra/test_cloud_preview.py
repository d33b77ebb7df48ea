"""A real `pulumi preview` of the program against GCP, where the CLI and credentials exist.

These machines have neither (the CLI and the GCP plugin are downloaded binaries), so here it is
skipped with the reason; on a machine with them, set LAB_CLOUD_PROJECT to a project you may preview in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MACHINE_ENV, ROOT
from toolkit.config import stack


def _cloud_or_skip() -> tuple[str, str]:
    pulumi = shutil.which("pulumi", path=MACHINE_ENV.get("PATH"))
    if pulumi is None:
        pytest.skip("needs the Pulumi CLI on PATH (not installable on this machine)")
    project = MACHINE_ENV.get("LAB_CLOUD_PROJECT")
    if not project:
        pytest.skip("needs LAB_CLOUD_PROJECT: a GCP project to preview in, with application-default credentials")
    return pulumi, project


@pytest.mark.cloud
def test_preview_creates_the_lab(tmp_path: Path) -> None:
    pulumi, project = _cloud_or_skip()
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", work / "Pulumi.yaml")
    shutil.copytree(ROOT / "infra", work / "infra")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = dict(stack.read(str(ROOT / "Pulumi.dev.yaml")).raw)
    config.update({"gcp:project": project, "lab:sshPublicKeyPath": f"{key}.pub", "lab:workers": 1})
    lines = ["config:"] + [f"  {k}: {json.dumps(v)}" for k, v in config.items()]
    (work / "Pulumi.ci.yaml").write_text("\n".join(lines) + "\n")
    env = {**MACHINE_ENV, "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}", "PULUMI_CONFIG_PASSPHRASE": "ci"}
    (tmp_path / "state").mkdir()

    def pulumi_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [pulumi, *args, "--non-interactive"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    assert pulumi_run("stack", "init", "ci").returncode == 0
    done = pulumi_run("preview", "--json", "--stack", "ci")
    assert done.returncode == 0, done.stderr[-2000:]
    steps = json.loads(done.stdout)["steps"]
    created = {step["urn"].split("::")[-2].split("$")[-1] for step in steps if step["op"] == "create"}
    assert {
        "gcp:storage/bucket:Bucket",
        "gcp:compute/instance:Instance",
        "gcp:compute/firewall:Firewall",
        "gcp:serviceaccount/account:Account",
        "gcp:storage/bucketIAMMember:BucketIAMMember",
    } <= created
