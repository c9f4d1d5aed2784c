"""benchmarks/classification_speed.py on its synthetic products with a small grid: every variant computes
both classification steps, the row-space variant solves on fewer columns than rows' width, and the
quality table covers every label × model. No timing assertions."""

import dataclasses

import numpy as np

from benchmarks import classification_speed as bench
from wb_pipeline.core.models import classification as core


def test_variants_compute_both_steps_and_score_every_model():
    labels, features, groups, tabular = bench.synthetic_inputs(n=150, seed=1)
    assert features["image"].shape[1] > 150  # wider than any training part: the row-space path runs
    small = core.ClassificationConfig(
        n_splits=3,
        inner_splits=2,
        min_class_rows=3,
        c_values=(1.0, 10.0),
        fusion_n_estimators=10,
        labels=("sex", "fragility"),
    )
    results = [
        bench.run_variant(labels, features, groups, tabular, dataclasses.replace(small, **change))
        for change in ({"row_space": False, "warm_start": False, "solver": "lbfgs"}, {})
    ]
    for result in results:
        assert result["base_wall"] > 0 and result["fusion_wall"] > 0
        table = bench.quality(result)
        assert set(table["label"]) == {"sex", "fragility"}
        assert set(table["model"]) == {*core.BASE_MODELS, *core.FUSION_MODELS}
        assert table["macro_f1"].between(0, 1).all()
    before, now = (bench.quality(r) for r in results)
    agreement = np.mean(np.concatenate([a == b for a, b in zip(before["predicted"], now["predicted"])]))
    assert agreement > 0.95  # the same problems, solved to the same tolerance
