"""Folders every benchmark shares.

`MODELS_DIR` is the main run's encoder models folder (`WB_PIPELINE_MODELS_DIR`, else
`<storage dir>/models`, as `make run` and `make eval` use it): the e5 conversion and the ONNX exports
are ~1.3 GB and minutes of CPU, so they are made once per machine, never once per benchmark.
"""

from __future__ import annotations

from pathlib import Path

from wb_pipeline import settings

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
MODELS_DIR = Path(settings.layout().encoder_models)
