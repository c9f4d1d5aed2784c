"""Run every benchmark and print its table: `python -m benchmarks.run [--short]`.

Benchmarks print ratios against a baseline measured in the same run; they never pass or fail on
a timing. `--short` is the small configuration CI runs to prove they work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS = [
    "benchmarks.preprocessing",
    "benchmarks.empty_images",
    "benchmarks.embeddings",
    "benchmarks.inference_latency",
    "benchmarks.scale",
    "benchmarks.text_fast_path",
    "benchmarks.clustering",
    "benchmarks.classification_speed",
    "benchmarks.pipeline_profile",
    "benchmarks.search",
    "benchmarks.drop_drift",
    "benchmarks.serving",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="small sizes (CI)")
    parser.add_argument("--only", nargs="*", help="module names to run (default: all)")
    args = parser.parse_args()
    failed = []
    for module in BENCHMARKS:
        if args.only and module.split(".")[-1] not in args.only and module not in args.only:
            continue
        print(f"\n### {module}{' (short)' if args.short else ''}", flush=True)
        started = time.perf_counter()
        command = [sys.executable, "-m", module] + (["--short"] if args.short else [])
        if subprocess.call(command) != 0:
            failed.append(module)
        print(f"({module}: {time.perf_counter() - started:.1f} s wall)", flush=True)
    if failed:
        print(f"benchmarks that failed to run: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
