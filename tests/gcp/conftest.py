"""Fixtures every gcp test may use."""

from tests.gcp.gcs_refusals import gcs_says  # noqa: F401  (GCS's 403/409 answers, where the emulator has none)
