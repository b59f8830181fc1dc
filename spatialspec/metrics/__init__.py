"""Metrics: AUROC, robust AUROC (Saab et al., MLHC 2022) and bootstrap confidence intervals."""

from spatialspec.metrics.robust_auroc import (
    PairedDiff,
    RobustAUROC,
    auroc,
    bootstrap_ci,
    paired_bootstrap_diff,
    robust_auroc,
    robust_subgroup_mask,
)

__all__ = [
    "PairedDiff",
    "RobustAUROC",
    "auroc",
    "bootstrap_ci",
    "paired_bootstrap_diff",
    "robust_auroc",
    "robust_subgroup_mask",
]
