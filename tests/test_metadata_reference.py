"""The metadata-only reference of the masking audit: a logistic regression on manifest columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from spatialspec.audit.metadata_reference import metadata_reference


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    spurious = np.where(rng.random(n) < 0.9, label, 1 - label).astype(float)
    site = np.where(rng.random(n) < 0.5, "a", "b")
    split = np.where(np.arange(n) < n // 2, "train", "test")
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": label,
                         "spurious": spurious, "site": site, "split": split})  # fmt: skip


def test_spurious_alone_is_the_shortcut() -> None:
    frame = _frame()
    ref = metadata_reference(frame, ["spurious"], n_resamples=200)
    test = frame[frame["split"] == "test"]
    assert ref["auroc"] == pytest.approx(roc_auc_score(test["label"], test["spurious"]))
    assert ref["robust_auroc"] == 0.0  # it ranks every robust negative above every positive
    assert ref["n_fit"] == ref["n_scored"] == 200 and ref["n_skipped"] == 0
    assert ref["coefficients"]["spurious"] > 0


def test_text_columns_are_one_hot_and_missing_rows_are_counted() -> None:
    frame = _frame()
    frame.loc[[0, 1, 300], "spurious"] = -1  # unknown
    frame.loc[2, "site"] = np.nan
    ref = metadata_reference(frame, ["spurious", "site"], n_resamples=200)
    assert ref["n_skipped"] == 4 and ref["n_fit"] == 197 and ref["n_scored"] == 199
    assert set(ref["coefficients"]) == {"spurious", "site=a", "site=b"}
    keep = frame.drop(index=[0, 1, 2, 300])
    train, test = keep[keep.split == "train"], keep[keep.split == "test"]
    features = lambda f: np.c_[  # noqa: E731
        (f.spurious - train.spurious.mean()) / train.spurious.std(ddof=0),
        f.site == "a",
        f.site == "b",
    ]
    model = LogisticRegression(max_iter=1000).fit(features(train), train.label)
    expected = roc_auc_score(test.label, model.predict_proba(features(test))[:, 1])
    assert ref["auroc"] == pytest.approx(expected)


def test_bad_columns_and_one_class_are_clear_errors() -> None:
    frame = _frame()
    with pytest.raises(ValueError, match=r"\['scanner'\] not in the manifest"):
        metadata_reference(frame, ["scanner"])
    frame.loc[frame.split == "train", "label"] = 1
    with pytest.raises(ValueError, match="one class only"):
        metadata_reference(frame, ["spurious"])


def test_the_synthetic_metadata_columns(tiny_synthetic) -> None:
    """view (tied to the tube), age and sex of the synthetic benchmark: a weaker shortcut."""
    from spatialspec.data.manifest import load_manifest

    frame = load_manifest(tiny_synthetic, check_files=False)
    ref = metadata_reference(frame, ["view", "age", "sex"], n_resamples=100)
    assert set(ref["coefficients"]) == {"view=AP", "view=PA", "age", "sex=F", "sex=M"}
    assert ref["n_skipped"] == 0 and ref["n_scored"] == (frame.split == "test").sum()
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    features = lambda f: np.c_[  # noqa: E731
        f.view == "AP",
        f.view == "PA",
        (f.age - train.age.mean()) / train.age.std(ddof=0),
        f.sex == "F",
        f.sex == "M",
    ]
    model = LogisticRegression(max_iter=1000).fit(features(train), train.label)
    expected = roc_auc_score(test.label, model.predict_proba(features(test))[:, 1])
    assert ref["auroc"] == pytest.approx(expected)
    assert ref["coefficients"]["view=AP"] > ref["coefficients"]["view=PA"]  # AP goes with the tube
