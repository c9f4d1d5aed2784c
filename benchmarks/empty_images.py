"""Empty images by content: the signals that separate placeholders from small clean photos, what
each rule rejects, and what the content check costs in `image_index`.

Usage::

    .venv/bin/python -m benchmarks.empty_images            # 3,000-product sample (+ real sets found)
    .venv/bin/python -m benchmarks.empty_images --short    # 400 products + Flipkart only (CI smoke run)
    .venv/bin/python -m benchmarks.empty_images --raw /path/to/wb_layout_folder ...

The sample's manifest says which images are placeholders (by kind) and which are small clean
product shots; a real folder (default: ``../shared/real/flipkart`` and ``../shared/real/mango`` where
they exist) has real photos only, so every image the content rule flags there is a false rejection.
The outcome table also shows the tiny-area rule without its body exception (what it rejected before
a solid, varied body kept a small product on a plain backdrop). Signals are measured on
every image (trigger raised to 1 GB) to show the tails of normal photos too; the outcome table
uses the default config. Cost: the index built with the default 25 KB trigger vs with the trigger
at 0 (no image analysed = the decode check alone), best of 3, in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from wb_pipeline.core.data import images, schema
from wb_pipeline.sample_data import SampleSpec, write_sample

REAL_DEFAULTS = [Path(__file__).resolve().parents[2] / "shared" / "real" / name for name in ("flipkart", "mango")]
EVERY_IMAGE = images.ImageConfig(empty_image_max_bytes=10**9)
SIGNALS = ("pixel_std", "informative_share", "body_share", "ink_spread", "edge_sharpness")
# The tiny-area rule as it was before the body exception: no body reaches the whole frame.
NO_BODY_EXCEPTION = images.ImageConfig(empty_min_body_share=1.0)


def _index(folder: Path, config: images.ImageConfig) -> tuple[pd.DataFrame, float]:
    sizes_path = folder / schema.IMAGE_SIZES_FILE
    sizes = pd.read_parquet(sizes_path) if sizes_path.exists() else None
    with images.open_zip(folder / schema.IMAGES_ZIP) as zf:
        started = time.perf_counter()
        index, _ = images.build_image_index(zf, sizes, config)
        return index.set_index("nm"), time.perf_counter() - started


def _groups(folder: Path, manifest: dict | None) -> dict[str, pd.DataFrame]:
    every, _ = _index(folder, EVERY_IMAGE)
    every = every[every["decodable"]]
    size = every["size_from_image_df"].fillna(every["byte_size"])
    small = size <= images.ImageConfig().empty_image_max_bytes
    if manifest is None:
        tiny = every["informative_share"] < images.ImageConfig().empty_min_informative_share
        return {
            f"{folder.name}: real photos < 25 KB": every[small],
            f"{folder.name}: all real photos": every,
            f"{folder.name}: real photos, informative share < 5%": every[tiny],
        }
    defects = manifest["image_defects"]
    groups = {"sample: small clean shots": every.reindex(defects["small_clean"]).dropna(subset=["pixel_std"])}
    for kind in ("uniform", "no_photo", "logo", "blurred"):
        nms = [nm for nm, k in defects["empty_kind"].items() if k == kind]
        groups[f"sample placeholder: {kind}"] = every.reindex(nms).dropna(subset=["pixel_std"])
    odd = set(defects["empty"]) | set(defects["small_clean"])
    groups["sample: normal photos"] = every[~every.index.isin(odd)]
    return groups


def _signal_table(groups: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for name, group in groups.items():
        row: dict[str, object] = {"images": name, "n": len(group)}
        for signal in SIGNALS:
            values = group[signal]
            if values.empty:
                row[f"{signal} min / median / max"] = "-"
                continue
            row[f"{signal} min / median / max"] = f"{values.min():.3g} / {values.median():.3g} / {values.max():.3g}"
        rows.append(row)
    return pd.DataFrame(rows)


def _outcome(name: str, folder: Path, manifest: dict | None) -> tuple[dict[str, object], dict[str, object]]:
    index, content_s = min((_index(folder, images.ImageConfig()) for _ in range(3)), key=lambda r: r[1])
    bare_s = min(_index(folder, images.ImageConfig(empty_image_max_bytes=0))[1] for _ in range(3))
    by_size, _ = _index(folder, images.ImageConfig(empty_image_rule="size"))
    before = images.apply_empty_image_rule(index.reset_index(), NO_BODY_EXCEPTION).set_index("nm")
    small = index["pixel_std"].notna()
    rules = index["empty_rule"].value_counts().to_dict()
    outcome: dict[str, object] = {
        "data": name,
        "images": len(index),
        "decodable, under the size trigger": int(small.sum()),
        "empty by size rule": int(by_size["is_empty"].sum()),
        "empty by content rule, no body exception (before)": int(before["is_empty"].sum()),
        "empty by content rule": int(index["is_empty"].sum()),
        **{rule: int(rules.get(rule, 0)) for rule in images.EMPTY_RULES[1:]},
        "max same_image_count": int(index["same_image_count"].max()) if small.any() else 0,
    }
    if manifest is not None:
        defects = manifest["image_defects"]
        outcome["placeholders missed (before)"] = int(
            (~before.reindex(defects["empty"])["is_empty"].fillna(False)).sum()
        )
        outcome["placeholders missed"] = int((~index.reindex(defects["empty"])["is_empty"].fillna(False)).sum())
        outcome["small clean shots rejected"] = int(
            index.reindex(defects["small_clean"])["is_empty"].fillna(False).sum()
        )
    else:
        outcome["real photos rejected"] = int(index["is_empty"].sum())
    cost = {
        "data": name,
        "index s, trigger 0 (decode check only)": round(bare_s, 2),
        "index s, trigger 25 KB (+ content check)": round(content_s, 2),
        "ratio": round(content_s / bare_s, 2),
    }
    return outcome, cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="400 products (CI)")
    parser.add_argument(
        "--raw",
        nargs="*",
        type=Path,
        help="real WB-layout folders (default: ../shared/real/flipkart and ../shared/real/mango)",
    )
    args = parser.parse_args()
    defaults = REAL_DEFAULTS[:1] if args.short else REAL_DEFAULTS  # CI: Mango's 6,000 photos take minutes
    real = args.raw if args.raw is not None else [p for p in defaults if (p / schema.IMAGES_ZIP).exists()]
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample"
        manifest = write_sample(sample, SampleSpec(n_products=400 if args.short else 3000, seed=0))
        sets = [(f"sample ({manifest['counts']['products']} products)", sample, manifest)]
        sets += [(folder.name, folder, None) for folder in real]
        groups: dict[str, pd.DataFrame] = {}
        outcomes, costs = [], []
        for name, folder, set_manifest in sets:
            groups.update(_groups(folder, set_manifest))
            outcome, cost = _outcome(name, folder, set_manifest)
            outcomes.append(outcome)
            costs.append(cost)
    config = images.ImageConfig()
    print(
        f"\nContent signals (every image measured; rules: pixel_std < {config.empty_max_pixel_std} near_uniform, "
        f"informative_share < {config.empty_min_informative_share} tiny_informative_area unless body_share >= "
        f"{config.empty_min_body_share} and ink_spread >= {config.empty_min_ink_spread}, edge_sharpness < "
        f"{config.empty_min_edge_sharpness} blurred):\n"
    )
    print(_signal_table(groups).to_markdown(index=False))
    print("\nWhat the rules flag (default config; the size rule for comparison):\n")
    print(pd.DataFrame(outcomes, dtype=object).fillna("-").to_markdown(index=False))
    print("\nCost of the content check in build_image_index (best of 3, same run):\n")
    print(pd.DataFrame(costs).to_markdown(index=False))


if __name__ == "__main__":
    main()
