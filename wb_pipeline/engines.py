"""The `full_pipeline` job on execution engines beyond one process (see docs/DEPLOYMENT.md).

`full_pipeline_on_dask()` is the whole asset graph with `dagster_dask.dask_executor`: every step is a
task on a dask.distributed cluster, run by a worker process that rebuilds the job from this module.
Step outputs never travel through the scheduler: each step writes its parquet file through the
storage IO manager (`WB_PIPELINE_STORAGE_DIR`) and the next step reads it from there, so the storage
dir must be one place every worker sees (a local folder on a single machine, object storage such as
`s3://bucket/wb/` across machines). Dask workers rebuild the job by calling the factory with no
arguments, so they take the raw / storage / incoming folders from the same `WB_PIPELINE_*`
environment variables as the orchestrating process.

Run it against a running scheduler (the run config is `dask_run_config(address)`):

    dagster job execute -m wb_pipeline.engines -a full_pipeline_on_dask -c dask_run_config.yaml

or from Python with `dg.execute_job(reconstructable_full_pipeline_on_dask(), instance, run_config=...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import dagster as dg
import dask.distributed
from dagster_dask import dask_executor
from dagster._core.errors import raise_execution_interrupts
from dagster._utils import iterate_with_context
from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements, query_on_dask_worker

from wb_pipeline.definitions import build_definitions

if TYPE_CHECKING:  # dagster exports no public name for the type build_reconstructable_job returns
    from dagster._core.definitions.reconstruct import ReconstructableJob

DASK_JOB_NAME = "full_pipeline_dask"

# cluster type of the executor config -> (module, class); "existing" takes a scheduler address instead
_DASK_CLUSTERS = {
    "local": ("dask.distributed", "LocalCluster"),
    "ssh": ("dask.distributed", "SSHCluster"),
    "yarn": ("dask_yarn", "YarnCluster"),
    "kube": ("dask_kubernetes", "KubeCluster"),
    **{name: ("dask_jobqueue", f"{name.upper()}Cluster") for name in ("pbs", "sge", "lsf", "oar")},
    "moab": ("dask_jobqueue", "MoabCluster"),
    "slurm": ("dask_jobqueue", "SLURMCluster"),
}


class _StepCall:
    """The arguments of one step's dask task, in an object dask does not look into.

    dask (2026.x) walks every tuple passed to `Client.submit` looking for futures, and every Dagster
    record is a NamedTuple: a run whose steps use a pool carries a `RunOpConcurrency` record that
    refuses iteration, so `dagster_dask.dask_executor` fails before the first step. Only the list of
    upstream futures is passed to dask as is (it orders the tasks)."""

    def __init__(self, recon_job, dagster_run, run_config, step_keys: Sequence[str], instance_ref, known_state):
        self.args = (recon_job, dagster_run, run_config, step_keys, instance_ref, known_state)


class _StepEvents:
    """A step's Dagster events on their way back to the orchestrator, opaque to dask for the same
    reason (dask's `sizeof` of a plain list would walk into the event records)."""

    def __init__(self, events: Sequence[dg.DagsterEvent]):
        self.events = list(events)

    def __sizeof__(self) -> int:
        return 1024 * len(self.events)  # order of magnitude is all dask's memory accounting needs


def _execute_step_on_worker(dependencies: list, call: _StepCall) -> _StepEvents:
    """The dask task: run one step in the worker process (dagster_dask's own worker function)."""
    return _StepEvents(query_on_dask_worker(dependencies, *call.args))


class _PoolSafeDaskExecutor(DaskExecutor):
    """`dagster_dask`'s DaskExecutor (same config, same cluster types, one task per step), with two
    fixes: the task arguments are wrapped so runs with pools can be submitted (see `_StepCall`), and
    task keys include the run id so two runs of the same job on one cluster do not share tasks
    (dask would run a key once: dagster-io/dagster#21418)."""

    def execute(self, plan_context, execution_plan):
        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError(
                "the dask executor needs a persistent Dagster instance: the workers open it from its ref")
        run = plan_context.dagster_run
        if self.cluster_type == "existing":
            cluster = self.cluster_configuration["address"]
        elif self.cluster_type in _DASK_CLUSTERS:
            module, name = _DASK_CLUSTERS[self.cluster_type]
            cluster = getattr(importlib.import_module(module), name)(**self.build_dict(plan_context.job_name))
        else:
            raise ValueError(f"unknown dask cluster type {self.cluster_type!r}: expected 'existing' or one of "
                             f"{sorted(_DASK_CLUSTERS)}")
        with dask.distributed.Client(cluster) as client:
            futures: dict[str, dask.distributed.Future] = {}
            for step_level in execution_plan.get_steps_to_execute_by_level():
                for step in step_level:
                    upstream = [futures[key] for step_input in step.step_inputs for key in step_input.dependency_keys]
                    call = _StepCall(plan_context.reconstructable_job, run, plan_context.run_config, [step.key],
                                     plan_context.instance.get_ref(), execution_plan.known_state)
                    futures[step.key] = client.submit(
                        _execute_step_on_worker, upstream, call,
                        key=f"{plan_context.job_name}.{step.key}.{run.run_id}",
                        resources=get_dask_resource_requirements(step.tags),
                    )
            completed = dask.distributed.as_completed(list(futures.values()), with_results=True)
            for _future, step_events in iterate_with_context(raise_execution_interrupts, completed):
                yield from step_events.events


@dg.executor(name="dask", config_schema=dask_executor.config_schema,
             requirements=dg.multiple_process_executor_requirements())
def pool_safe_dask_executor(init_context) -> DaskExecutor:
    """`dagster_dask.dask_executor` (same config: `cluster: {existing: {address: ...}}`, `local`, ...)
    that also runs jobs whose steps declare a pool, as ours do. Dask does not apply Dagster pools:
    it runs as many steps at once as the workers have threads (limit GPU steps with dask worker
    resources and the `dagster-dask/resource_requirements` op tag)."""
    ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
    return _PoolSafeDaskExecutor(cluster_type, cluster_configuration)


def full_pipeline_on_dask(
    raw_dir: str | None = None,
    storage_dir: str | None = None,
    incoming_dir: str | None = None,
    models_dir: str | None = None,
) -> dg.JobDefinition:
    """The `full_pipeline` job (every asset and asset check) executed by `dask_executor`.

    The folders default to `WB_PIPELINE_RAW_DIR` / `WB_PIPELINE_STORAGE_DIR` /
    `WB_PIPELINE_INCOMING_DIR` (as in `build_definitions`); arguments passed here reach the dask
    workers only when they come through `reconstructable_full_pipeline_on_dask(...)`. The encoders
    are the default resources; change them with the run config's `resources` section.
    """
    base = build_definitions(raw_dir=raw_dir, storage_dir=storage_dir, incoming_dir=incoming_dir,
                             models_dir=models_dir)
    job = dg.define_asset_job(
        DASK_JOB_NAME,
        selection=dg.AssetSelection.all(),
        executor_def=pool_safe_dask_executor,
        description="The whole asset graph (with its asset checks), one dask task per step; outputs go "
        "through the storage dir, which every dask worker must see.",
    )
    defs = dg.Definitions(assets=base.assets, asset_checks=base.asset_checks, resources=base.resources,
                          jobs=[job])
    return defs.resolve_job_def(DASK_JOB_NAME)


def reconstructable_full_pipeline_on_dask(**factory_kwargs: str) -> "ReconstructableJob":
    """`full_pipeline_on_dask(**factory_kwargs)` in a form dask workers rebuild from this module
    (what `dg.execute_job` needs); the keyword arguments must be strings (they are serialized)."""
    return dg.build_reconstructable_job(__name__, full_pipeline_on_dask.__name__,
                                        reconstructable_kwargs=dict(factory_kwargs))


def dask_run_config(scheduler_address: str, run_config: Mapping | None = None) -> dict:
    """`run_config` (ops/resources sections, optional) plus the executor section that points the
    dask executor at an existing scheduler, e.g. `tcp://10.0.0.5:8786`."""
    return {**dict(run_config or {}),
            "execution": {"config": {"cluster": {"existing": {"address": scheduler_address}}}}}
