"""CLI: ``python -m wb_pipeline.sample_data OUT_DIR [--n-products N] [--seed S] [--no-images]``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from wb_pipeline.sample_data.generator import SampleSpec, write_sample


def main(argv: list[str] | None = None) -> int:
    """Write a sample and print its counts and file hashes."""
    parser = argparse.ArgumentParser(
        prog="python -m wb_pipeline.sample_data", description="Write a synthetic WB-layout sample (deterministic)."
    )
    parser.add_argument("out_dir", help="folder to write the four WB files and sample_manifest.json into")
    parser.add_argument("--n-products", type=int, default=SampleSpec.n_products)
    parser.add_argument("--seed", type=int, default=SampleSpec.seed)
    parser.add_argument("--test-fraction", type=float, default=SampleSpec.test_fraction)
    parser.add_argument("--no-images", action="store_true", help="only the parquet tables (fast)")
    args = parser.parse_args(argv)
    try:
        spec = SampleSpec(
            n_products=args.n_products, seed=args.seed, test_fraction=args.test_fraction, with_images=not args.no_images
        )
    except ValueError as error:
        parser.error(str(error))
    started = time.perf_counter()
    manifest = write_sample(args.out_dir, spec)
    print(json.dumps({"counts": manifest["counts"], "files": manifest["files"]}, ensure_ascii=False, indent=2))
    print(f"written to {args.out_dir} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
