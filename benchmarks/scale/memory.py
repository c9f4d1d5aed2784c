"""Memory and machine facts for the scale benchmark: RSS sampling of this process, each multiprocess step's
own peak RSS (a success hook writes VmHWM), and the machine's description."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .stages import RSS_SAMPLE_SECONDS


def rss_mib() -> float:
    """Current RSS of this process plus its child processes."""
    process = psutil.Process()
    rss = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            rss += child.memory_info().rss
        except psutil.Error:  # the child ended between listing and reading
            pass
    return rss / 2**20


class RssSampler:
    """Samples this process's RSS (children included) in a background thread: (unix time, MiB) pairs.

    Per-step peaks come from the samples inside the step's [start, end]; steps shorter than the
    sampling period get the nearest sample.
    """

    def __init__(self, period_s: float = RSS_SAMPLE_SECONDS) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), rss_mib()))
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), rss_mib()))

    def peak_between(self, start: float, end: float) -> float:
        inside = [mib for t, mib in self.samples if start <= t <= end]
        if inside:
            return max(inside)
        nearest = min(self.samples, key=lambda s: min(abs(s[0] - start), abs(s[0] - end)))
        return nearest[1]

    def peak(self) -> float:
        return max(mib for _, mib in self.samples)


def process_peak_rss_mib() -> dict[str, float]:
    """Peak RSS of this process and of its waited-for children so far (Linux reports KiB)."""
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, versions and date, for the report."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    import torch

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def own_process_peak_rss() -> dict[str, float]:
    """The peak RSS of this process, two ways (MiB):

    - `vm_hwm_mib`: /proc/self/status VmHWM, the high-water mark of this process's own address space
      since it started (exec);
    - `ru_maxrss_mib`: getrusage(RUSAGE_SELF). Linux carries the maximum across exec: a process SPAWNED
      by a big parent (the multiprocess executor's default start method) reports at least the parent's
      peak at the moment of the fork, so it over-reports for small steps; kept to show the difference."""
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024  # kB
                break
    except OSError:  # not Linux
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"vm_hwm_mib": hwm if hwm is not None else maxrss, "ru_maxrss_mib": maxrss}


def step_memory_hook(log_path: str):
    """A success hook that appends, from the process that ran the step (the hook runs there), one JSON
    line {step, pid, vm_hwm_mib, ru_maxrss_mib} to `log_path`. With the multiprocess executor every
    step is a fresh process, so this is that step's own peak (input loading and output writing included)."""
    import dagster as dg

    @dg.success_hook(name="record_step_memory")
    def record_step_memory(context) -> None:
        line = json.dumps({"step": context.step_key, "pid": os.getpid(), **own_process_peak_rss()})
        with open(log_path, "a", encoding="utf-8") as handle:  # one short line per write: appends do not interleave
            handle.write(line + "\n")

    return record_step_memory


def read_step_memory(log_path: Path) -> dict[str, dict[str, Any]]:
    if not log_path.exists():
        return {}
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return {row["step"]: row for row in rows}
