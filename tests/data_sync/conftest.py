"""The stack's dataset token, as the roles write it on the tracker and the workers (0600), for the tests that
talk to the tracker's dataset server (toolkit.data.serve); toolkit.data.fetch finds it through
LAB_DATASETS_TOKEN_FILE, in this process and in the fetches it starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toolkit.data import fetch

TOKEN = "s3cret-token"  # noqa: S105 -- a test's token


@pytest.fixture
def token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "secrets" / "datasets.token"
    path.parent.mkdir()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{TOKEN}\n".encode())
    os.close(fd)
    monkeypatch.setenv(fetch.TOKEN_ENV, str(path))
    return path
