"""Resumable fits: ``fit --resume auto`` ends with the weights of an uninterrupted fit.

Tolerance: the weights are compared with ``atol=1e-6`` (a resumed CPU fit reproduces every
draw, so the measured difference is exactly 0). Covered: a 2-epoch fit extended to 3 epochs, a
fit SIGKILLed after its second epoch, and a fit stopped mid-epoch by the SLURM requeue signal
(checkpointed at the batch boundary); plus the refusals and the checkpoint errors.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from spatialspec import cli, training
from spatialspec.checkpoints import AtomicCheckpointIO, CheckpointError
from spatialspec.fitting.requeue import Requeued
from spatialspec.training import fit

BUDGET = ["--data.mask_budget", "25%", "--data.annotated_batch_fraction", "0.25"]


@pytest.fixture
def args(tiny_synthetic: Path, fast_backbone_args: list[str]) -> list[str]:
    """A whole-epoch fit of 6 batches on the tiny benchmark (no batch limits)."""
    return [
        "--data.manifest", str(tiny_synthetic), "--data.batch_size", "8",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
        "--trainer.num_sanity_val_steps", "0", "--model.lr", "0.01", "--seed", "5",
        *fast_backbone_args,
    ]  # fmt: skip


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:  # teacher.* (seg_ssl's EMA teacher) included
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


def _training_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv rows of the curves (without the end-of-invocation best/final row)."""
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = sorted({k for r in rows for k in r if not k.startswith(("best/", "final/"))})
    return [{k: r.get(k, "") for k in keys} for r in rows if not any(
        r.get(k) for k in r if k.startswith(("best/", "final/")))]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "extra"),
    [("seg", []), ("seg_ssl", BUDGET), ("seg_spl", BUDGET),
     ("binary", ["--data.undersample_negatives", "0.5"])],
)  # fmt: skip
def test_extending_a_fit_equals_the_longer_fit(tmp_path, args, method, extra) -> None:
    base = ["--method", method, *args, *extra]
    fit([*base, "--trainer.max_epochs", "3", "--out_dir", str(tmp_path / "whole")])
    fit([*base, "--trainer.max_epochs", "2", "--out_dir", str(tmp_path / "part")])
    info = fit([*base, "--trainer.max_epochs", "3", "--out_dir", str(tmp_path / "part"),
                "--resume", "auto"])  # fmt: skip
    _assert_same_weights(tmp_path / "whole", tmp_path / "part")
    assert _training_rows(tmp_path / "whole") == _training_rows(tmp_path / "part")
    assert [i["from_epoch"] for i in info["invocations"]] == [0, 1]
    steps = info["global_steps"]  # 6 batches an epoch; 4 when undersampled
    assert steps in (18, 12) and info["invocations"][1]["from_step"] == steps // 3 * 2
    assert info["fit_seconds"] == pytest.approx(sum(i["seconds"] for i in info["invocations"]))


KILLER = """
import os, signal, sys
import lightning as L
import torch
from spatialspec import training

torch.set_num_threads(1)
build = training.build_trainer

class Kill(L.Callback):  # SIGKILL cannot be caught: nothing of the fit runs after it
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

def with_kill(*a, **k):
    trainer, checkpoint = build(*a, **k)
    trainer.callbacks.append(Kill())
    return trainer, checkpoint

training.build_trainer = with_kill
training.fit(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigkilled_fit_resumes_to_the_uninterrupted_weights(tmp_path, args) -> None:
    base = ["--method", "seg_ssl", *args, *BUDGET, "--trainer.max_epochs", "3"]
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    run = tmp_path / "killed"
    done = subprocess.run(
        [sys.executable, str(script), *base, "--out_dir", str(run), "--resume", "auto"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not (run / "run.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    fit([*base, "--out_dir", str(run), "--resume", "auto"])  # the same command again
    fit([*base, "--out_dir", str(tmp_path / "whole")])
    _assert_same_weights(tmp_path / "whole", run)
    assert _training_rows(tmp_path / "whole") == _training_rows(run)


class _SignalAt(L.Callback):
    """Sends this process the SLURM requeue signal during batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, b: Any, i: int) -> None:
        if (trainer.current_epoch, i) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGUSR1)


def test_requeue_signal_checkpoints_mid_epoch_and_resumes_exactly(
    tmp_path, args, monkeypatch
) -> None:
    base = ["--method", "seg_ssl", *args, *BUDGET, "--trainer.max_epochs", "2"]
    fit([*base, "--out_dir", str(tmp_path / "whole")])
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "spatialspec-test",
                       "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)  # Lightning runs as under SLURM (no job id: no requeue)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    build = training.build_trainer

    def with_signal(*a: Any, **k: Any) -> Any:
        trainer, checkpoint = build(*a, **k)
        trainer.callbacks.append(_SignalAt(epoch=1, batch=2))
        return trainer, checkpoint

    monkeypatch.setattr(training, "build_trainer", with_signal)
    run = tmp_path / "requeued"
    with pytest.raises(Requeued, match=r"hpc_ckpt_1\.ckpt at step 9"):
        fit([*base, "--out_dir", str(run), "--resume", "auto"])
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == 9  # saved after batch 2 of epoch 1 (6 batches an epoch)
    assert hpc["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "start": 3}]
    monkeypatch.setattr(training, "build_trainer", build)
    info = fit([*base, "--out_dir", str(run), "--resume", "auto"])  # the requeued job
    assert info["invocations"][-1]["resumed_from"].endswith("hpc_ckpt_1.ckpt")
    assert info["invocations"][-1]["from_step"] == 9
    assert not (run / "hpc_ckpt_1.ckpt").exists()  # superseded by last.ckpt
    _assert_same_weights(tmp_path / "whole", run)
    assert _training_rows(tmp_path / "whole") == _training_rows(run)


# ------------------------------------------------------------------------------- refusals


@pytest.fixture
def finished(tmp_path, quick_fit_args) -> tuple[Path, list[str]]:
    """A finished 1-epoch seg run and the arguments that made it."""
    base = ["--method", "seg", *quick_fit_args, "--out_dir", str(tmp_path / "run")]
    fit(base)
    return tmp_path / "run", base


def test_resume_refuses_another_config(finished) -> None:
    run, base = finished
    with pytest.raises(ValueError, match=r"model.lr: 0.001 -> 0.5") as err:
        fit([*base, "--model.lr", "0.5", "--resume", "auto"])
    assert "Only trainer.max_epochs" in str(err.value) and str(run) in str(err.value)
    with pytest.raises(ValueError, match="pick one"):
        fit([*base, "--resume", "auto", "--overwrite", "true"])
    with pytest.raises(FileExistsError, match="--resume auto"):
        fit(base)  # neither resume nor overwrite
    info = fit([*base, "--resume", "auto", "--progress_every", "3"])  # display only: allowed
    assert len(info["invocations"]) == 2  # nothing left to train, the run is recorded again


def test_a_run_from_before_an_added_option_resumes_at_its_default(finished) -> None:
    """A config.yaml without data.specificity (runs made before the option) still resumes,
    unless the fit now asks for another level."""
    import yaml

    run, base = finished
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"].pop("specificity") == "mask"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    info = fit([*base, "--resume", "auto"])
    assert len(info["invocations"]) == 2
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ValueError, match=r"data.specificity: '<absent>' -> 'dilate:2'"):
        fit([*base, "--resume", "auto", "--data.specificity", "dilate:2"])


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path, quick_fit_args) -> None:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text("epoch,step,train/loss\n0,0,9.0\n")  # died early
    info = fit(["--method", "binary", *quick_fit_args, "--out_dir", str(run), "--resume", "auto"])
    assert info["invocations"][0]["resumed_from"] is None
    assert "9.0" in (run / "logs" / "metrics.superseded.csv").read_text()  # kept, set aside
    assert "9.0" not in (run / "logs" / "metrics.csv").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"garbage" * 50, "not a PyTorch checkpoint"),
     (None, "truncated or corrupt")],
)  # fmt: skip
def test_broken_checkpoints_are_named(finished, content, message, capsys) -> None:
    run, base = finished
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000] if content is None else content)
    with pytest.raises(CheckpointError, match=f"{last}: .*{message}"):
        fit([*base, "--resume", "auto"])
    report = str(run / "r.json")
    assert cli.main(["evaluate", "--checkpoint", str(last), "--out", report]) == 2
    err = capsys.readouterr().err
    assert str(last) in err and message in err and "operand" not in err.split(message)[0]
    audit = ["audit", "masking", "--checkpoint", str(last), "--out", str(run / "audit")]
    assert cli.main(audit) == 2
    assert str(last) in capsys.readouterr().err


def test_foreign_and_weights_only_checkpoints(tmp_path, finished) -> None:
    run, base = finished
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0}, foreign)
    with pytest.raises(CheckpointError, match="not a spatialspec checkpoint"):
        fit([*base, "--resume", str(foreign)])
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    del best["optimizer_states"]
    torch.save(best, tmp_path / "weights.ckpt")
    with pytest.raises(CheckpointError, match="optimizer_states missing"):
        fit([*base, "--resume", str(tmp_path / "weights.ckpt")])


def test_checkpoint_saves_are_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def dies_half_way(obj: Any, fh: Any) -> None:
        fh.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    kept = torch.load(path, weights_only=True)["state_dict"]["w"]
    assert torch.equal(kept, torch.ones(3)) and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_old_checkpoints_with_pruned_encoder_weights_load(finished) -> None:
    """Checkpoints saved before the unused encoder stages were pruned still load."""
    from spatialspec.evaluation.predict import load_checkpoint

    run, _ = finished
    best = run / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, weights_only=True)
    ckpt["state_dict"]["net.encoder.model.blocks.5.0.conv.weight"] = torch.zeros(1)
    torch.save(ckpt, best)
    method, config = load_checkpoint(best)
    assert config["method"] == "seg" and method.net.pruned
    info = json.loads((run / "run.json").read_text())
    assert info["last_checkpoint"].endswith("last.ckpt")
