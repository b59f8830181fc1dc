"""Annotation budgets: parsing, counts, determinism, nesting, negatives pro rata."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spatialspec.data.budget import apply_mask_budget, parse_budget, resolve_budget


def _frame(n_pos: int = 40, n_neg: int = 60, n_val: int = 10) -> pd.DataFrame:
    rows = [("train", 1)] * n_pos + [("train", 0)] * n_neg + [("val", 1)] * n_val
    return pd.DataFrame({
        "image_id": [f"img{i:03d}" for i in range(len(rows))],
        "split": [s for s, _ in rows],
        "label": [y for _, y in rows],
        "mask_available": 1,
    })  # fmt: skip


def _kept(frame: pd.DataFrame, label: int) -> set[str]:
    rows = frame[(frame.split == "train") & (frame.label == label) & (frame.mask_available == 1)]
    return set(rows.image_id)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("all", None), (None, None), ("25", 25), (25, 25), (0, 0), ("0", 0), ("0.1", 0.1),
     (0.25, 0.25), ("10%", 0.1), ("100%", 1.0), (1.0, 1.0), (300.0, 300)],
)  # fmt: skip
def test_parse_budget(value, expected) -> None:
    assert parse_budget(value) == expected


@pytest.mark.parametrize("value", [-1, "-3", 1.5, "150%", "lots", True, float("nan")])
def test_parse_budget_rejects(value) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget(value)


def test_resolve_budget() -> None:
    assert resolve_budget(None, 40) == 40
    assert resolve_budget(0.25, 40) == 10
    assert resolve_budget(7, 40) == 7
    with pytest.raises(ValueError, match="exceeds the 40 annotated training positives"):
        resolve_budget(41, 40)


@pytest.mark.parametrize("budget", [0, 1, 10, 40, "25%", "all"])
def test_budget_respects_the_count_and_negatives_follow_pro_rata(budget) -> None:
    out, info = apply_mask_budget(_frame(), budget, seed=0)
    k = resolve_budget(parse_budget(budget), 40)
    assert len(_kept(out, 1)) == info["n_masks"] == k
    assert len(_kept(out, 0)) == info["n_negative_masks"] == round(60 * k / 40)
    assert (out[out.split == "val"].mask_available == 1).all()  # val never changes
    assert out.label.equals(_frame().label)  # labels are kept


def test_budget_zero_leaves_no_pixel_supervision_in_train() -> None:
    out, _ = apply_mask_budget(_frame(), 0)
    assert (out[out.split == "train"].mask_available == 0).all()


def test_selection_is_deterministic_nested_and_seeded() -> None:
    frame = _frame()
    a, _ = apply_mask_budget(frame, 10, seed=3)
    b, _ = apply_mask_budget(frame.sample(frac=1, random_state=1), 10, seed=3)  # row order
    assert _kept(a, 1) == _kept(b, 1) and _kept(a, 0) == _kept(b, 0)
    bigger, _ = apply_mask_budget(frame, 25, seed=3)
    assert _kept(a, 1) < _kept(bigger, 1) and _kept(a, 0) < _kept(bigger, 0)
    other, _ = apply_mask_budget(frame, 10, seed=4)
    assert _kept(other, 1) != _kept(a, 1)


def test_unannotated_rows_are_never_selected() -> None:
    frame = _frame()
    frame.loc[:19, "mask_available"] = 0  # 20 positives without masks
    out, info = apply_mask_budget(frame, "all")
    assert info["n_positives"] == 20 and len(_kept(out, 1)) == 20
    assert (out.loc[:19, "mask_available"] == 0).all()
    with pytest.raises(ValueError, match="exceeds the 20"):
        apply_mask_budget(frame, 21)
    assert np.array_equal(frame.index, out.index)


def test_datamodule_applies_the_budget_to_train_only(tiny_synthetic) -> None:
    from spatialspec.data.datamodule import SpatialDataModule

    data = SpatialDataModule(str(tiny_synthetic), mask_budget="50%", budget_seed=1)
    frame = data.frame
    train = frame[frame.split == "train"]
    n_pos = int((train.label == 1).sum())
    assert data.budget_info["n_masks"] == round(n_pos / 2)
    assert int(((train.label == 1) & (train.mask_available == 1)).sum()) == round(n_pos / 2)
    assert (frame[frame.split != "train"].mask_available == 1).all()
    assert SpatialDataModule(str(tiny_synthetic)).budget_info is None
    with pytest.raises(ValueError, match="budget"):
        SpatialDataModule(str(tiny_synthetic), mask_budget="lots")


def test_fit_records_the_budget_in_run_json(tmp_path, quick_fit_args) -> None:
    from spatialspec.training import fit

    argv = ["--method", "seg", "--out_dir", str(tmp_path / "run"), "--data.mask_budget", "3",
            *quick_fit_args]  # fmt: skip
    info = fit(argv)
    assert info["mask_budget"]["n_masks"] == 3
    assert info["config"]["data"]["mask_budget"] == 3


# ------------------------------------------------------------------ batches with a masked share


def _flags(n_annotated: int = 20, n: int = 200) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[np.random.default_rng(0).choice(n, n_annotated, replace=False)] = True
    return flags


def test_annotated_share_per_batch_and_epoch_length() -> None:
    from spatialspec.data.datamodule import AnnotatedShareBatchSampler

    flags = _flags()  # 10 % annotated
    sampler = AnnotatedShareBatchSampler(flags, batch_size=16, fraction=0.25, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 200 // 16
    for batch in batches:
        assert len(batch) == 16 and len(set(batch)) == 16  # no row twice in a batch
        assert flags[batch].sum() == 4  # round(0.25 * 16), not the ~1.6 of shuffling
    seen = np.concatenate(batches)
    assert set(seen[flags[seen]]) == set(np.flatnonzero(flags))  # every masked row is used
    others = seen[~flags[seen]]
    assert len(set(others)) == len(others)  # rows without a mask: no repeats within an epoch


def test_annotated_share_is_a_minimum_and_reproducible() -> None:
    from spatialspec.data.datamodule import AnnotatedShareBatchSampler

    flags = _flags(n_annotated=120)  # 60 % annotated: above the fraction, shuffling's share
    batches = AnnotatedShareBatchSampler(flags, 20, 0.25, seed=1).batches(0)
    assert all(flags[b].sum() == 12 for b in batches)
    a = AnnotatedShareBatchSampler(_flags(), 16, 0.25, seed=5)
    b = AnnotatedShareBatchSampler(_flags(), 16, 0.25, seed=5)
    first, second = list(a), list(a)  # iterating again moves to the next epoch's draw
    assert first == list(b) and first != second
    b.set_epoch(1)
    assert list(b) == second
    assert AnnotatedShareBatchSampler(_flags(), 16, 0.25, seed=6).batches(0) != first


def test_annotated_share_batches_the_undersampled_epoch() -> None:
    from spatialspec.data.datamodule import AnnotatedShareBatchSampler, NegativeUndersampler

    labels = np.r_[np.ones(50), np.zeros(150)]
    flags = _flags()
    base = NegativeUndersampler(labels, ratio=1.0, seed=2)  # 50 positives + 50 negatives
    sampler = AnnotatedShareBatchSampler(flags, 10, 0.3, seed=0, base=base)
    assert len(sampler) == 10
    sampler.set_epoch(4)
    allowed = set(base.indices(4).tolist())
    batches = list(sampler)
    assert all(set(b) <= allowed for b in batches)
    assert all(flags[b].sum() == max(3, round(10 * flags[list(allowed)].mean())) for b in batches)


@pytest.mark.parametrize(
    ("flags", "batch", "fraction", "message"),
    [
        (_flags(), 16, 0.0, "must be in \\(0, 1\\)"),
        (_flags(), 16, 1.0, "must be in \\(0, 1\\)"),
        (_flags(), 1, 0.5, "batch_size >= 2"),
        (np.ones(10, dtype=bool), 4, 0.5, "rows with and without annotation"),
    ],
)
def test_annotated_share_bad_arguments(flags, batch, fraction, message) -> None:
    from spatialspec.data.datamodule import AnnotatedShareBatchSampler

    with pytest.raises(ValueError, match=message):
        AnnotatedShareBatchSampler(flags, batch, fraction)


def test_datamodule_uses_the_share_only_under_a_budget(tiny_synthetic) -> None:
    from spatialspec.data.datamodule import AnnotatedShareBatchSampler, SpatialDataModule

    kwargs = {"batch_size": 8, "annotated_batch_fraction": 0.5, "augment": False}
    data = SpatialDataModule(str(tiny_synthetic), mask_budget="25%", budget_seed=1, **kwargs)
    loader = data.train_dataloader()
    assert isinstance(loader.batch_sampler.draw, AnnotatedShareBatchSampler)
    batch = next(iter(loader))
    assert batch["image"].shape[0] == 8 and int(batch["mask_available"].sum()) == 4
    assert data.val_dataloader().batch_size == 16  # evaluation batches are untouched
    plain = SpatialDataModule(str(tiny_synthetic), **kwargs).train_dataloader()  # all masked
    assert not isinstance(plain.batch_sampler.draw, AnnotatedShareBatchSampler)
    with pytest.raises(ValueError, match="annotated_batch_fraction"):
        SpatialDataModule(str(tiny_synthetic), annotated_batch_fraction=1.5)


def test_annotated_share_of_an_epoch_with_one_kind_only() -> None:
    from spatialspec.data.datamodule import AnnotatedShareBatchSampler

    sampler = AnnotatedShareBatchSampler(_flags(), 16, 0.25)
    assert sampler._n_annotated(0, 100) == 0  # e.g. an undersampled epoch without masks
    assert sampler._n_annotated(100, 100) == 16
    assert sampler._n_annotated(1, 100) == 4  # the fraction, above the natural 0.16
    assert sampler._n_annotated(99, 100) == 15  # the natural share, leaving one other row
