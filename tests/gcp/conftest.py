"""Fixtures every gcp test may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gcp.fake_gcp_api import FakeGcp, Served
from tests.gcp.gcs_refusals import gcs_says  # noqa: F401  (GCS's 403/409 answers, where the emulator has none)


@pytest.fixture
def fake_gcp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcp]:
    """The Google Cloud REST stand-in (tests/gcp/fake_gcp_api.py) on a free port, with LAB_COMPUTE_API,
    LAB_SERVICEUSAGE_API and LAB_RESOURCEMANAGER_API pointing at it (toolkit.gcp_api then calls it without
    credentials)."""
    with Served() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        yield fake
