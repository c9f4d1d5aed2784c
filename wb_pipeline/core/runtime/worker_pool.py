"""The process pool of the pipeline's fold-parallel work, ended with the process (the step) that started it.

joblib's loky backend keeps its worker processes after a `Parallel` call so that the next call reuses
them, and lets them go only after 300 s without a task (loky's idle timeout). Inside one process that
reuse is what keeps the second and later calls cheap. But a process that multiprocessing started (each
step of Dagster's default multiprocess executor, a dask worker) ends through
`multiprocessing.util._exit_function`, which JOINS every non-daemon child before the interpreter's
thread shutdown that would tell loky to stop: the step process sat idle with its two workers until
their 300 s timeout, 5 minutes per classification step between its last event and the next step's
launch (measured on the bundled sample; a plain `python script.py` exits at once, as there the thread
shutdown comes first).

- `parallel(tasks, n_jobs)`: joblib's loky pool over `delayed` tasks, reused within the process; the
  first call registers a multiprocessing exit finalizer that ends the pool BEFORE multiprocessing
  joins the children, so the process exits as soon as its work is done, whatever called it;
- `end_worker_pool()`: ends the pool now (its workers and its memmapping folder); a step calls it when
  it finishes, so its pool never outlives it under any executor (in-process, dask).
"""

from __future__ import annotations

import multiprocessing.util
import os
from collections.abc import Sequence

from joblib import Parallel

# The pid whose exit finalizer is registered (a forked child inherits the flag but not the pool).
_finalizer_pid: int | None = None
# Runs in `_exit_function`'s first pass (priority >= 0), before it joins the child processes.
_EXIT_PRIORITY = 100


def parallel(tasks: Sequence, n_jobs: int) -> list:
    """`joblib.delayed` `tasks` run in order: in this process when `n_jobs` is 1 or there is one task,
    else in a loky pool of min(n_jobs, len(tasks)) processes that ends at the latest with this process."""
    if n_jobs == 1 or len(tasks) < 2:
        return [function(*args, **kwargs) for function, args, kwargs in tasks]
    _end_pool_at_exit()
    return Parallel(n_jobs=min(n_jobs, len(tasks)), backend="loky")(tasks)


def end_worker_pool() -> bool:
    """Shut loky's reusable pool down (waiting for its idle workers to exit) and remove its memmapping
    folder; True when there was a live pool. The next `parallel` call starts a new one."""
    from joblib.externals.loky import reusable_executor

    with reusable_executor._executor_lock:
        executor = reusable_executor._executor
        if executor is None or executor._flags.shutdown:
            return False
    terminate = getattr(executor, "terminate", None)  # joblib's MemmappingExecutor also cleans its temp folder
    if terminate is not None:
        terminate(kill_workers=False)
    else:
        executor.shutdown(wait=True)
    return True


def _end_pool_at_exit() -> None:
    global _finalizer_pid
    if _finalizer_pid != os.getpid():
        _finalizer_pid = os.getpid()
        multiprocessing.util.Finalize(None, _end_own_pool, args=(os.getpid(),), exitpriority=_EXIT_PRIORITY)


def _end_own_pool(pid: int) -> None:
    if os.getpid() == pid:
        end_worker_pool()
