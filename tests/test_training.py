"""Tests for spatialspec.training: config files, command-line parsing and the run folder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from spatialspec.methods import get_method
from spatialspec.training import (
    build_components,
    deep_merge,
    fit,
    load_config_file,
    parse_fit_args,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"


def _raw(name: str) -> dict[str, Any]:
    """A shipped config file as written (no include resolution)."""
    return yaml.safe_load((CONFIGS / name).read_text())


def _write(path: Path, payload: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(payload))
    return path


# ------------------------------------------------------------------------------- config files


def test_deep_merge_child_wins_and_inputs_are_untouched() -> None:
    base = {"a": 1, "model": {"lr": 0.1, "backbone": {"depth": 5, "name": "r18"}}, "keep": [1]}
    override = {"model": {"backbone": {"depth": 4}}, "a": 2, "new": True}
    merged = deep_merge(base, override)
    assert merged == {
        "a": 2,
        "model": {"lr": 0.1, "backbone": {"depth": 4, "name": "r18"}},
        "keep": [1],
        "new": True,
    }
    assert base["model"]["backbone"]["depth"] == 5  # not mutated
    merged["keep"].append(2)
    assert base["keep"] == [1]  # deep copy


def test_base_include_deep_merges_with_child_winning(tmp_path: Path) -> None:
    _write(tmp_path / "root.yaml", {"seed": 1, "trainer": {"max_epochs": 8, "devices": 1}})
    (tmp_path / "sub").mkdir()
    _write(
        tmp_path / "sub" / "mid.yaml",
        {"base": "../root.yaml", "trainer": {"max_epochs": 3}, "model": {"lr": 0.5}},
    )
    _write(tmp_path / "sub" / "leaf.yaml", {"base": "mid.yaml", "seed": 7, "model": {"topk": 4}})
    cfg = load_config_file(tmp_path / "sub" / "leaf.yaml")
    assert cfg == {
        "seed": 7,
        "trainer": {"max_epochs": 3, "devices": 1},
        "model": {"lr": 0.5, "topk": 4},
    }


def test_shipped_seg_config_resolves_its_base() -> None:
    base, seg = _raw("base.yaml"), _raw("seg.yaml")
    assert seg["base"] == "base.yaml"
    cfg = load_config_file(CONFIGS / "seg.yaml")
    assert "base" not in cfg
    assert cfg["method"] == "seg"
    for key, value in seg["model"].items():  # the including file's keys...
        assert cfg["model"][key] == value
    for key, value in base["model"].items():  # ...merged into the base's
        if key not in seg["model"]:
            assert cfg["model"][key] == value
    assert cfg["trainer"] == {**base["trainer"], **seg.get("trainer", {})}


def test_include_cycle_raises(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"base": "b.yaml", "seed": 1})
    _write(tmp_path / "b.yaml", {"base": "a.yaml", "seed": 2})
    with pytest.raises(
        ValueError, match=r"config include cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"
    ):
        load_config_file(tmp_path / "a.yaml")


def test_self_include_is_a_cycle(tmp_path: Path) -> None:
    _write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ValueError, match="config include cycle"):
        load_config_file(tmp_path / "self.yaml")


def test_missing_base_and_non_mapping(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"base": "nope.yaml"})
    with pytest.raises(FileNotFoundError, match=r"config file not found: .*nope\.yaml"):
        load_config_file(tmp_path / "a.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="a config must be a YAML mapping, got list"):
        load_config_file(tmp_path / "list.yaml")


# ------------------------------------------------------------------------------- parsing


def test_cli_overrides_win_over_files(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    seg = str(CONFIGS / "seg.yaml")
    from_file = load_config_file(seg)
    _, cfg = parse_fit_args(["--config", seg, "--out_dir", out])
    assert cfg.trainer.max_epochs == from_file["trainer"]["max_epochs"]
    assert cfg.out_dir == out
    epochs = str(from_file["trainer"]["max_epochs"] + 7)
    topk = str(from_file["model"].get("topk", 16) + 3)
    for argv in (
        ["--config", seg, "--trainer.max_epochs", epochs, "--out_dir", out],
        ["--trainer.max_epochs", epochs, "--config", seg, "--out_dir", out],  # order is irrelevant
        [f"--config={seg}", f"--trainer.max_epochs={epochs}", f"--out_dir={out}"],
    ):
        _, cfg = parse_fit_args([*argv, "--model.topk", topk])
        assert cfg.trainer.max_epochs == int(epochs), argv
        assert cfg.model.topk == int(topk)
        assert cfg.method == "seg"
        assert cfg.out_dir == out
        depth = from_file["model"]["backbone"]["encoder_depth"]
        assert cfg.model.backbone.encoder_depth == depth  # the rest still comes from the files


def test_later_config_files_win(tmp_path: Path) -> None:
    extra = _write(tmp_path / "extra.yaml", {"seed": 42, "model": {"lr": 0.125}})
    _, cfg = parse_fit_args(
        ["--config", str(CONFIGS / "seg.yaml"), "--config", str(extra), "--out_dir", "x"]
    )
    assert cfg.seed == 42
    assert cfg.model.lr == 0.125
    assert cfg.model.pooling == load_config_file(CONFIGS / "seg.yaml")["model"]["pooling"]


def test_method_override_switches_the_method_class(tmp_path: Path, small_backbone) -> None:
    argv = ["--config", str(CONFIGS / "binary.yaml"), "--out_dir", str(tmp_path)]
    parser, cfg = parse_fit_args([*argv, "--data.manifest", "m.csv"])
    assert cfg.method == "binary"
    assert "pooling" not in cfg.model
    parser, cfg = parse_fit_args([*argv, "--method", "seg", "--data.manifest", "m.csv"])
    assert cfg.method == "seg"
    assert cfg.model.pooling == "topk"  # the seg class's default (binary.yaml sets none)
    model, data = build_components(cfg, parser)
    assert type(model) is get_method("seg")
    assert data.annotation == "mask"
    assert data.manifest_path == "m.csv"
    parser, cfg = parse_fit_args([*argv, "--method=bbox", "--data.manifest", "m.csv"])
    model, data = build_components(cfg, parser)
    assert type(model) is get_method("bbox")
    assert data.annotation == "box"
    assert data.channels == model.backbone.in_channels == 1


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(KeyError, match=r"unknown method 'segg'; valid names: .*binary.*seg"):
        parse_fit_args(["--method", "segg", "--out_dir", "x", "--data.manifest", "m.csv"])


def test_missing_method_is_an_error() -> None:
    with pytest.raises(ValueError, match=re.escape("no method given")):
        parse_fit_args(["--out_dir", "x", "--data.manifest", "m.csv"])


def test_unknown_key_exits_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        parse_fit_args(
            ["--config", str(CONFIGS / "seg.yaml"), "--out_dir", "x", "--trainer.max_epochz_", "1"]
        )
    assert err.value.code == 2
    assert "--trainer.max_epochz_" in capsys.readouterr().err


def test_unknown_key_in_a_config_file_exits(tmp_path: Path, capsys) -> None:
    bad = _write(tmp_path / "bad.yaml", {"base": str(CONFIGS / "seg.yaml"), "model": {"lrr": 1}})
    with pytest.raises(SystemExit) as err:
        parse_fit_args(["--config", str(bad), "--out_dir", "x"])
    assert err.value.code == 2
    assert "lrr" in capsys.readouterr().err


def test_bad_monitor_exits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_fit_args(
            ["--config", str(CONFIGS / "seg.yaml"), "--out_dir", "x", "--monitor", "val/acc"]
        )
    err = capsys.readouterr().err
    assert 'Parser key "monitor"' in err
    assert "Got value: val/acc" in err
    assert all(m in err for m in ("val/auroc", "val/robust_auroc", "val/loss"))


# ------------------------------------------------------------------------------- the run folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, quick_fit_args: list[str]) -> dict[str, Any]:
    """One quick fit of ``seg`` (from the shipped config) shared by the run-folder tests."""
    out = tmp_path_factory.mktemp("fit") / "seg"
    argv = ["--config", str(CONFIGS / "seg.yaml"), "--out_dir", str(out), "--seed", "5"]
    info = fit([*argv, *quick_fit_args])
    return {"out": out, "info": info, "argv": [*argv, *quick_fit_args]}


def test_fit_writes_resolved_config(run: dict[str, Any], tiny_synthetic: Path) -> None:
    config = yaml.safe_load((run["out"] / "config.yaml").read_text())
    assert config["method"] == "seg"
    assert config["seed"] == 5
    from_file = load_config_file(CONFIGS / "seg.yaml")
    assert config["monitor"] == from_file["monitor"]
    assert config["out_dir"] == str(run["out"])
    assert config["model"]["pooling"] == from_file["model"]["pooling"]
    assert config["model"]["backbone"]["decoder_channels"] == [16, 16, 8, 8]
    assert config["data"]["manifest"] == str(tiny_synthetic)
    assert config["trainer"]["max_epochs"] == 1
    assert "base" not in config


def test_resolved_config_is_reloadable(run: dict[str, Any], tmp_path: Path) -> None:
    """config.yaml parses back (as a --config) to the same settings."""
    _, cfg = parse_fit_args(["--config", str(run["out"] / "config.yaml")])
    assert cfg.method == "seg"
    assert cfg.seed == 5
    assert cfg.model.backbone.decoder_channels == (16, 16, 8, 8)
    assert cfg.trainer.limit_train_batches == 2


def test_fit_writes_run_json(run: dict[str, Any]) -> None:
    info = json.loads((run["out"] / "run.json").read_text())
    assert info["method"] == "seg"
    assert info["seed"] == 5
    assert info["monitor"] == load_config_file(CONFIGS / "seg.yaml")["monitor"]
    assert "git_commit" in info
    assert info["versions"]["torch"]
    assert info["versions"]["lightning"]
    assert info["epochs_run"] == 1
    assert info["global_steps"] == 2
    assert Path(info["best_checkpoint"]).is_file()
    assert Path(info["best_checkpoint"]).parent == run["out"] / "checkpoints"
    assert Path(info["last_checkpoint"]).is_file()
    assert 0.0 <= info["best_score"] <= 1.0
    assert info["config"]["method"] == "seg"
    assert info == json.loads(json.dumps(run["info"], default=str))


def test_fit_writes_metrics_csv(run: dict[str, Any]) -> None:
    with open(run["out"] / "logs" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"epoch", "step", "val/auroc", "val/robust_auroc", "val/loss"} <= set(rows[0])
    val = [r for r in rows if r["val/auroc"]]
    assert len(val) == 1
    monitor = run["info"]["monitor"]
    assert float(val[0][monitor]) == pytest.approx(run["info"]["best_score"])
    assert any(r.get("train/loss") for r in rows)


def test_fit_refuses_to_overwrite_a_run(run: dict[str, Any]) -> None:
    best = Path(run["info"]["best_checkpoint"])
    stamp = best.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match=re.escape(f"{run['out']} already holds a run")):
        fit(run["argv"])
    assert best.stat().st_mtime_ns == stamp  # nothing was touched


@pytest.mark.filterwarnings("error:Experiment logs directory")  # the old logs are cleared
def test_fit_overwrite_replaces_the_run(run: dict[str, Any]) -> None:
    (run["out"] / "logs" / "stale.txt").write_text("from the replaced run")
    info = fit([*run["argv"], "--overwrite", "true"])
    assert not (run["out"] / "logs" / "stale.txt").exists()
    assert Path(info["best_checkpoint"]).is_file()
    with open(run["out"] / "logs" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["val/auroc"]]
    assert len(rows) == 1  # the old metrics were removed, not appended to


def test_build_trainer_progress_bar_refresh(tmp_path: Path) -> None:
    from spatialspec.training import build_trainer

    trainer, _ = build_trainer({"accelerator": "cpu"}, tmp_path, progress_every=7)
    assert trainer.progress_bar_callback.refresh_rate == 7
    quiet, _ = build_trainer({"accelerator": "cpu", "enable_progress_bar": False}, tmp_path)
    assert quiet.progress_bar_callback is None


def test_fit_is_reproducible_for_a_seed(tmp_path: Path, quick_fit_args: list[str]) -> None:
    """Same seed -> identical weights (augmentations included); another seed -> different."""
    import torch

    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        info = fit(["--config", str(CONFIGS / "seg.yaml"), "--out_dir", str(tmp_path / name),
                    "--seed", str(seed), *quick_fit_args])  # fmt: skip
        return torch.load(info["last_checkpoint"], weights_only=True)["state_dict"]

    first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
