"""`lab up --preview` changes nothing and says what `up` would do, on each target it can say it without the cloud:
local (no process, nothing under LAB_HOME), ssh (no host reached, no playbook run), and a budget `up` would refuse
(shown as part of the preview, exit 0). The gcp preview is Pulumi's (tests/gcp)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from toolkit.cost import prices, uptime

GPU = [prices.PriceLine("host", "gpu-box", 2, 3.0)]  # $6 an hour


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A project folder whose dev stack has the keys given."""

    def write(**keys: object) -> Path:
        folder = tmp_path / "project"
        folder.mkdir(exist_ok=True)
        (folder / "Pulumi.yaml").write_text("name: lab\nruntime: python\n")
        lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in keys.items())
        (folder / "Pulumi.dev.yaml").write_text("config:\n" + lines)
        monkeypatch.setenv("LAB_PROJECT_DIR", str(folder))
        return folder

    return write


def everything(home: Path) -> dict[str, float]:
    return {str(p.relative_to(home)): p.stat().st_mtime for p in home.rglob("*")} if home.exists() else {}


def test_the_local_preview_starts_nothing_and_writes_nothing(lab, project, isolated):
    project(**{"lab:target": "local"})
    home = isolated / ".lab"
    home.mkdir(exist_ok=True)
    before = everything(home)
    started = time.monotonic()
    ran = lab("up", "--preview", "--local", "--port", "5123", "--json")
    assert ran.code == 0, ran.err
    assert time.monotonic() - started < 20
    document = json.loads(ran.out)
    assert document["preview"] is True and document["refused"] is None
    assert document["services"]["mlflow"] == {"action": "start", "url": "http://127.0.0.1:5123"}
    assert document["services"]["jupyter"]["action"] == "start" and document["state_dir"].startswith(str(home))
    assert everything(home) == before, "nothing under LAB_HOME was written (no records, logs, DBs or uptime)"
    shown = lab("up", "--preview", "--local", "--no-jupyter")
    assert shown.code == 0, shown.err
    assert "nothing was started or written" in shown.out and "would start on http://127.0.0.1:5000" in shown.out
    assert "jupyter" not in shown.out
    assert everything(home) == before


def test_the_ssh_preview_reaches_no_host(lab, project, isolated):
    # TEST-NET-1 (RFC 5737): nothing answers there, so a preview that tried to connect would hang or fail.
    key = isolated / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    project(
        **{
            "lab:target": "ssh",
            "lab:trackerHost": "192.0.2.10",
            "lab:workerHosts": ["192.0.2.11"],
            "lab:sshPublicKeyPath": f"{key}.pub",
        }
    )
    started = time.monotonic()
    ran = lab("up", "--preview", "--json")
    assert ran.code == 0, ran.err
    assert time.monotonic() - started < 20, "no host was reached"
    document = json.loads(ran.out)
    assert [(h["address"], h["role"]) for h in document["hosts"]] == [
        ("192.0.2.10", "tracker"),
        ("192.0.2.11", "worker"),
    ]
    assert not (isolated / ".lab" / "stacks" / "dev" / "uptime.json").exists(), "no uptime was recorded"
    assert uptime.periods("dev") == []
    shown = lab("up", "--preview")
    assert "no host was reached" in shown.out and "site playbook" in shown.out


def test_a_budget_up_would_refuse_is_shown_by_the_preview(lab, project, isolated):
    project(**{"lab:target": "local", "lab:budgetUsd": 5})
    uptime.record_up("dev", GPU, now=time.time() - 3600)  # $6 of $5 spent, and the lab still counted as up
    before = everything(isolated / ".lab")
    ran = lab("up", "--preview", "--local", "--json")
    assert ran.code == 0, ran.err  # a preview: it says what `up` would do
    assert "the budget is spent" in json.loads(ran.out)["refused"]
    shown = lab("up", "--preview", "--local")
    assert shown.code == 0 and "`lab up` would refuse: the budget is spent" in shown.out, shown.out
    assert everything(isolated / ".lab") == before
    refused = lab("up", "--local")
    assert refused.code == 1 and "the budget is spent" in refused.err and "nothing was started" in refused.err
