from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra.program import INFRA, ProgramRun, run_program
from toolkit.config import stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    public = tmp_path / "id_ed25519.pub"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhYnRlc3RrZXlsYWJ0ZXN0a2V5bGFidGVzdGtleQ lab@test\n")
    return public


@pytest.fixture
def dev_config(ssh_key: Path) -> dict[str, Any]:
    """The shipped Pulumi.dev.yaml, with the test's SSH key."""
    raw = dict(stack.read(str(ROOT / "Pulumi.dev.yaml")).raw)
    raw["lab:sshPublicKeyPath"] = str(ssh_key)
    return raw


@pytest.fixture
def run(dev_config: dict[str, Any]) -> Callable[..., ProgramRun]:
    """Run the lab's two programs on the dev stack with some keys changed (None removes a key): the persistent
    stack's (infra/persistent/: the bucket), then the lab stack's (infra/), as `lab up` runs them; their resources
    together, the lab stack's outputs."""

    def runner(**changes: Any) -> ProgramRun:
        config = dict(dev_config)
        for name, value in changes.items():
            key = "lab:" + name if ":" not in name else name
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        kept = run_program(config, program=INFRA / "persistent", project="lab-persistent")
        lab = run_program(config)
        return ProgramRun(resources=kept.resources + lab.resources, outputs=lab.outputs)

    return runner
