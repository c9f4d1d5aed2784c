"""The pipeline on execution engines beyond one process (docs/DEPLOYMENT.md has the how-to).

- `full_pipeline_on_dask()`: the whole asset graph as one job whose steps are tasks on a
  dask.distributed cluster (`dagster_dask`'s executor, patched to accept jobs with pools).
- `k8s_definitions()`: the code location with every job on `dagster_k8s.k8s_job_executor` (one
  Kubernetes pod per step); needs the `dagster-k8s` package, imported only when called.

Both are functions without arguments because that is how Dagster rebuilds a job in another process
(a dask worker, a step pod): it imports this module and calls the function. They read the raw /
storage / incoming folders from the `WB_PIPELINE_*` environment variables, which must therefore be
the same for the orchestrating process and every worker. Step outputs never travel through the
dask scheduler or the Kubernetes API: each step writes its parquet file through the storage IO
manager and the next step reads it from there, so the storage dir must be one place that every
worker sees (a local folder on one machine, object storage such as `s3://bucket/wb/` otherwise).

Run the dask job against a running scheduler:

    dagster job execute -m wb_pipeline.engines -a full_pipeline_on_dask -c dask.yaml

where dask.yaml is `dask_run_config("tcp://HOST:8786")`, or from Python:
`dg.execute_job(reconstructable_full_pipeline_on_dask(), instance, run_config=dask_run_config(address))`.
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import dagster as dg
import dask.distributed
from dagster._core.errors import raise_execution_interrupts
from dagster._core.execution.plan.active import ActiveExecution
from dagster_dask import dask_executor
from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements, query_on_dask_worker

from wb_pipeline import settings
from wb_pipeline.definitions import build_definitions
from wb_pipeline.defs.automation import jobs

if TYPE_CHECKING:  # dagster exports no public name for the type build_reconstructable_job returns
    from dagster._core.definitions.reconstruct import ReconstructableJob

DASK_JOB_NAME = "full_pipeline_dask"
MODELS_DIR_ENV = settings.MODELS_DIR_ENV  # read by build_definitions (see wb_pipeline.settings)

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


def keep_sigterm_deliverable() -> None:
    """Give SIGINT Python's default handler when this process started with it ignored, so that
    processes it starts after a Dagster run can still be stopped with SIGTERM.

    A background job of a non-interactive shell (CI, `cmd &` in a script) starts with SIGINT
    ignored. When a Dagster run ends, `capture_interrupts` puts SIGINT's old handler back and copies
    it onto SIGTERM (dagster 1.13 `_utils/interrupts.py`), so SIGTERM is then ignored too, and every
    process started later inherits that: a dask worker, and the `tail -F` that Dagster's compute-log
    capture starts for each step, which it stops with SIGTERM and then waits 2 x 30 s for. Call this
    in the main thread of a process that runs several jobs and starts processes after them (a test
    session, a benchmark, a notebook). The CLI's one run per process is not affected."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


def _execute_step_on_worker(call: _StepCall) -> _StepEvents:
    """The dask task: run one step in the worker process (dagster_dask's own worker function)."""
    return _StepEvents(query_on_dask_worker([], *call.args))  # submitted once its inputs exist: no dependencies


class _PoolSafeDaskExecutor(DaskExecutor):
    """`dagster_dask`'s DaskExecutor (same config, same cluster types, one task per step), with three
    fixes: steps are submitted as they become ready, driven by Dagster's `ActiveExecution`, so the
    dynamic shard steps run (dagster_dask plans every step up front and silently skips mapped steps:
    dagster-io/dagster#9785); the task arguments are wrapped so runs with pools can be submitted (see
    `_StepCall`); and task keys include the run id so two runs of the same job on one cluster do not
    share tasks (dask would run a key once: dagster-io/dagster#21418)."""

    def execute(self, plan_context, execution_plan):
        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError(
                "the dask executor needs a persistent Dagster instance: the workers open it from its ref"
            )
        run = plan_context.dagster_run
        if self.cluster_type == "existing":
            cluster = self.cluster_configuration["address"]
        elif self.cluster_type in _DASK_CLUSTERS:
            module, name = _DASK_CLUSTERS[self.cluster_type]
            cluster = getattr(importlib.import_module(module), name)(**self.build_dict(plan_context.job_name))
        else:
            raise ValueError(
                f"unknown dask cluster type {self.cluster_type!r}: expected 'existing' or one of "
                f"{sorted(_DASK_CLUSTERS)}"
            )
        with dask.distributed.Client(cluster) as client, ActiveExecution(execution_plan, self.retries) as active:
            # Steps are submitted as they become ready (as the multiprocess and k8s executors do), not planned
            # up front by level: a sharded stage's shard steps exist only once its shard list has run.
            running: dict[dask.distributed.Future, str] = {}
            while not active.is_complete:
                for step in active.get_steps_to_execute():
                    call = _StepCall(
                        plan_context.reconstructable_job,
                        run,
                        plan_context.run_config,
                        [step.key],
                        plan_context.instance.get_ref(),
                        active.get_known_state(),
                    )
                    future = client.submit(
                        _execute_step_on_worker,
                        call,
                        key=f"{plan_context.job_name}.{step.key}.{run.run_id}",
                        resources=get_dask_resource_requirements(step.tags),
                        pure=False,
                    )
                    running[future] = step.key
                yield from active.plan_events_iterator(plan_context)
                if not running:
                    continue
                with raise_execution_interrupts():
                    done, _ = dask.distributed.wait(list(running), return_when="FIRST_COMPLETED")
                for future in done:
                    step_key = running.pop(future)
                    for event in future.result().events:
                        yield event
                        active.handle_event(event)
                    active.verify_complete(plan_context, step_key)
                yield from active.plan_events_iterator(plan_context)


@dg.executor(
    name="dask", config_schema=dask_executor.config_schema, requirements=dg.multiple_process_executor_requirements()
)
def pool_safe_dask_executor(init_context) -> DaskExecutor:
    """`dagster_dask.dask_executor` (same config: `cluster: {existing: {address: ...}}`, `local`, ...)
    that also runs jobs whose steps declare a pool, as ours do. Dask does not apply Dagster pools:
    it runs as many steps at once as the workers have threads (limit GPU steps with dask worker
    resources and the `dagster-dask/resource_requirements` op tag)."""
    ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
    return _PoolSafeDaskExecutor(cluster_type, cluster_configuration)


def _definitions_on(
    executor_def: dg.ExecutorDefinition | None,
    jobs: list | None = None,
    encoder_op_tags: Mapping[str, object] | None = None,
) -> dg.Definitions:
    """`build_definitions()` (folders from the environment, models from `WB_PIPELINE_MODELS_DIR` when
    set) with another executor and/or other jobs."""
    base = build_definitions(encoder_op_tags=encoder_op_tags)
    return dg.Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        resources=base.resources,
        jobs=base.jobs if jobs is None else jobs,
        schedules=base.schedules if jobs is None else None,
        sensors=base.sensors if jobs is None else None,
        executor=executor_def,
    )


def full_pipeline_on_dask() -> dg.JobDefinition:
    """The `full_pipeline` job (every asset and asset check), named `full_pipeline_dask`, executed by
    `pool_safe_dask_executor`: one dask task per step. Folders come from `WB_PIPELINE_RAW_DIR` /
    `WB_PIPELINE_STORAGE_DIR` / `WB_PIPELINE_INCOMING_DIR` (as in `build_definitions`), which every
    worker must have too; encoders and other resources can be changed in the run config."""
    job = dg.define_asset_job(
        DASK_JOB_NAME,
        selection=jobs.CATALOGUE,
        executor_def=pool_safe_dask_executor,
        description="The whole asset graph (with its asset checks), one dask task per step; outputs go "
        "through the storage dir, which every dask worker must see.",
    )
    return _definitions_on(None, jobs=[job]).resolve_job_def(DASK_JOB_NAME)


def reconstructable_full_pipeline_on_dask() -> ReconstructableJob:
    """`full_pipeline_on_dask()` in the form `dg.execute_job` needs: a pointer to this module's
    factory, which each dask worker calls to rebuild the job."""
    return dg.build_reconstructable_job(__name__, full_pipeline_on_dask.__name__)


def dask_run_config(scheduler_address: str, run_config: Mapping | None = None) -> dict:
    """`run_config` (ops/resources sections, optional) plus the executor section that points the
    dask executor at an existing scheduler, e.g. `tcp://10.0.0.5:8786`."""
    return {
        **dict(run_config or {}),
        "execution": {"config": {"cluster": {"existing": {"address": scheduler_address}}}},
    }


def k8s_definitions() -> dg.Definitions:
    """The whole code location (jobs, schedule, sensor) with `k8s_job_executor` as every job's
    executor: each step runs in its own Kubernetes pod, configured by the run config's
    `execution.config` (deploy/k8s/run_config.yaml) and by `dagster-k8s/config` op tags. Load it
    with `dagster api grpc -m wb_pipeline.engines -a k8s_definitions` in the code-location image."""
    from dagster_k8s import k8s_job_executor  # an optional dependency: only k8s deployments need it

    return _definitions_on(k8s_job_executor, encoder_op_tags={"dagster-k8s/config": ENCODER_STEP_K8S_CONFIG})


# The pod of every encoder shard step (`text_embeddings.text_embeddings_shard[<key>]`, and the image one),
# as a `dagster-k8s/config` op tag on the shard op: one spec for every shard, whatever their count. One GPU
# each (the `embedding` pool caps how many run at once), CPU for decoding JPEGs / tokenizing alongside,
# memory for the model, the chunk in flight and ONE shard's table.
ENCODER_STEP_K8S_CONFIG = {
    "container_config": {
        "resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"}}
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
