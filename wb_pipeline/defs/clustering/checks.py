"""Data tests on the clustering comparison."""


import dagster as dg
import numpy as np
import pandas as pd

UNIMODAL_SPACES = ("text", "image")


def best_ami_by_space(report: pd.DataFrame, target: str) -> dict[str, float]:
    """The best `<target>_ami` over algorithms, per space (NaN where the target was never known)."""
    column = f"{target}_ami"
    if column not in report.columns:
        return {}
    return {str(space): float(values.max()) for space, values in report.groupby("space")[column]}


@dg.asset_check(
    asset="clustering_report",
    description="The joint space clusters products at least as well as the best unimodal space (AMI vs the "
    "known category, best algorithm each). Warns: the joint space is a goal, not a guarantee.",
)
def joint_space_not_worse_than_unimodal(clustering_report: pd.DataFrame) -> dg.AssetCheckResult:
    best = best_ami_by_space(clustering_report, "category")
    joint = best.get("joint", float("nan"))
    unimodal = max((best.get(space, float("nan")) for space in UNIMODAL_SPACES), default=float("nan"),
                   key=lambda value: -np.inf if np.isnan(value) else value)
    if np.isnan(joint) or np.isnan(unimodal):
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reason": "no category AMI for the joint or the unimodal spaces (no labelled rows?)"},
        )
    return dg.AssetCheckResult(
        passed=bool(joint >= unimodal),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"joint_category_ami": joint, "best_unimodal_category_ami": unimodal,
                  **{f"{space}_category_ami": value for space, value in best.items()}},
    )
