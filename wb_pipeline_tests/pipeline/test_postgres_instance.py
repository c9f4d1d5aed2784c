"""The checked-in PostgreSQL instance config (`deploy/dagster-postgres.yaml`) against a REAL PostgreSQL
server started here (initdb + pg_ctl in a temp dir, a free loopback port, password auth; as the
`postgres` user when the tests run as root). A slice of the pipeline (ingestion, preprocessing,
labels: no encoders) runs on that instance; its runs, materializations and check results are read
back through a fresh instance and, independently, with psycopg2 from the tables; the schedule storage
starts and stops the real re-embedding schedule."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from wb_pipeline import settings
from wb_pipeline.definitions import build_definitions
from wb_pipeline.defs.automation.jobs import product_drops

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INSTANCE_YAML = ROOT / "deploy" / "dagster-postgres.yaml"
DEBIAN_PACKAGE = "postgresql"
PG_USER, PG_PASSWORD, PG_DB = "wb_dagster", "wb-test-password", "wb_pipeline_dagster"
SLICE_GROUPS = ("ingestion", "preprocessing", "labels")
SCHEDULE_NAME = "reembed_new_products_schedule"


def _server_binaries() -> Path:
    """The folder holding initdb/pg_ctl/postgres: Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parent.parent.name)
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    pytest.fail(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package "
        f"`{DEBIAN_PACKAGE}` (apt-get install {DEBIAN_PACKAGE}); .ci/run does this"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_server():
    """A throw-away PostgreSQL server on 127.0.0.1 with a password-protected user and one database;
    yields the DAGSTER_PG_* connection variables. Stopped and deleted afterwards."""
    binaries = _server_binaries()
    # postgres refuses to run as root: drop to the `postgres` system user the Debian package creates
    as_server_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="wb-postgres-"))  # not under pytest's root-only tmp folders
    if os.geteuid() == 0:
        server_user = pwd.getpwnam("postgres")
        os.chown(folder, server_user.pw_uid, server_user.pw_gid)
        as_server_user = ["runuser", "-u", "postgres", "--"]
    data, log = folder / "data", folder / "server.log"
    password_file = folder / "password"
    password_file.write_text(PG_PASSWORD)
    if as_server_user:
        os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)

    def run(*command: str) -> None:
        done = subprocess.run([*as_server_user, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    port = _free_port()
    run(
        str(binaries / "initdb"),
        "-D",
        str(data),
        "-U",
        PG_USER,
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "-E",
        "UTF8",
        "--no-locale",
    )
    started = False
    try:
        # fsync off: a throw-away test server, durability is not what is tested
        run(
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off",
            "start",
        )
        started = True
        connection = psycopg2.connect(
            host="127.0.0.1", port=port, user=PG_USER, password=PG_PASSWORD, dbname="postgres"
        )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {PG_DB}")
        connection.close()
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USER": PG_USER,
            "DAGSTER_PG_PASSWORD": PG_PASSWORD,
            "DAGSTER_PG_DB": PG_DB,
        }
    finally:
        if started:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def postgres_home(postgres_server, tmp_path, monkeypatch) -> Path:
    """A DAGSTER_HOME holding the checked-in yaml, its DAGSTER_PG_* variables set."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    for name, value in postgres_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _query(server: dict, sql: str, params: tuple = ()) -> list[tuple]:
    connection = psycopg2.connect(
        host=server["DAGSTER_PG_HOST"],
        port=int(server["DAGSTER_PG_PORT"]),
        user=server["DAGSTER_PG_USER"],
        password=server["DAGSTER_PG_PASSWORD"],
        dbname=server["DAGSTER_PG_DB"],
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        connection.close()


def test_checked_in_yaml_reads_every_connection_field_from_the_environment():
    config = yaml.safe_load(INSTANCE_YAML.read_text())
    database = config["storage"]["postgres"]["postgres_db"]
    assert database.pop("scheme") == "postgresql+psycopg2"  # the driver dagster-postgres installs
    assert {field: value["env"] for field, value in database.items()} == {
        "hostname": "DAGSTER_PG_HOST",
        "port": "DAGSTER_PG_PORT",
        "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD",
        "db_name": "DAGSTER_PG_DB",
    }


def test_pipeline_slice_on_a_real_postgres_instance(
    postgres_server, postgres_home, tmp_path, small_sample_dir, shared_models_dir
):
    defs = build_definitions(
        raw_dir=str(small_sample_dir),
        storage_dir=str(tmp_path / "storage"),
        incoming_dir=str(tmp_path / "incoming"),
        models_dir=str(shared_models_dir),
    )
    selection = sorted(dg.AssetSelection.groups(*SLICE_GROUPS).resolve(defs.resolve_asset_graph()))
    with dg.DagsterInstance.get() as instance:
        storages = {
            type(s).__name__ for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        }
        assert storages == {"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
        result = defs.resolve_job_def("full_pipeline").execute_in_process(instance=instance, asset_selection=selection)
        assert result.success
        run_id = result.run_id
        checks_in_run = len(result.get_asset_check_evaluations())
    assert len(selection) >= 6 and checks_in_run > 0

    # a fresh instance from the same DAGSTER_HOME: everything comes back from the database
    with dg.DagsterInstance.from_config(str(postgres_home)) as reader:
        assert reader.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        for key in selection:
            assert reader.get_latest_materialization_event(key).run_id == run_id, key
        stored_checks = reader.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        assert len(stored_checks) == checks_in_run

    # independently of Dagster's code: the rows in PostgreSQL
    assert _query(postgres_server, "SELECT status FROM runs WHERE run_id = %s", (run_id,)) == [("SUCCESS",)]
    materialized = _query(
        postgres_server,
        "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        (run_id,),
    )
    assert sorted(key for (key,) in materialized) == sorted(key.to_string() for key in selection)
    (check_rows,) = _query(postgres_server, "SELECT count(*) FROM asset_check_executions WHERE run_id = %s", (run_id,))
    assert check_rows[0] == checks_in_run
    print(f"postgres: {len(materialized)} materializations, {checks_in_run} check evaluations of run {run_id}")


def test_schedule_state_dynamic_partitions_and_pool_limits_live_in_postgres(
    postgres_server, postgres_home, tmp_path, monkeypatch
):
    for name, folder in ((settings.STORAGE_DIR_ENV, "storage"), (settings.INCOMING_DIR_ENV, "incoming")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    # the code location as the UI and the daemon load it (here in process): the real schedule definition
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="wb_pipeline.definitions", attribute="defs")
    )
    with dg.DagsterInstance.get() as instance, origin.create_location(instance) as location:
        (repository,) = location.get_repositories().values()
        schedule = repository.get_schedule(SCHEDULE_NAME)
        assert instance.start_schedule(schedule).status == InstigatorStatus.RUNNING  # what "switch on" does
        instance.add_dynamic_partitions(product_drops.name, ["2026-11-24-batch1"])  # what the sensor does
        instance.event_log_storage.set_concurrency_slots("embedding", 2)  # `dagster instance concurrency set`

    assert _query(postgres_server, "SELECT instigator_type, status FROM instigators") == [("SCHEDULE", "RUNNING")]
    assert _query(
        postgres_server,
        "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
        (product_drops.name,),
    ) == [("2026-11-24-batch1",)]
    assert _query(postgres_server, "SELECT count(*) FROM concurrency_slots WHERE concurrency_key = 'embedding'") == [
        (2,)
    ]

    with dg.DagsterInstance.from_config(str(postgres_home)) as reader:
        (state,) = reader.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
        assert state.name == SCHEDULE_NAME and state.status == InstigatorStatus.RUNNING
        reader.stop_schedule(state.instigator_origin_id, state.selector_id, None)
        assert reader.get_dynamic_partitions(product_drops.name) == ["2026-11-24-batch1"]
        assert reader.event_log_storage.get_concurrency_info("embedding").slot_count == 2
    assert _query(postgres_server, "SELECT status FROM instigators") == [("STOPPED",)]
