"""The fold-parallel pool never keeps a finished step's process alive (issue: 5 minutes of idle wait per
classification step under Dagster's default multiprocess executor)."""

import multiprocessing
import time

import dagster as dg
import pytest
from joblib import delayed

from wb_pipeline.core.models.classification import cross_validation
from wb_pipeline.core.runtime import worker_pool

# loky's idle timeout is 300 s: a process that waits for its idle workers blows far through this.
EXIT_WITHIN_S = 10.0


def _mark_time(path: str) -> None:
    with open(path, "w") as handle:
        handle.write(repr(time.time()))


def _fold_work_then_finish(done_file: str, joined_file: str) -> None:
    """What a classification step does in its own process: fold-parallel work in the loky pool, then
    its last event. `joined_file` gets the time multiprocessing's exit has joined the children (a
    finalizer of negative priority runs right after that join)."""
    import multiprocessing.util

    results = cross_validation._parallel([delayed(time.sleep)(0.2) for _ in range(4)], 2)
    assert len(results) == 4
    multiprocessing.util.Finalize(None, _mark_time, args=(joined_file,), exitpriority=-100)
    _mark_time(done_file)


def test_a_multiprocessing_child_ends_its_pool_before_exit_joins_the_workers(tmp_path):
    # Dagster's multiprocess executor starts each step with the spawn context: there, multiprocessing's
    # exit joins the (idle, reusable) loky workers before loky is told to stop. The time is measured
    # from the end of the work to the end of that join (not to the process's end, whose interpreter
    # teardown depends on the machine's load, not on the pool).
    done_file, joined_file = tmp_path / "done", tmp_path / "joined"
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_fold_work_then_finish, args=(str(done_file), str(joined_file)))
    child.start()
    try:
        child.join(timeout=150)
        assert not child.is_alive(), "the step process is still alive long after its work (idle loky workers)"
        assert child.exitcode == 0
        waited = float(joined_file.read_text()) - float(done_file.read_text())
        assert 0 <= waited < EXIT_WITHIN_S, f"the process waited {waited:.1f} s for its workers after its work"
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_end_worker_pool_ends_the_workers_and_the_next_call_starts_a_new_pool():
    assert worker_pool.parallel([delayed(abs)(-i) for i in range(3)], 2) == [0, 1, 2]
    workers = [p for p in multiprocessing.active_children() if "Loky" in type(p).__name__]
    assert workers, "the loky pool should have started worker processes"
    assert worker_pool.end_worker_pool() is True
    assert not any(p.is_alive() for p in workers)
    assert worker_pool.end_worker_pool() is False  # nothing left to end
    assert worker_pool.parallel([delayed(abs)(-i) for i in range(3)], 2) == [0, 1, 2]  # a fresh pool works
    assert worker_pool.end_worker_pool() is True


def test_one_job_or_one_task_runs_in_this_process_with_keyword_arguments():
    def join(a, sep="-"):
        return sep.join(a)

    assert worker_pool.parallel([delayed(join)(["a", "b"], sep="+")], 4) == ["a+b"]
    assert worker_pool.parallel([delayed(join)(["x"]), delayed(join)(["y", "z"], sep="")], 1) == ["x", "yz"]


# --- the same through Dagster's default (multiprocess) executor ------------------------------------


@dg.asset
def fold_parallel_step() -> int:
    return len(cross_validation._parallel([delayed(time.sleep)(0.2) for _ in range(4)], 2))


@dg.asset(deps=[fold_parallel_step])
def next_step() -> int:
    return 1


def two_step_job():
    return dg.Definitions(
        assets=[fold_parallel_step, next_step], jobs=[dg.define_asset_job("two_steps", selection="*")]
    ).get_job_def("two_steps")


def step_gaps(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Per step launched after another ended: (seconds from the last step end before its launch to its
    process running, seconds its process took to start). The multiprocess executor logs a launch
    (`STEP_WORKER_STARTING`) at once, but starts the process only after it has joined the previous
    step's process; `STEP_WORKER_STARTED` is the new process running, after its imports."""
    events = [
        (record.timestamp, record.dagster_event.event_type_value, record.step_key)
        for record in instance.all_logs(run_id)
        if record.dagster_event is not None
    ]
    ends = [t for t, kind, _ in events if kind in ("STEP_SUCCESS", "STEP_FAILURE")]
    launched = {step: t for t, kind, step in events if kind == "STEP_WORKER_STARTING"}
    gaps = {}
    for t, kind, step in events:
        earlier = [end for end in ends if end <= launched.get(step, t)]
        if kind == "STEP_WORKER_STARTED" and earlier:
            gaps[step] = (t - max(earlier), t - launched[step])
    return gaps


def startup_seconds(instance: dg.DagsterInstance, run_id: str, step: str) -> float:
    """Launch to running for a step nothing held up (imports and process start only)."""
    times = {
        record.dagster_event.event_type_value: record.timestamp
        for record in instance.all_logs(run_id)
        if record.dagster_event is not None and record.step_key == step
    }
    return times["STEP_WORKER_STARTED"] - times["STEP_WORKER_STARTING"]


@pytest.mark.slow
def test_default_executor_starts_the_next_step_right_after_a_fold_parallel_step(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.reconstructable(two_step_job)
        with dg.execute_job(job, instance=instance) as result:  # the job's default executor: multiprocess
            assert result.success
            gaps = step_gaps(instance, result.run_id)
            startup = startup_seconds(instance, result.run_id, "fold_parallel_step")
    assert set(gaps) == {"next_step"}
    # Less the first step's own process start (imports, which a loaded machine slows): the wait that is
    # left is the previous process's exit. 60 s of slack for load; the idle-worker wait was 300 s.
    idle = gaps["next_step"][0] - startup
    assert idle < 60, (
        f"next step running {gaps['next_step'][0]:.1f} s after the previous ended ({startup:.1f} s startup)"
    )
