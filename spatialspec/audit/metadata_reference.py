"""What the metadata alone achieves: a logistic regression on manifest columns (Mask of truth).

Sourget et al. compare image models with a model on metadata alone. Here the reference is a
logistic regression fit on the chosen manifest columns of the training split (numeric and
boolean columns standardised, text columns one-hot) and scored on the audited split, with its
AUROC and robust AUROC (and bootstrap CIs). On the synthetic benchmark ``spurious`` alone gives
a high AUROC and a robust AUROC of 0: the shortcut. Rows whose chosen columns are missing (NaN,
empty, or ``spurious == -1``) are left out of the fit and of the scores, and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.metrics import auroc, bootstrap_ci, robust_auroc

__all__ = ["metadata_reference"]


def _known(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    ok = np.ones(len(frame), bool)
    for column in columns:
        values = frame[column]
        ok &= values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
        if column == "spurious":
            ok &= pd.to_numeric(values, errors="coerce").to_numpy() != -1
    return ok


def _design(train: pd.DataFrame, other: pd.DataFrame, columns: Sequence[str]) -> tuple:
    """Features of both frames: numeric standardised on train, text one-hot (train levels)."""
    parts_train, parts_other = [], []
    for column in columns:
        numeric = pd.to_numeric(train[column], errors="coerce")
        if numeric.notna().all():
            mean, sd = float(numeric.mean()), float(numeric.std(ddof=0)) or 1.0
            parts_train.append(((numeric - mean) / sd).to_numpy()[:, None])
            values = pd.to_numeric(other[column], errors="coerce").to_numpy()
            parts_other.append(((values - mean) / sd)[:, None])
        else:
            levels = sorted(train[column].astype(str).unique())
            parts_train.append(np.stack([(train[column].astype(str) == v) for v in levels], 1))
            parts_other.append(np.stack([(other[column].astype(str) == v) for v in levels], 1))
    return np.hstack(parts_train).astype(float), np.hstack(parts_other).astype(float)


def metadata_reference(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    split: str = "test",
    fit_split: str = "train",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on ``fit_split``'s rows, score ``split``'s: AUROC and robust AUROC of the metadata.

    Args:
        frame: The manifest (``label``, ``split``, ``spurious`` and the columns).
        columns: Manifest columns to use as features.
        split: Split to score.
        fit_split: Split to fit on.
        n_resamples: Bootstrap resamples of the CIs.
        seed: Bootstrap seed.

    Returns:
        ``columns``, ``fit_split``, ``split``, ``n_fit``, ``n_scored``, ``n_skipped`` (rows left
        out for missing values, both splits), ``auroc``/``_ci``, ``robust_auroc``/``_ci`` (None
        where undefined), ``coefficients`` (feature -> weight).

    Raises:
        ValueError: An unknown column, or a fit split without both classes.
    """
    from sklearn.linear_model import LogisticRegression

    missing = [c for c in columns if c not in frame.columns]
    if missing or not columns:
        raise ValueError(
            f"metadata columns {missing or '(none)'} not in the manifest; it has "
            f"{', '.join(map(str, frame.columns))}"
        )
    train, test = (frame[frame["split"] == s] for s in (fit_split, split))
    keep_train, keep_test = _known(train, columns), _known(test, columns)
    train, test = train[keep_train], test[keep_test]
    y = train["label"].to_numpy(int)
    if len(np.unique(y)) < 2:
        raise ValueError(f"the {fit_split} rows with known {list(columns)} hold one class only")
    x_train, x_test = _design(train, test, columns)
    model = LogisticRegression(max_iter=1000).fit(x_train, y)
    scores = model.predict_proba(x_test)[:, 1]
    labels, spurious = test["label"].to_numpy(int), test["spurious"].to_numpy(float)
    out: dict[str, Any] = {
        "columns": list(columns), "fit_split": fit_split, "split": split, "n_fit": len(train),
        "n_scored": len(test),
        "n_skipped": int((~keep_train).sum() + (~keep_test).sum()),
        "coefficients": dict(zip(_names(train, columns), model.coef_[0].round(4).tolist(),
                                 strict=True)),
    }  # fmt: skip
    boot = {"n_resamples": n_resamples, "seed": seed, "on_single_class": "nan"}
    out["auroc"] = float(auroc(scores, labels))
    out["auroc_ci"] = list(bootstrap_ci(scores, labels, **boot))
    rob = robust_auroc(scores, labels, spurious, on_single_class="nan")
    out["robust_auroc"] = None if np.isnan(rob) else float(rob)
    ci = bootstrap_ci(scores, labels, spurious, metric="robust_auroc", **boot)
    out["robust_auroc_ci"] = [None if np.isnan(v) else float(v) for v in ci]
    return out


def _names(train: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    names = []
    for column in columns:
        if pd.to_numeric(train[column], errors="coerce").notna().all():
            names.append(column)
        else:
            names += [f"{column}={v}" for v in sorted(train[column].astype(str).unique())]
    return names
