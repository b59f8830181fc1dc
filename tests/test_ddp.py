"""DDP fits with 2 CPU processes (gloo) for every registered method, under Lightning's default
``ddp`` strategy: with and without a mask budget and negative undersampling.

One launch (tests/ddp_driver.py) runs every fit, since starting the two processes costs ~20 s.
Each fit is checked for: completion with no unused parameters (the default strategy refuses
them), one ``run.json`` and one closing line (rank 0), ranks that together trained on exactly
the single-process draw of the epoch (disjoint whole batches, at most one padding batch, the
annotated share in every batch), and validation metrics equal to the single-process values of
the same weights.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.evaluation.predict import datamodule_for, load_checkpoint, predict_splits
from spatialspec.methods import METHODS
from spatialspec.metrics import robust_auroc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DRIVER = Path(__file__).with_name("ddp_driver.py")
BUDGETED = ["--data.mask_budget", "25%", "--data.undersample_negatives", "0.5",
            "--data.annotated_batch_fraction", "0.25"]  # fmt: skip


def _variants() -> list[tuple[str, bool]]:
    """Every method, with a budget and undersampling and without."""
    return [(m, budgeted) for m in METHODS.names() for budgeted in (True, False)]


@pytest.fixture(scope="module")
def ddp_runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_synthetic: Path, fast_backbone_args: list[str]
) -> dict[tuple[str, bool], Path]:
    root = tmp_path_factory.mktemp("ddp")
    common = [
        "--data.manifest", str(tiny_synthetic), "--data.batch_size", "8",
        "--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0", "--model.lr", "0.01", "--seed", "3",
        *fast_backbone_args,
    ]  # fmt: skip
    runs, spec = {}, []
    for method, budgeted in _variants():
        out = root / f"{method}-{'budget' if budgeted else 'plain'}"
        runs[method, budgeted] = out
        spec.append([str(out), ["--method", method, *common, *(BUDGETED if budgeted else [])]])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(spec)], capture_output=True, text=True,
        timeout=800, env=env, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    closing = [ln for ln in done.stdout.splitlines() if ln.startswith("best checkpoint:")]
    assert len(closing) == len(spec), done.stdout  # printed by rank 0 only
    return runs


@pytest.mark.parametrize(("method", "budgeted"), _variants())
def test_ddp_fit(ddp_runs, method: str, budgeted: bool) -> None:
    out = ddp_runs[method, budgeted]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["epochs_run"] == 1
    assert info["config"]["trainer"]["strategy"] == "ddp"
    with open(out / "logs" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    val = [r for r in rows if r.get("val/auroc")]
    assert len(val) == 1  # one process logged one validation

    _check_ranks_trained_on_the_single_process_draw(out, info, budgeted)
    _check_validation_equals_one_process(out, val[0])


def _check_ranks_trained_on_the_single_process_draw(out: Path, info: dict, budgeted: bool):
    seen = [json.loads((out / f"seen-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == 2 for s in seen)
    config = yaml.safe_load((out / "config.yaml").read_text())
    method = METHODS.get(config["method"])
    data = SpatialDataModule(
        **config["data"], annotation=method.annotation, channels=1, seed=config["seed"]
    )
    dataset = data.dataset("train", train=True)
    ids = [rec["image_id"] for rec in dataset.records]
    single = [[ids[i] for i in batch] for batch in data.train_draw(dataset).batches(0)]
    ranks = [s["batches"] for s in seen]
    assert len(ranks[0]) == len(ranks[1]) == -(-len(single) // 2)
    counts = Counter(tuple(b) for r in ranks for b in r)
    assert set(counts) == {tuple(b) for b in single}  # disjoint shards of the same draw
    assert sum(counts.values()) - len(single) == len(single) % 2  # at most one padding batch
    if budgeted:
        frame = data.frame.set_index("image_id")
        n_pos = int((frame.loc[ids, "label"] == 1).sum())
        assert sum(len(b) for b in single) <= len(single) * 8
        assert len({i for b in single for i in b}) <= n_pos + round(0.5 * n_pos)
        masked = frame["mask_available"]
        if config["method"] != "binary":  # the annotated batches: >= 2 of 8 rows with a mask
            assert all(sum(masked[i] > 0.5 for i in b) >= 2 for r in ranks for b in r)


def _check_validation_equals_one_process(out: Path, logged: dict) -> None:
    method, config = load_checkpoint(out / "checkpoints" / "last.ckpt")
    data = datamodule_for(method, config)
    preds = predict_splits(method, data, ("val",), accelerator="cpu", progress=False)
    frame = data.frame.set_index("image_id").loc[preds["image_id"]]
    labels, scores = frame["label"].to_numpy(), preds["score"].to_numpy()
    assert float(logged["val/auroc"]) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    spurious = frame["spurious"].to_numpy(float)
    expected = robust_auroc(scores, labels, spurious, on_single_class="nan")
    value = float(logged["val/robust_auroc"])
    assert (np.isnan(value) and np.isnan(expected)) or value == pytest.approx(expected, abs=1e-6)


def test_pruned_networks_train_every_parameter(small_backbone) -> None:
    """What lets the default ``ddp`` strategy run: no parameter without a gradient."""
    batch = {
        "image": torch.randn(4, 1, 64, 64), "label": torch.tensor([1.0, 0, 1, 0]),
        "mask": (torch.rand(4, 1, 64, 64) > 0.9).float(),
        "mask_available": torch.tensor([1.0, 1, 0, 0]), "spurious": torch.zeros(4),
        "image_id": ["a", "b", "c", "d"],
    }  # fmt: skip
    for name in METHODS.names():
        model = METHODS.get(name)(backbone=small_backbone)
        model.compute_loss(batch)["loss"].backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert unused == [], name
        assert model.net.pruned  # the small backbone's last encoder stages are not used
