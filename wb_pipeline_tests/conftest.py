"""Shared fixtures: small generated WB samples, models built once per session, Dagster definitions
over temporary folders."""

from pathlib import Path

import dagster as dg
import pytest

from wb_pipeline.sample_data import SampleSpec, write_sample

SMALL_SAMPLE = SampleSpec(n_products=160, seed=11)


@pytest.fixture(scope="session")
def small_sample_dir(tmp_path_factory) -> Path:
    """A 160-product WB-layout sample with images and every defect kind (read-only for tests)."""
    folder = tmp_path_factory.mktemp("wb_sample") / "raw"
    write_sample(folder, SMALL_SAMPLE)
    return folder


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    """Converted / exported models, shared by every pipeline test of the session (built once)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture()
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        yield test_instance
