"""End to end through the Dagster UI: `dagster dev` on a fresh instance over the small sample, driven
by a real headless Chromium. The UI must list every definition of the code location, and a
materialization of the ingestion group launched by clicking in the UI must succeed, be recorded in
the instance and show its metadata on the asset page. Screenshots go to `test-artifacts/ui/`."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from wb_pipeline.core.data import schema
from wb_pipeline.definitions import build_definitions
from wb_pipeline_tests import browser as ui

pytestmark = pytest.mark.slow

LOCATION = "wb_pipeline.definitions:defs"  # the name dagster gives the workspace.yaml entry
SLICE_GROUP = "ingestion"  # the cheap group materialized from the UI
PAGE_WAIT_S = 60
RUN_WAIT_S = 600  # one process per step (the UI's default executor): ~12 steps x 5-15 s of start-up under load
# The slice's tables and the raw file each one reads (its metadata names the file and its row count).
TABLE_FILES = {"raw_products_train": schema.TRAIN_FILE, "raw_products_test": schema.TEST_FILE}


@pytest.fixture(scope="module")
def ui_dirs(tmp_path_factory, small_sample_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ui")
    dirs = {"raw": small_sample_dir}
    for name in ("dagster_home", "storage", "incoming", "matplotlib", "chromium_profile"):
        dirs[name] = root / name
        dirs[name].mkdir()
    shutil.copyfile(ui.REPO_ROOT / "deploy" / "dagster.yaml", dirs["dagster_home"] / "dagster.yaml")
    dirs["server_log"] = root / "dagster_dev.log"
    return dirs


@pytest.fixture(scope="module")
def dagster_ui(ui_dirs):
    """`dagster dev` serving the repo's workspace.yaml on a free port, on a fresh instance, reading the
    small sample and writing into temporary folders. Stopped (whole process group) at teardown."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WB_PIPELINE_")},
        "DAGSTER_HOME": str(ui_dirs["dagster_home"]),
        "WB_PIPELINE_RAW_DIR": str(ui_dirs["raw"]),
        "WB_PIPELINE_STORAGE_DIR": str(ui_dirs["storage"]),
        "WB_PIPELINE_INCOMING_DIR": str(ui_dirs["incoming"]),
        "MPLCONFIGDIR": str(ui_dirs["matplotlib"]),
    }
    with ui.DagsterDevServer(ui.REPO_ROOT / "workspace.yaml", env, ui_dirs["server_log"]) as server:
        yield server  # readiness is awaited by `ready_ui`, so the definitions build meanwhile


@pytest.fixture(scope="module")
def pipeline_defs(ui_dirs, dagster_ui) -> dg.Definitions:
    """The same definitions the server loads (same folders), for the expected names."""
    return build_definitions(
        raw_dir=str(ui_dirs["raw"]), storage_dir=str(ui_dirs["storage"]), incoming_dir=str(ui_dirs["incoming"])
    )


@pytest.fixture(scope="module")
def ready_ui(dagster_ui, pipeline_defs):
    dagster_ui.wait_ready(timeout_s=180)
    return dagster_ui


@pytest.fixture(scope="module")
def driver(ui_dirs, ready_ui):
    chromium = ui.chromium_driver(ui_dirs["chromium_profile"])
    try:
        yield chromium
    finally:
        chromium.quit()


def _open(driver, server, path: str) -> None:
    driver.get(f"{server.url}{path}")


def test_ui_lists_every_asset_group_job_schedule_and_sensor(ready_ui, driver, pipeline_defs):
    asset_graph = pipeline_defs.resolve_asset_graph()
    asset_names = {node.key.to_user_string() for node in asset_graph.asset_nodes}
    group_names = {node.group_name for node in asset_graph.asset_nodes}
    job_names = {job.name for job in pipeline_defs.jobs}
    automation_names = {s.name for s in pipeline_defs.schedules} | {s.name for s in pipeline_defs.sensors}
    assert {"full_pipeline", "reembed_new_products"} <= job_names and automation_names

    with ui.failure_artifacts(driver, "definitions", ready_ui):
        _open(driver, ready_ui, "/assets")
        ui.dismiss_community_dialog(driver, ready_ui)
        assert not ready_ui.graphql("{ shouldShowNux }")["shouldShowNux"], "the community dialog would come back"
        shown: set[str] = set()

        def every_asset_listed(_driver) -> bool:
            shown.update(ui.catalog_asset_names(_driver))
            return asset_names <= shown

        try:  # the catalog streams asset data in: re-read the whole list until every name is there
            WebDriverWait(driver, PAGE_WAIT_S, poll_frequency=1).until(every_asset_listed)
        except TimeoutException:
            pytest.fail(f"asset catalog lacks {sorted(asset_names - shown)}")
        assert LOCATION in ui.body_lines(driver)
        ui.screenshot(driver, "asset_catalog")

        _open(driver, ready_ui, "/asset-groups")
        ui.wait_for_lines(driver, group_names, PAGE_WAIT_S, "asset groups on the global lineage page")
        ui.screenshot(driver, "asset_graph")

        _open(driver, ready_ui, "/jobs")
        ui.wait_for_lines(driver, job_names, PAGE_WAIT_S, "jobs page")

        _open(driver, ready_ui, "/automation")
        ui.wait_for_lines(driver, automation_names, PAGE_WAIT_S, "automation page")
        ui.screenshot(driver, "automation")


def _wait_for_launched_run(driver, server) -> dict:
    """The one run the click launched; fails with what is on screen when no run appears (e.g. a
    launchpad opened because an asset now needs config without a default)."""
    try:
        return WebDriverWait(driver, PAGE_WAIT_S, poll_frequency=0.5).until(lambda d: (server.runs() or [None])[0])
    except TimeoutException:
        pytest.fail(
            "clicking 'Materialize all' launched no run; page shows: "
            + driver.find_element(By.TAG_NAME, "body").text[-1500:]
        )


def _wait_for_run_end(driver, server, run_id: str) -> str:
    statuses = {}

    def finished(_driver):
        statuses.update({run["runId"]: run["status"] for run in server.runs()})
        return statuses[run_id] in ui.TERMINAL_RUN_STATUSES

    try:
        WebDriverWait(driver, RUN_WAIT_S, poll_frequency=1).until(finished)
    except TimeoutException:
        pytest.fail(f"run {run_id} still {statuses.get(run_id)} after {RUN_WAIT_S} s; server log:\n{server.log_tail()}")
    return statuses[run_id]


def _shown_row_count(driver) -> str:
    """The value under 'Row count' in the asset page's status panel ('' while absent)."""
    cells = driver.find_elements(By.XPATH, "//span[normalize-space()='Row count']/..")
    return cells[0].text.replace("Row count", "").strip() if cells else ""


def test_ui_materializes_the_ingestion_group(ready_ui, driver, pipeline_defs, ui_dirs):
    asset_graph = pipeline_defs.resolve_asset_graph()
    slice_keys = sorted(
        (node.key for node in asset_graph.asset_nodes if node.group_name == SLICE_GROUP),
        key=lambda key: key.to_user_string(),
    )
    slice_names = [key.to_user_string() for key in slice_keys]
    assert set(TABLE_FILES) <= set(slice_names)
    table_rows = {name: len(pd.read_parquet(ui_dirs["raw"] / file_name)) for name, file_name in TABLE_FILES.items()}
    assert ready_ui.runs() == [], "the fresh instance already has runs"

    with ui.failure_artifacts(driver, "materialize", ready_ui):
        # The group's lineage graph: every asset of the group drawn, then "Materialize all".
        _open(driver, ready_ui, f"/locations/{LOCATION}/asset-groups/{SLICE_GROUP}")
        ui.dismiss_community_dialog(driver, ready_ui)
        ui.wait_for_graph_nodes(driver, slice_names, PAGE_WAIT_S, f"assets of the {SLICE_GROUP} group graph")
        ui.screenshot(driver, f"{SLICE_GROUP}_group_graph")
        started = time.monotonic()
        WebDriverWait(driver, PAGE_WAIT_S).until(
            ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Materialize all']"))
        ).click()

        run = _wait_for_launched_run(driver, ready_ui)
        run_id = run["runId"]
        assert sorted("/".join(key["path"]) for key in run["assetSelection"]) == slice_names
        status = _wait_for_run_end(driver, ready_ui, run_id)
        print(f"run {run_id}: {status} {time.monotonic() - started:.1f} s after the click")
        assert status == "SUCCESS", f"run {run_id} ended {status}; server log:\n{ready_ui.log_tail()}"

        # The run page shows the run as successful.
        _open(driver, ready_ui, f"/runs/{run_id}")
        ui.wait_for_lines(driver, ["Success", f"{len(slice_names)} assets", "STEP_SUCCESS"], PAGE_WAIT_S, "run page")
        WebDriverWait(driver, PAGE_WAIT_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "[aria-label='run_success']")
        )
        ui.screenshot(driver, "run_success")

        # The instance on disk has a materialization of every asset of the slice from that run.
        instance = dg.DagsterInstance.from_config(str(ui_dirs["dagster_home"]))
        try:
            recorded = {}
            for key in slice_keys:
                event = instance.get_latest_materialization_event(key)
                assert event is not None, f"{key.to_user_string()} has no materialization"
                assert event.run_id == run_id
                recorded[key.to_user_string()] = event.asset_materialization.metadata["dagster/row_count"].value
        finally:
            instance.dispose()
        for name, n_rows in table_rows.items():
            assert recorded[name] == n_rows, f"{name}: {recorded[name]} rows recorded, the file has {n_rows}"

        # Each asset page renders the materialization's metadata: the row count, and for the tables
        # the source file and the rows-by-batch table.
        for name in slice_names:
            _open(driver, ready_ui, f"/assets/{name}")
            expected_count = f"{recorded[name]:,}"
            try:
                WebDriverWait(driver, PAGE_WAIT_S, poll_frequency=0.5).until(
                    lambda d: _shown_row_count(d) == expected_count
                )
            except TimeoutException:
                pytest.fail(f"{name} page shows row count {_shown_row_count(driver)!r}, expected {expected_count}")
            assert "Never materialized" not in ui.body_lines(driver)
            if name in TABLE_FILES:
                source = str(ui_dirs["raw"] / TABLE_FILES[name])
                ui.wait_for_lines(
                    driver, ["Metadata", "source", source, "rows_by_batch", "columns"], PAGE_WAIT_S, f"{name} metadata"
                )
                batch_row = f"//tr[td[normalize-space()='main'] and td[normalize-space()='{table_rows[name]}']]"
                assert driver.find_elements(By.XPATH, batch_row), f"{name}: rows_by_batch table not rendered"
            if name == "raw_products_train":
                ui.screenshot(driver, "raw_products_train_materialized")
