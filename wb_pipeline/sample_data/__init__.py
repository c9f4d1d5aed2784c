"""Deterministic synthetic sample in the Wildberries (WB school) layout.

The real dump is private, so the bundled sample is generated: seeded, sized by a parameter and
byte-identical for the same spec. See ``data/README.md`` for what it contains and why. It is a
test fixture with realistic difficulties, never a target to tune models to.
"""

from wb_pipeline.sample_data.generator import (
    GENERATOR_VERSION,
    MANIFEST_FILE,
    SampleSpec,
    ensure_sample,
    generate_catalogue,
    generate_tables,
    read_manifest,
    write_sample,
)

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_FILE",
    "SampleSpec",
    "ensure_sample",
    "generate_catalogue",
    "generate_tables",
    "read_manifest",
    "write_sample",
]
