"""The methods trained on spurious-attribute labels (groupdro, dfr) or on their own errors (jtt),
and the attribute budget: hand-computed Group DRO weights, a hand-made JTT error set, DFR's
last layer against sklearn, its val-only reads, and checkpoints / resume of each."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from spatialspec import training
from spatialspec.checkpoints import read_checkpoint
from spatialspec.data.budget import apply_attribute_budget
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.evaluation.predict import load_checkpoint
from spatialspec.methods import dfr, get_method, jtt
from spatialspec.methods.groups import group_index
from spatialspec.models import BackboneConfig
from spatialspec.sweep.fitargs import fit_argv
from spatialspec.sweep.plan import NO_BUDGET, budget_key, plan

NAN = float("nan")


def _bce(z: float, y: int) -> float:
    return math.log1p(math.exp(-z)) if y == 1 else math.log1p(math.exp(z))


# ------------------------------------------------------------------------------------- groups


def test_group_index_label_by_attribute_and_unknown_per_label() -> None:
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    spurious = torch.tensor([0.0, 1.0, 0.0, 1.0, -1.0, NAN, -1.0])
    assert group_index(labels, spurious).tolist() == [0, 1, 2, 3, 4, 5, 5]
    with pytest.raises(ValueError, match="spurious must be 0, 1 or unknown"):
        group_index(torch.tensor([1.0]), torch.tensor([0.5]))


# ----------------------------------------------------------------------------------- groupdro


def test_groupdro_two_steps_match_a_hand_computation(small_backbone: BackboneConfig) -> None:
    eta = 0.5
    method = get_method("groupdro")(backbone=small_backbone, eta=eta).train()
    # step 1: groups 3, 2, 0, 0, 5 (unknown positive), 4 (unknown negative); group 1 absent
    y1, s1 = [1, 1, 0, 0, 1, 0], [1.0, 0.0, 0.0, 0.0, -1.0, NAN]
    z1 = [2.0, -1.0, 0.5, -0.5, 0.3, 1.5]
    # step 2: groups 1, 1, 2, 5
    y2, s2, z2 = [0, 0, 1, 1], [1.0, 1.0, 0.0, NAN], [1.0, 2.0, -0.2, 0.7]
    q = np.full(6, 1 / 6)
    for y, s, z in ((y1, s1, z1), (y2, s2, z2)):
        groups = group_index(torch.tensor(y, dtype=torch.float), torch.tensor(s)).tolist()
        losses = np.array([_bce(zi, yi) for zi, yi in zip(z, y, strict=True)])
        means = {g: losses[np.array(groups) == g].mean() for g in set(groups)}
        for g, m in means.items():
            q[g] *= math.exp(eta * m)
        q /= q.sum()
        expected = sum(q[g] * m for g, m in means.items())
        batch = {"label": torch.tensor(y, dtype=torch.float), "spurious": torch.tensor(s)}
        out = method.loss(torch.tensor(z), batch)
        assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
        assert out["erm_loss"].item() == pytest.approx(losses.mean(), rel=1e-6)
        np.testing.assert_allclose(method.group_weights.numpy(), q, rtol=1e-6)
    assert q[1] > q[0]  # group 1 (negatives with the tube) had the highest loss in step 2
    method.eval()  # validation computes the loss with q but never updates it
    method.loss(torch.tensor(z2), {"label": torch.tensor(y2, dtype=torch.float),
                                   "spurious": torch.tensor(s2)})  # fmt: skip
    np.testing.assert_allclose(method.group_weights.numpy(), q, rtol=1e-6)
    # q is a buffer: in the state dict, so in checkpoints and restored on resume
    other = get_method("groupdro")(backbone=small_backbone, eta=eta)
    other.load_state_dict(method.state_dict())
    torch.testing.assert_close(other.group_weights, method.group_weights)
    assert other.hparams.eta == eta


def test_groupdro_loss_backpropagates_through_the_group_means(
    small_backbone: BackboneConfig,
) -> None:
    method = get_method("groupdro")(backbone=small_backbone).train()
    z = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    batch = {"label": torch.tensor([1.0, 1.0, 0.0]), "spurious": torch.tensor([1.0, 1.0, NAN])}
    method.loss(z, batch)["loss"].backward()
    q = method.group_weights
    # d/dz of q3 * mean(BCE rows 0, 1) + q4 * BCE row 2, q fixed
    expected = [q[3] / 2 * (torch.sigmoid(z[0]) - 1), q[3] / 2 * (torch.sigmoid(z[1]) - 1),
                q[4] * torch.sigmoid(z[2])]  # fmt: skip
    torch.testing.assert_close(z.grad, torch.stack(expected).detach())


# ---------------------------------------------------------------------------------------- jtt


class _IndexImages(torch.utils.data.Dataset):
    """Row i's image is filled with i (so a fake network can look its logit up)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.full((1, 4, 4), float(i)), "image_id": self.records[i]["image_id"]}


class _FakeData:
    """The part of SpatialDataModule that split_pass reads."""

    eval_batch_size, num_workers, seed = 3, 0, 0

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records, self.splits = records, []

    def dataset(self, split: str) -> _IndexImages:
        self.splits.append(split)
        return _IndexImages(self.records)


def test_jtt_error_set_and_weights_on_a_hand_made_example(small_backbone: BackboneConfig) -> None:
    method = get_method("jtt")(backbone=small_backbone, upweight=10.0)
    labels = [1, 1, 0, 0, 1, 0, 1]
    spurious = [1, 0, 1, 0, 0, 1, NAN]
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, -0.1, 1.2, 0.4])  # wrong: rows 1, 2, 4, 5
    records = [
        {"image_id": f"r{i}", "label": y, "spurious": s}
        for i, (y, s) in enumerate(zip(labels, spurious, strict=True))
    ]
    data = _FakeData(records)
    method.net.image_logits = lambda x: logits[x[:, 0, 0, 0].long()]  # (B,)
    ids, info = method.identify_errors(data)
    assert data.splits == ["train"]
    assert ids == {"r1", "r2", "r4", "r5"}
    assert info["n_train"] == 7 and info["n_errors"] == 4
    # y1_s0 rows r1, r4 both wrong; y0_s1 rows r2, r5 both wrong; the rest right
    assert info["by_group"] == {"y0_s0": [0, 1], "y0_s1": [2, 2], "y1_s0": [2, 2],
                                "y1_s1": [0, 1], "y1_sna": [0, 1]}  # fmt: skip

    method.error_ids = ids
    batch = {"label": torch.tensor([1.0, 1.0, 0.0]), "image_id": ["r0", "r1", "v9"]}
    z = torch.tensor([0.3, -0.4, 0.8])
    weights = [1.0, 10.0, 1.0]
    bce = [_bce(0.3, 1), _bce(-0.4, 1), _bce(0.8, 0)]
    out = method.loss(z, batch)
    assert out["loss"].item() == pytest.approx(np.mean(np.multiply(weights, bce)), rel=1e-6)
    assert out["erm_loss"].item() == pytest.approx(np.mean(bce), rel=1e-6)

    # the error set travels in checkpoints
    checkpoint: dict[str, Any] = {}
    method.on_save_checkpoint(checkpoint)
    assert checkpoint["jtt"]["error_ids"] == ["r1", "r2", "r4", "r5"]
    restored = get_method("jtt")(backbone=small_backbone)
    restored.on_load_checkpoint(checkpoint)
    assert restored.error_ids == ids and restored.error_info == method.error_info

    # fresh stage-2 weights: every convolution and linear weight redrawn (norms start at 1, 0)
    before = {k: v.clone() for k, v in method.net.state_dict().items() if v.ndim >= 2}
    method.reinitialise()
    after = method.net.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_jtt_stages_selection_and_resume(tmp_path: Path, quick_fit_args: list[str]) -> None:
    out = tmp_path / "jtt"
    args = ["--method", "jtt", "--out_dir", str(out), *quick_fit_args,
            "--trainer.max_epochs", "2", "--model.first_stage_epochs", "1"]  # fmt: skip
    info = training.fit(args)
    last = read_checkpoint(out / "checkpoints" / "last.ckpt")
    best = read_checkpoint(info["best_checkpoint"])
    errors = last["jtt"]["error_ids"]
    assert errors is not None and last["jtt"]["info"]["epoch"] == 1
    assert last["jtt"]["info"]["n_train"] == 48 and len(errors) == last["jtt"]["info"]["n_errors"]
    # selection restarted at stage 2: the best checkpoint is a stage-2 model
    assert best["epoch"] == 1 and best["jtt"]["error_ids"] == errors
    # resumed with more epochs: the error set is the saved one, not rebuilt
    training.fit([*args[:-4], "--trainer.max_epochs", "3", "--model.first_stage_epochs", "1",
                  "--resume", "auto"])  # fmt: skip
    resumed = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == 2
    assert resumed["jtt"]["error_ids"] == errors and resumed["jtt"]["info"]["epoch"] == 1


# ---------------------------------------------------------------------------------------- dfr


def _features(n_per_group: dict[int, int], dim: int = 12, seed: int = 0):
    """Features whose column 0 carries the label and column 1 the attribute; noise elsewhere."""
    rng = np.random.default_rng(seed)
    groups = np.concatenate([np.full(n, g) for g, n in n_per_group.items()])
    labels = np.where(groups >= 4, groups - 4, groups // 2)
    x = rng.normal(size=(len(groups), dim))
    x[:, 0] += 1.5 * (2 * labels - 1)
    x[:, 1] += 3.0 * np.where(groups < 4, groups % 2, 0)
    return x, labels, groups


def test_balanced_subset_and_stratified_halves() -> None:
    groups = np.array([0] * 7 + [1] * 2 + [2] * 3 + [3] * 9)
    rng = np.random.default_rng(0)
    rows = dfr.balanced_subset(groups, rng)
    assert np.bincount(groups[rows]).tolist() == [2, 2, 2, 2]
    first, second = dfr.group_halves(groups, rng)
    assert np.bincount(groups[first]).tolist() == [4, 1, 2, 5]
    assert np.bincount(groups[second]).tolist() == [3, 1, 1, 4]
    assert sorted([*first, *second]) == list(range(len(groups)))


def test_fit_head_is_balanced_l1_and_folds_the_standardisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fits: list[Any] = []
    original = dfr.l1_logistic

    def spy(c: float):
        model = original(c)
        fits.append(model)
        return model

    monkeypatch.setattr(dfr, "l1_logistic", spy)
    x, labels, groups = _features({0: 30, 1: 4, 2: 5, 3: 25})
    head = dfr.fit_head(x, labels, groups, c_grid=(1.0, 0.1, 0.01), n_retrains=3, seed=1)
    assert len(fits) == 3 + 3  # one per C on the first half, then the refits
    for model in fits:
        params = model.get_params()
        assert params["solver"] == "liblinear"
        assert params.get("l1_ratio") == 1.0 or params.get("penalty") == "l1"
    # the refits see 4 rows of each group: 16 rows, 8 per label
    for model in fits[3:]:
        assert model.n_features_in_ == 12 and head.info["c"] == model.C
    assert head.info["n_balanced"] == 16 and head.info["rows_per_group"] == {
        "y0_s0": 30, "y0_s1": 4, "y1_s0": 5, "y1_s1": 25}  # fmt: skip
    assert head.info["tuned"] and set(head.info["search"]) == {"1.0", "0.1", "0.01"}
    best = max((1.0, 0.1, 0.01), key=lambda c: head.info["search"][str(c)])
    assert head.info["c"] == best
    # the head on raw features is the mean of the standardised fits
    z = (x - x.mean(0)) / x.std(0)
    mean_logit = np.mean([m.decision_function(z) for m in fits[3:]], axis=0)
    np.testing.assert_allclose(x @ head.weight + head.bias, mean_logit, rtol=1e-6, atol=1e-8)
    # L1 on group-balanced rows: at C = 0.3 only the label column survives; the attribute
    # column (no longer predictive once the groups are balanced) and the noise are zeroed
    strong = dfr.fit_head(x, labels, groups, c_grid=(0.3,), n_retrains=1, seed=1)
    assert strong.info["nonzero_weights"] == 1 and strong.weight[0] > 0
    assert strong.weight[1] == 0
    with pytest.raises(ValueError, match="both labels"):
        dfr.fit_head(x[labels == 1], labels[labels == 1], groups[labels == 1])


def test_fit_head_without_a_second_half_uses_the_first_c() -> None:
    x, labels, groups = _features({0: 1, 3: 1})
    head = dfr.fit_head(x, labels, groups, c_grid=(0.7, 0.1), n_retrains=2)
    assert head.info["c"] == 0.7 and not head.info["tuned"] and head.info["n_balanced"] == 2


def test_dfr_retrains_on_val_only_and_best_ckpt_holds_its_head(
    tmp_path: Path,
    quick_fit_args: list[str],
    tiny_synthetic: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {"splits": [], "ids": []}
    original_pass, original_fit = dfr.split_pass, dfr.fit_head

    def spy_pass(module, data, split, fn, dim, device=None):
        seen["splits"].append(split)
        features, records = original_pass(module, data, split, fn, dim, device)
        seen["ids"].append([r["image_id"] for r in records])
        seen["features"], seen["module"] = features, module
        return features, records

    def spy_fit(features, labels, groups, *args, **kwargs):
        seen["groups"] = np.asarray(groups)
        seen["solver_features"] = np.asarray(features)
        return original_fit(features, labels, groups, *args, **kwargs)

    monkeypatch.setattr(dfr, "split_pass", spy_pass)
    monkeypatch.setattr(dfr, "fit_head", spy_fit)
    out = tmp_path / "dfr"
    args = ["--method", "dfr", "--out_dir", str(out), *quick_fit_args,
            "--data.attribute_budget", "12", "--model.n_retrains", "3"]  # fmt: skip
    info = training.fit(args)

    manifest = pd.read_csv(tiny_synthetic, dtype={"image_id": str})
    val_ids = set(manifest.loc[manifest.split == "val", "image_id"])
    test_ids = set(manifest.loc[manifest.split == "test", "image_id"])
    assert seen["splits"] == ["val"]
    assert set(seen["ids"][0]) == val_ids and not set(seen["ids"][0]) & test_ids
    np.testing.assert_array_equal(seen["solver_features"], seen["features"].double().numpy())
    # the attribute budget: 12 val rows keep theirs, the other 12 are unknown (groups 4, 5)
    assert (seen["groups"] < 4).sum() == 12 and (seen["groups"] >= 4).sum() == 12

    best = read_checkpoint(info["best_checkpoint"])
    assert bool(best["state_dict"]["dfr_fitted"]) and best["dfr"]["split"] == "val"
    assert best["dfr"]["n_retrains"] == 3 and best["dfr"]["n_rows"] == 24
    last = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert not bool(last["state_dict"]["dfr_fitted"])  # the training state, ERM head only

    loaded, _ = load_checkpoint(info["best_checkpoint"])
    memory = seen["module"].eval()
    data = SpatialDataModule(str(tiny_synthetic), batch_size=8, annotation="label")
    images = next(iter(data.predict_loader("test")))["image"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(images), memory.score(images))
        features = loaded.features(images)
        expected = torch.sigmoid(features @ loaded.dfr_weight + loaded.dfr_bias)
        torch.testing.assert_close(loaded.score(images), expected)
        assert not torch.allclose(loaded.net.image_logits(images), features @ loaded.dfr_weight)

    # a finished fit resumed refits the same head (same features, same seeded draws)
    weight = best["state_dict"]["dfr_weight"].clone()
    training.fit([*args, "--resume", "auto"])
    again = read_checkpoint(info["best_checkpoint"])
    torch.testing.assert_close(again["state_dict"]["dfr_weight"], weight)


# --------------------------------------------------------------------------- attribute budget


def _frame(n_train: int = 40, n_val: int = 20) -> pd.DataFrame:
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * 10
    spurious = [float(i % 2) for i in range(len(splits))]
    spurious[3] = NAN  # an unannotated train row
    return pd.DataFrame({
        "image_id": [f"img{i:03d}" for i in range(len(splits))],
        "split": splits,
        "label": [i % 3 == 0 for i in range(len(splits))],
        "spurious": spurious,
    })  # fmt: skip


def _known(frame: pd.DataFrame, split: str) -> set[str]:
    rows = frame[(frame.split == split) & frame.spurious.notna()]
    return set(rows.image_id)


@pytest.mark.parametrize(("budget", "kept"), [(0, 0), (5, 5), ("10%", 4), (0.5, 20), ("all", 39)])
def test_attribute_budget_counts(budget: Any, kept: int) -> None:
    frame = _frame()
    out, info = apply_attribute_budget(frame, budget, "train", seed=0)
    assert len(_known(out, "train")) == info["n_attributes"] == kept
    assert info["n_known"] == 39 and info["n_rows"] == 40 and info["split"] == "train"
    assert _known(out, "train") <= _known(frame, "train")
    for split in ("val", "test"):  # other splits never change
        pd.testing.assert_frame_equal(out[out.split == split], frame[frame.split == split])
    kept_rows = out.spurious.notna()
    assert (out.spurious[kept_rows] == frame.spurious[kept_rows]).all()  # kept values unchanged


def test_attribute_budget_is_seeded_nested_and_row_order_free() -> None:
    frame = _frame()
    a, _ = apply_attribute_budget(frame, 8, "val", seed=3)
    b, _ = apply_attribute_budget(frame.sample(frac=1, random_state=1), 8, "val", seed=3)
    assert _known(a, "val") == _known(b, "val") and len(_known(a, "val")) == 8
    bigger, _ = apply_attribute_budget(frame, 15, "val", seed=3)
    assert _known(a, "val") < _known(bigger, "val")
    other, _ = apply_attribute_budget(frame, 8, "val", seed=4)
    assert _known(other, "val") != _known(a, "val")
    assert _known(a, "train") == _known(frame, "train")
    with pytest.raises(ValueError, match="attribute budget 21 exceeds the 20 val rows"):
        apply_attribute_budget(frame, 21, "val")
    with pytest.raises(ValueError, match="attribute budget must be"):
        apply_attribute_budget(frame, "lots", "val")


def test_datamodule_budget_reaches_training_not_metrics(tiny_synthetic: Path) -> None:
    data = SpatialDataModule(
        str(tiny_synthetic), annotation="label", attribute_budget="25%", attribute_split="val"
    )
    data.setup("fit")
    assert data.attribute_budget_info == {"budget": "25%", "split": "val", "n_attributes": 6,
                                          "n_known": 24, "n_rows": 24}  # fmt: skip
    assert data.split_frame("val").spurious.notna().sum() == 6  # what dfr reads
    assert data.split_frame("val", metric=True).spurious.notna().sum() == 24
    val = torch.cat([b["spurious"] for b in data.val_dataloader()])
    assert (val >= 0).all()  # val/robust_auroc reads every attribute
    train = SpatialDataModule(
        str(tiny_synthetic), annotation="label", attribute_budget=10, attribute_split="train"
    )
    spurious = torch.tensor([r["spurious"] for r in train.dataset("train", train=True).records])
    assert spurious.isnan().sum() == 48 - 10
    # a method without attributes refuses the option
    plain = SpatialDataModule(str(tiny_synthetic), annotation="label", attribute_budget=10)
    with pytest.raises(ValueError, match="trains on no spurious attributes"):
        plain.setup("fit")
    none = SpatialDataModule(str(tiny_synthetic), annotation="label", attribute_split="train")
    _ = none.frame
    assert none.attribute_budget_info["budget"] == "all"
    assert none.attribute_budget_info["n_attributes"] == 48


def test_sweep_budget_axis_is_the_attribute_for_attribute_methods() -> None:
    assert budget_key("groupdro") == budget_key("dfr") == "data.attribute_budget"
    assert budget_key("seg") == "data.mask_budget"
    assert budget_key("binary") is None and budget_key("jtt") is None
    runs = plan("jtt,groupdro", "0.1,all", "0")
    assert [(r.method, r.budget) for r in runs] == [
        ("jtt", NO_BUDGET), ("groupdro", "0.1"), ("groupdro", "all")]  # fmt: skip
    argv = fit_argv(runs[1], "configs/synthetic/binary.yaml", "runs/g")
    assert argv[argv.index("--data.attribute_budget") + 1] == "0.1"
    assert "--data.mask_budget" not in argv


def test_jtt_restart_selection_demotes_stage_one_scores() -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    best = ModelCheckpoint(monitor="val/auroc", mode="max")
    best.best_k_models = {"best.ckpt": torch.tensor(0.9)}
    best.kth_best_model_path, best.kth_value = "best.ckpt", torch.tensor(0.9)
    best.best_model_path, best.best_model_score = "best.ckpt", torch.tensor(0.9)
    last = ModelCheckpoint(monitor=None)

    class _Trainer:
        checkpoint_callbacks = (best, last)

    jtt.restart_selection(_Trainer())
    assert best.best_k_models["best.ckpt"] == -math.inf and best.kth_value == -math.inf
    assert best.best_model_path == "best.ckpt"  # the next save replaces this file
    # any stage-2 score beats the demoted one (ModelCheckpoint's test for mode="max")
    assert torch.gt(torch.tensor(0.1), best.best_k_models[best.kth_best_model_path])
