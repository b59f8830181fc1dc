"""Experiment loggers: TensorBoard, MLflow and W&B write offline; their values equal the CSV."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from spatialspec import cli
from spatialspec.fitting.loggers import parse_logger_names
from spatialspec.training import fit

pytestmark = pytest.mark.timeout(600)


def _csv_metrics(run: Path) -> dict[str, dict[int, float]]:
    """``metric -> {step: value}`` of ``logs/metrics.csv``."""
    out: dict[str, dict[int, float]] = {}
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key not in ("epoch", "step") and value != "":
                    out.setdefault(key, {})[int(row["step"])] = float(value)
    return out


def _tensorboard_metrics(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _mlflow(uri: str, run_id: str) -> tuple[dict[str, dict[int, float]], object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    metrics = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
               for key in run.data.metrics}  # fmt: skip
    return metrics, run


@pytest.fixture(scope="module")
def logged(tmp_path_factory, quick_fit_args) -> dict:
    """A 1-epoch seg fit with TensorBoard and MLflow, then resumed to 2 epochs."""
    root = tmp_path_factory.mktemp("loggers")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    base = [
        "--method", "seg", *quick_fit_args, "--out_dir", str(root / "run"),
        "--loggers", "tensorboard,mlflow", "--mlflow_tracking_uri", uri,
        "--run_name", "seg/seed-0", "--tags", '{"method": "seg", "seed": "0"}',
    ]  # fmt: skip
    first = fit(base)
    ids = json.loads((root / "run" / "logs" / "loggers.json").read_text())
    first_metrics, _ = _mlflow(uri, ids["mlflow"]["run_id"])
    second = fit([*base, "--trainer.max_epochs", "2", "--resume", "auto"])
    return {"run": root / "run", "uri": uri, "ids": ids, "first": first, "second": second,
            "first_mlflow": first_metrics}  # fmt: skip


def test_tensorboard_values_equal_the_csv(logged) -> None:
    run = logged["run"]
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    csv_values, tb = _csv_metrics(run), _tensorboard_metrics(run)
    for key in ("train/loss", "val/auroc", "val/robust_auroc", "val/loss", "best/val/auroc"):
        assert tb[key] == pytest.approx(csv_values[key], abs=1e-6), key


def test_mlflow_run_holds_config_curves_and_tags(logged) -> None:
    metrics, run = _mlflow(logged["uri"], logged["ids"]["mlflow"]["run_id"])
    csv_values = _csv_metrics(logged["run"])
    for key in ("train/loss", "val/auroc", "val/loss", "final/val/robust_auroc"):
        assert metrics[key] == pytest.approx(csv_values[key], abs=1e-6), key
    assert run.info.run_name == "seg/seed-0" and run.info.status == "FINISHED"
    assert run.data.tags["method"] == "seg" and run.data.tags["seed"] == "0"
    params = run.data.params
    assert params["method"] == "seg" and params["model/backbone/encoder_name"]
    assert params["trainer/max_epochs"] == "1"  # logged at the start; a resume cannot change it
    assert run.data.tags["changed_on_resume/trainer/max_epochs"] == "1 -> 2"


def test_resumed_fit_continues_the_same_mlflow_run(logged) -> None:
    """The second invocation logged into the run of the first: one run, both epochs."""
    metrics, _ = _mlflow(logged["uri"], logged["ids"]["mlflow"]["run_id"])
    epochs = sorted(metrics["val/auroc"])
    assert len(epochs) == 2 and len(logged["first_mlflow"]["val/auroc"]) == 1
    assert logged["second"]["invocations"][-1]["from_epoch"] == 0


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_runs_offline_in_the_run_folder(tmp_path, quick_fit_args, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    fit(["--method", "binary", *quick_fit_args, "--out_dir", str(run), "--loggers", "wandb"])
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    ids = json.loads((run / "logs" / "loggers.json").read_text())
    assert ids["wandb"]["id"] in offline[0].name


def test_a_missing_extra_is_named(tmp_path, quick_fit_args, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))  # fmt: skip
    argv = ["fit", "--method", "seg", *quick_fit_args, "--out_dir", str(tmp_path / "r"),
            "--loggers", "mlflow"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "pip install 'spatialspec[loggers]'" in capsys.readouterr().err


def test_logger_names() -> None:
    assert parse_logger_names("tensorboard, MLflow,csv,tensorboard") == ["tensorboard", "mlflow"]
    assert parse_logger_names(["wandb"]) == ["wandb"] and parse_logger_names(None) == []
    with pytest.raises(KeyError, match="valid names: mlflow, tensorboard, wandb"):
        parse_logger_names("neptune")
