"""Jobs, schedules and sensors."""

from __future__ import annotations

import dagster as dg

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all(),
    description="Materialize the whole asset graph (with its asset checks) from the raw WB files.",
)
