"""Process memory: one-time heavy work in a fresh process, and freed memory handed back to the OS.

A long in-process run (`make run` executes every step in one Python process) keeps the highest
heap it ever had unless freed memory goes back: glibc keeps freed blocks in its arenas, and torch /
protobuf objects caught in reference cycles wait for the garbage collector. So

- `run_isolated` runs a one-time, memory-hungry job (converting the e5 model, exporting, fusing and
  quantising its ONNX graph: 2.5-4.6 GB each when done in the run's process) in a fresh process,
  whose memory is returned entirely when it exits; the run's process only reads the files it wrote;
- `release_free_memory` collects garbage cycles and trims glibc's free heap pages (after each step).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

_CHILD = """
import importlib, pickle, sys, traceback
with open(sys.argv[1], "rb") as handle:
    path, module, name, args, kwargs = pickle.load(handle)
sys.path[:] = path
try:
    function = importlib.import_module(module)
    for part in name.split("."):
        function = getattr(function, part)
    outcome = ("ok", function(*args, **kwargs))
except BaseException as error:
    outcome = ("error", error, traceback.format_exc())
with open(sys.argv[2], "wb") as handle:
    try:
        pickle.dump(outcome, handle)
    except Exception:
        handle.seek(0)
        handle.truncate()
        pickle.dump(("error", RuntimeError(repr(outcome[1])), outcome[-1]), handle)
"""


class IsolatedRunError(RuntimeError):
    """The isolated process died without an answer (killed, out of memory, interpreter crash)."""


def run_isolated(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a fresh Python process (the same interpreter and import path);
    its result, or its exception raised here. `function` must be importable by name (a module-level
    function) and its arguments and result picklable: they travel between this process and the child
    only, through a private temporary folder. Costs a process start and the function module's imports
    (seconds), so use it for one-time work, never per product. A plain subprocess, not
    `multiprocessing`: that re-imports the caller's `__main__` script, which breaks scripts without a
    `__main__` guard."""
    with tempfile.TemporaryDirectory(prefix="wb-isolated-") as folder:
        request, answer = Path(folder) / "request.pickle", Path(folder) / "answer.pickle"
        request.write_bytes(pickle.dumps((list(sys.path), function.__module__, function.__qualname__, args, kwargs)))
        done = subprocess.run([sys.executable, "-c", _CHILD, str(request), str(answer)], check=False)
        if not answer.is_file() or answer.stat().st_size == 0:
            raise IsolatedRunError(
                f"{function.__qualname__} in a separate process ended with exit status "
                f"{done.returncode} and no result (killed, or out of memory?)"
            )
        outcome = pickle.loads(answer.read_bytes())  # written by our own child process just now
    if outcome[0] == "ok":
        return outcome[1]
    error, child_traceback = outcome[1], outcome[2]
    error.add_note(f"raised in a separate process by {function.__qualname__}:\n{child_traceback}")
    raise error


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_free_memory() -> None:
    """Collect garbage cycles, then give glibc's free heap pages back to the OS (`malloc_trim`; a no-op
    where the C library has none). Live objects are untouched: only memory already freed is returned."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
