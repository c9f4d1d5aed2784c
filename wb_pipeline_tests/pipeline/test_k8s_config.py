"""The Kubernetes deployment files under deploy/k8s/, validated OFFLINE: nothing here talks to a cluster,
and nothing in this project has been run on one. What can be checked without a cluster is checked
with the libraries that will read the files: dagster's instance and workspace schemas,
dagster-k8s's run launcher and executor schemas, the job's own run config schema, and the
Kubernetes Job object dagster-k8s would submit for a step pod."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import process_workspace_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from dagster_postgres import DagsterPostgresStorage

from wb_pipeline.engines import MODELS_DIR_ENV, k8s_definitions

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
POSTGRES_YAML = K8S_DIR.parent / "dagster-postgres.yaml"
PG_ENV = {
    "DAGSTER_PG_HOST": "db.example",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_DB": "dagster",
}
GPU = "nvidia.com/gpu"


def _yaml(name: str) -> dict:
    return yaml.safe_load((K8S_DIR / name).read_text())


@pytest.fixture(scope="module")
def k8s_full_pipeline() -> dg.JobDefinition:
    return k8s_definitions().resolve_job_def("full_pipeline")


def _assert_valid(schema, value, what: str):
    result = process_config(resolve_to_config_type(schema), value)
    assert result.success, f"{what}: {[error.message for error in result.errors]}"
    return result.value


def test_instance_yaml_passes_dagster_and_dagster_k8s_schemas(tmp_path, monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    shutil.copy(K8S_DIR / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # what DagsterInstance.get() validates first
    launcher = config["run_launcher"]
    assert class_from_code_pointer(launcher["module"], launcher["class"]) is K8sRunLauncher
    launcher_config = _assert_valid(K8sRunLauncher.config_type(), launcher["config"], "run_launcher")
    assert launcher_config["instance_config_map"] == "dagster-instance"
    storage = _assert_valid(DagsterPostgresStorage.config_type(), config["storage"]["postgres"], "storage")
    assert storage["postgres_db"]["hostname"] == "db.example"  # env vars resolved
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_instance_yaml_uses_the_tested_postgres_storage_section():
    # the same storage block as deploy/dagster-postgres.yaml, which runs against a real server in
    # test_postgres_instance.py
    assert _yaml("dagster.yaml")["storage"] == yaml.safe_load(POSTGRES_YAML.read_text())["storage"]


def test_workspace_yaml_is_a_valid_workspace():
    result = process_workspace_config(_yaml("workspace.yaml"))
    assert result.success, [error.message for error in result.errors]
    (location,) = result.value["load_from"]
    assert location["grpc_server"]["port"] == 4000


def test_k8s_code_location_puts_every_job_on_the_k8s_executor():
    defs = k8s_definitions()
    jobs = [defs.resolve_job_def(name) for name in ("full_pipeline", "reembed_new_products")]
    assert {job.executor_def.name for job in jobs} == {"k8s"}
    # the automation comes along: the schedule launches the k8s-executed job
    assert defs.resolve_schedule_def("reembed_new_products_schedule").job_name == "reembed_new_products"
    assert defs.resolve_sensor_def("incoming_products_sensor") is not None


def test_object_storage_with_a_local_models_dir(tmp_path, monkeypatch):
    # pods keep outputs in object storage, but encoders load converted models from a local folder
    monkeypatch.setenv("WB_PIPELINE_STORAGE_DIR", "memory://wb-bucket/storage")
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    resources = k8s_definitions().resources
    assert resources["io_manager"].base_dir == "memory://wb-bucket/storage"
    assert resources["text_encoder"].cache_dir == resources["image_encoder"].cache_dir == str(tmp_path / "models")


def test_run_config_validates_against_the_k8s_job(k8s_full_pipeline):
    run_config = _yaml("run_config.yaml")
    result = dg.validate_run_config(k8s_full_pipeline, run_config)  # raises on any unknown or mistyped field
    assert result["execution"]["k8s"]["job_namespace"] == "wb-pipeline"  # read as the k8s executor's config
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):  # the schema is strict
        dg.validate_run_config(k8s_full_pipeline, {"execution": {"config": {"max_concurent": 2}}})


def test_per_step_config_names_real_ops_and_gives_every_embedding_pool_step_a_gpu(k8s_full_pipeline):
    per_step = _yaml("run_config.yaml")["execution"]["config"]["per_step_k8s_config"]
    op_names = {op.name for op in k8s_full_pipeline.graph.iterate_op_defs()}
    assert set(per_step) <= op_names, set(per_step) - op_names  # dagster-k8s would ignore a typo silently
    embedding_ops = {op.name: op for op in k8s_full_pipeline.graph.iterate_op_defs() if op.pool == "embedding"}
    # one op per encoder stage, run once per shard: the same pod spec whatever the shard count
    assert set(embedding_ops) == {f"{stage}_embeddings_shard" for stage in ("text", "image")}
    for op in embedding_ops.values():  # the GPU pod comes from the op tag, whatever the shard count
        assert json.loads(op.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"][GPU] == "1"


def _step_k8s_config(op_name: str) -> dict:
    """What the executor merges for a step: the executor-wide step config, the per-op run config, then
    the op's `dagster-k8s/config` tag."""
    execution = _yaml("run_config.yaml")["execution"]["config"]
    node = {op.name: op for op in k8s_definitions().resolve_job_def("full_pipeline").graph.iterate_op_defs()}[op_name]
    return execution, [
        execution["step_k8s_config"],
        execution["per_step_k8s_config"].get(op_name, {}),
        json.loads(node.tags.get("dagster-k8s/config", "{}")),
    ]


@pytest.mark.parametrize(
    "op_name", ["text_embeddings_shard", "image_embeddings_shard", "raw_products_train", "text_embeddings_gather"]
)
def test_step_pod_that_dagster_k8s_would_submit(op_name):
    """The Kubernetes Job for one step, built by dagster-k8s from the run config and op tags the way the
    executor merges them: Kubernetes field names are checked against the client's models on the way."""
    execution, layers = _step_k8s_config(op_name)
    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layers[0]))
    for layer in layers[1:]:
        context = context.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layer)))
    job_config = DagsterK8sJobConfig(
        job_image="registry.example/wb-pipeline:1",
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        env_config_maps=execution["env_config_maps"],
        env_secrets=execution["env_secrets"],
    )
    job = construct_dagster_k8s_job(
        job_config,
        ["dagster", "api", "execute_step"],
        "dagster-step-test",
        user_defined_k8s_config=context.run_k8s_config,
    )
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert {source.config_map_ref.name for source in container.env_from if source.config_map_ref} == {"wb-pipeline-env"}
    if op_name.endswith("_embeddings_shard"):
        assert container.resources.limits[GPU] == "1"
        assert container.resources.requests["cpu"] == "4"  # the per-op override won over the default
        assert pod.node_selector == {f"{GPU}.present": "true"}
        assert pod.tolerations[0].key == GPU
    else:  # every other step: the executor-wide default, no GPU
        assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
        assert GPU not in (container.resources.limits or {})
        assert not pod.node_selector
