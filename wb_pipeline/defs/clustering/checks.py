"""Data tests on the clustering comparison."""

import dagster as dg
import pandas as pd

from wb_pipeline.core.models import clustering
from wb_pipeline.defs import metadata


@dg.asset_check(
    asset="clustering_report",
    description="At equal k (KMeans with k = the number of known classes), the joint space clusters products at "
    "least as well as the best unimodal space (AMI), on category AND sub_category. Warns: the joint space is a "
    "goal, not a guarantee.",
)
def joint_space_not_worse_than_unimodal(clustering_report: pd.DataFrame) -> dg.AssetCheckResult:
    comparisons = [
        c
        for target in clustering.KNOWN_TARGETS
        if (c := clustering.equal_k_comparison(clustering_report, target, "joint", clustering.UNIMODAL_SPACES))
    ]
    if not comparisons:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reason": "no equal-k AMI for the joint or the unimodal spaces (no labelled rows?)"},
        )
    failing = [c["target"] for c in comparisons if not c["passed"]]
    return dg.AssetCheckResult(
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"joint space below the best unimodal space at equal k on {', '.join(failing)}"
            if failing
            else "joint space ≥ best unimodal space at equal k on every known target"
        ),
        metadata={
            "comparison": metadata.table(pd.DataFrame(comparisons).round(4)),
            **{
                f"{c['target']}_joint_minus_best_unimodal_ami": round(c["candidate_ami"] - c["best_baseline_ami"], 4)
                for c in comparisons
            },
        },
    )
