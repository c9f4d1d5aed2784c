"""A materialized storage dir for the service's tests, and the service itself as a real process."""

from pathlib import Path

import dagster as dg
import pytest

from benchmarks.serving import ServiceProcess, multipart  # noqa: F401 (multipart: the tests' request bodies)
from wb_pipeline.sample_data import SampleSpec, write_sample

REPO_ROOT = Path(__file__).resolve().parents[2]


# Large enough for classifiers of several labels (the 160-product sample trains none: too few rows per class).
SERVED_SAMPLE = SampleSpec(n_products=600, seed=11)


@pytest.fixture(scope="session")
def served_run(shared_models_dir, tmp_path_factory):
    """`full_pipeline` on a 600-product generated sample with the REAL default encoders (e5 int8,
    EfficientNet-Lite0): its storage dir, raw dir and Dagster instance home (materialized once per session)."""
    from wb_pipeline.definitions import build_definitions

    root = tmp_path_factory.mktemp("served_run")
    small_sample_dir = root / "raw"
    write_sample(small_sample_dir, SERVED_SAMPLE)
    (root / "home").mkdir()
    defs = build_definitions(
        raw_dir=str(small_sample_dir),
        storage_dir=str(root / "storage"),
        incoming_dir=str(root / "incoming"),
        models_dir=str(shared_models_dir),
    )
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        result = defs.resolve_job_def("full_pipeline").execute_in_process(instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure][:3]
        yield {
            "defs": defs,
            "instance": instance,
            "result": result,
            "root": root,
            "storage": root / "storage",
            "models": shared_models_dir,
            "raw": small_sample_dir,
            "home": root / "home",
        }


class Service(ServiceProcess):
    """The service over a test storage dir (`benchmarks.serving.ServiceProcess`): upload limit `max_upload`,
    TMPDIR `tmp` (whatever it would spool to disk lands there; the tests check it), the Dagster instance
    `home` (none: the storage dir alone is served)."""

    def __init__(self, storage: Path, models: Path, tmp: Path, home: Path | None = None, max_upload: int = 2_000_000):
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        env = {
            "WB_PIPELINE_STORAGE_DIR": storage,
            "WB_PIPELINE_MODELS_DIR": models,
            "WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES": max_upload,
            "TMPDIR": tmp,
            "DAGSTER_HOME": home,  # None: removed
        }
        super().__init__(env, log=tmp.parent / "serve.log", cwd=REPO_ROOT)

    def wait_up(self, timeout: float = 300) -> None:
        """Until the port answers (200 or 503 from /health)."""
        self.wait(timeout, statuses=(200, 503))


@pytest.fixture(scope="module")
def service(served_run, tmp_path_factory):
    """The service over `served_run`'s storage (upload limit 2 MB), up and serving."""
    tmp = tmp_path_factory.mktemp("service") / "tmp"
    running = Service(served_run["storage"], served_run["models"], tmp, served_run["home"])
    try:
        running.wait(600)  # /health 200: the materialization is loaded
        yield running
    finally:
        running.stop()
