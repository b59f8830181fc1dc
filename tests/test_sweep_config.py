"""Sweep settings: YAML file < command line, fit-config compatibility, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from spatialspec.sweep import SlurmConfig, SweepConfig, add_sweep_parser, load_config
from spatialspec.sweep.cli import sweep_config
from spatialspec.sweep.fitargs import flatten_set

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"

RECIPE = """\
fit_config: fit/seg.yaml
methods: [binary, seg]
budgets: [0, 10%, all]
seeds: 1,2
out: results/sweep
launcher: slurm
n_resamples: 200
loggers: tensorboard,mlflow
set:
  trainer: {max_epochs: 20}
  data.manifest: data/siim/manifest.csv
  model.backbone.decoder_channels: [16, 16, 8, 8]
slurm:
  partition: gpu
  gpus: 1
  cpus: 8
  mem_gb: 32
  time_min: 240
  account: lab
  qos: normal
  array_parallelism: 4
  sbatch: {constraint: a100}
  setup: module load cuda
"""


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sweep", *argv])


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipes" / "siim.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE)
    return path


def test_every_setting_from_the_file(recipe: Path) -> None:
    config = load_config(recipe)
    assert config.fit_config == str(recipe.parent / "fit" / "seg.yaml")  # relative to the file
    assert config.methods == ("binary", "seg")
    assert config.budgets == (0, "10%", "all")
    assert config.seeds == "1,2"
    assert config.out == "results/sweep"  # as --out: relative to the working folder
    assert (config.launcher, config.n_resamples) == ("slurm", 200)
    assert config.loggers == ("tensorboard", "mlflow")
    assert config.set == (
        "trainer.max_epochs=20",
        "data.manifest=data/siim/manifest.csv",
        "model.backbone.decoder_channels=[16, 16, 8, 8]",
    )
    assert config.slurm == SlurmConfig(
        partition="gpu",
        gpus=1,
        cpus=8,
        mem_gb=32.0,
        time_min=240,
        account="lab",
        qos="normal",
        array_parallelism=4,
        sbatch={"constraint": "a100"},
        setup=("module load cuda",),
    )


def test_command_line_flags_win_over_the_file(recipe: Path) -> None:
    args = _args(
        "--config",
        str(recipe),
        "--methods",
        "seg",
        "--launcher",
        "local",
        "--jobs",
        "2",
        "--set",
        "trainer.max_epochs=3",
        "--slurm-cpus",
        "2",
        "--slurm-sbatch",
        "mail-type=END",
        "--no-wait",
        "--no-progress",
    )
    config = sweep_config(args)
    assert (config.methods, config.launcher, config.jobs) == ("seg", "local", 2)
    assert config.budgets == (0, "10%", "all")  # not given: from the file
    assert config.set[-1] == "trainer.max_epochs=3"  # after the file's pairs: it wins in fit
    assert config.set[0] == "trainer.max_epochs=20"
    assert (config.slurm.cpus, config.slurm.gpus) == (2, 1)
    assert config.slurm.sbatch == {"constraint": "a100", "mail-type": "END"}
    assert (config.wait, config.progress) == (False, False)


def test_specificities_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("fit_config: f.yaml\nspecificities: [mask, dilate:4, box]\n")
    assert load_config(path).specificities == ("mask", "dilate:4", "box")
    config = sweep_config(_args("--config", str(path), "--specificities", "mask,image"))
    assert config.specificities == "mask,image"
    assert sweep_config(_args("--fit-config", "x.yaml")).specificities is None


def test_no_file_gives_the_defaults_and_the_flags() -> None:
    config = sweep_config(_args("--fit-config", "x.yaml", "--out", "o"))
    assert config == SweepConfig(fit_config="x.yaml", out="o")


def test_a_fit_config_is_accepted_as_before() -> None:
    config = sweep_config(_args("--config", str(CONFIGS / "seg.yaml"), "--out", "o"))
    assert config.fit_config == str(CONFIGS / "seg.yaml")
    assert config.methods == SweepConfig().methods


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("methods: [seg]\nbudget: [0]\n", r"unknown key 'budget' \(did you mean 'budgets'\?\)"),
        ("methods: [seg]\ntrainer: {max_epochs: 2}\n", r"unknown key 'trainer' \(a fit key"),
        (
            "methods: [seg]\nslurm: {cpu: 2}\n",
            r"unknown key 'slurm\.cpu' \(did you mean 'slurm\.cpus'\?\)",
        ),
        ("methods: [seg]\njobs: 0\n", r"jobs must be an integer >= 1, got 0"),
        ("methods: [seg]\nslurm: {mem_gb: lots}\n", r"slurm\.mem_gb must be a positive number"),
        ("methods: [seg]\nwait: maybe\n", r"wait must be true or false"),
        ("colour: blue\n", r"neither a sweep config .* nor a fit config"),
        ("- a\n- b\n", r"a config must be a non-empty YAML mapping"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_a_bad_flag_names_the_command_line(recipe: Path) -> None:
    with pytest.raises(ValueError, match=r"command line: slurm\.cpus must be an integer >= 1"):
        sweep_config(_args("--config", str(recipe), "--slurm-cpus", "0"))


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config("/nonexistent/sweep.yaml")


def test_flatten_set_nests_and_writes_json() -> None:
    values = {
        "trainer": {"max_epochs": 3, "deterministic": True},
        "model.lr": 0.01,
        "data": {"mask_budget": None},
        "x": [1, 2],
    }
    assert flatten_set(values) == [
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "model.lr=0.01",
        "data.mask_budget=null",
        "x=[1, 2]",
    ]


def test_the_shipped_slurm_recipe_loads() -> None:
    """configs/sweeps/siim-slurm.yaml (the README's cluster example) is a valid sweep config."""
    from spatialspec.sweep.config import load_config

    recipe = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "siim-slurm.yaml"
    config = load_config(recipe)
    assert config.launcher == "slurm" and config.slurm.gpus == 1
    assert Path(config.fit_config).resolve() == recipe.parents[1] / "siim" / "seg.yaml"
    assert "bf16-mixed" in " ".join(config.set)
