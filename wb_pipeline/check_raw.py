"""`python -m wb_pipeline.check_raw RAW_DIR`: can a run start on this WB-layout folder?

`make eval` calls it before it starts the run, so a missing, empty or wrong folder is one readable line
(exit status 2) instead of a failed run buried in Dagster tracebacks. It checks what
`wb_pipeline.core.data.ingestion.check_wb_folder` checks: the folder, both product files (regular, readable
parquet, required columns, usable ids, at least one product), the images zip (a zip with at least one
`{nm}.jpg`), `image_df.parquet` when present. What the run will reject or set to missing (prices that
are not numbers, zip members that are not a plain `{nm}.jpg`) is printed as notes, counted; it does
not stop the run.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wb_pipeline.check_raw", description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", help="the folder in the WB layout (local path or fsspec URL)")
    args = parser.parse_args(argv)
    if not args.raw_dir.strip():
        parser.error("RAW_DIR is empty: give the folder in the WB layout")

    from wb_pipeline.core.data.folder_check import check_wb_folder

    result = check_wb_folder(args.raw_dir)
    for note in result.notes:
        print(f"check_raw: note: {note}", file=sys.stderr)
    if result.problem is not None:
        print(f"check_raw: cannot start a run on {args.raw_dir}: {result.problem}", file=sys.stderr)
        return 2
    products = " + ".join(
        f"{n} {name.removeprefix('wb_school_').removesuffix('.parquet')}"
        for name, n in result.counts.items()
        if name != "photos"
    )
    print(f"check_raw: {args.raw_dir} is ready: {products} products, {result.counts.get('photos', 0)} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
