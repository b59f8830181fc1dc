"""The ``spatialspec fit`` command line of one run of a sweep.

Every run is ``fit --config CONFIG --method M ...``: ``<method>.yaml`` beside the sweep's fit
config is used for that method when it exists (the methods' configs differ by their ``model:``
keys), then the sweep's defaults, the user's overrides, and last the keys the sweep sets per run
(:data:`RESERVED_KEYS`), ending with ``--resume auto`` so that a run interrupted anywhere
continues from its newest checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spatialspec.sweep.plan import SweepRun, budget_key

#: Fit arguments every run gets before the user's overrides (which may undo them).
SWEEP_DEFAULTS = (
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
)  # fmt: skip
#: Fit keys the sweep sets per run (or from its own options); overrides may not touch them.
RESERVED_KEYS = (
    "method", "seed", "out_dir", "overwrite", "resume", "run_name", "tags", "loggers",
    "mlflow_tracking_uri", "data.mask_budget", "data.attribute_budget", "data.budget_seed",
    "data.specificity",
)  # fmt: skip
#: The sweep option that sets a reserved key, where there is one.
_SWEEP_OPTION = {"loggers": "--loggers", "mlflow_tracking_uri": "--mlflow-tracking-uri",
                 "data.specificity": "--specificities"}  # fmt: skip


def method_config(config: str | Path, method: str) -> Path:
    """``<method>.yaml`` beside ``config`` if it exists, else ``config`` itself."""
    sibling = Path(config).with_name(f"{method}.yaml")
    return sibling if sibling.is_file() else Path(config)


def set_overrides(pairs: Iterable[str]) -> list[str]:
    """``["trainer.max_epochs=3"]`` -> ``["--trainer.max_epochs", "3"]`` (fit arguments).

    Raises:
        ValueError: A pair without ``=``.
    """
    out: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        out += [f"--{key.strip().removeprefix('--')}", value]
    return out


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse overrides of :data:`RESERVED_KEYS`.

    Raises:
        ValueError: An override sets a reserved key (the message names it and the way to set it).
    """
    for token in overrides:
        key = token.split("=", 1)[0].removeprefix("--")
        if not token.startswith("--") or key not in RESERVED_KEYS:
            continue
        hint = f"; use the sweep's {_SWEEP_OPTION[key]}" if key in _SWEEP_OPTION else ""
        raise ValueError(
            f"the sweep sets {key!r} for every run; it cannot be overridden{hint} "
            f"(reserved: {', '.join(RESERVED_KEYS)})"
        )


def default_tracking_uri(out: str | Path) -> str:
    """One MLflow store per sweep: ``sqlite:///<absolute DIR>/mlflow.db``."""
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def run_tags(run: SweepRun) -> dict[str, str]:
    """Logger tags of a run: its method, budget, seed (and specificity when swept)."""
    tags = {"method": run.method, "budget": run.budget, "seed": str(run.seed)}
    if run.specificity is not None:
        tags["specificity"] = run.specificity
    return tags


def logger_args(
    run: SweepRun, loggers: Sequence[str] | None, tracking_uri: str | None = None
) -> list[str]:
    """``--loggers``, ``--run_name``, ``--tags`` (and ``--mlflow_tracking_uri`` with mlflow);
    nothing without loggers."""
    if not loggers:
        return []
    argv = ["--loggers", ",".join(loggers)]
    if "mlflow" in loggers and tracking_uri:
        argv += ["--mlflow_tracking_uri", tracking_uri]
    return [*argv, "--run_name", run.name, "--tags", json.dumps(run_tags(run))]


def fit_argv(
    run: SweepRun,
    config: str | Path,
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    loggers: Sequence[str] | None = None,
    tracking_uri: str | None = None,
) -> list[str]:
    """The ``spatialspec fit`` arguments of one run.

    Args:
        run: The run.
        config: The sweep's fit config (:func:`method_config` picks the method's sibling).
        run_dir: The run folder (``--out_dir``).
        overrides: The user's fit arguments for every run.
        loggers: Experiment loggers for every run (e.g. ``["tensorboard", "mlflow"]``).
        tracking_uri: MLflow tracking URI (used when ``"mlflow"`` is among ``loggers``).

    Returns:
        Arguments ending with ``--resume auto``: a run that is (re)done continues from the
        newest checkpoint an interrupted attempt left, or starts fresh.
    """
    argv = ["--config", str(method_config(config, run.method)), *SWEEP_DEFAULTS, *overrides]
    argv += ["--method", run.method, "--seed", str(run.seed), "--out_dir", str(run_dir)]
    if run.uses_masks:  # a mask budget, or an attribute budget (groupdro, dfr)
        key = budget_key(run.method)
        argv += [f"--{key}", run.budget, "--data.budget_seed", str(run.seed)]
    if run.specificity is not None:
        argv += ["--data.specificity", run.specificity]
    argv += logger_args(run, loggers, tracking_uri)
    return [*argv, "--resume", "auto"]


def flatten_set(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """A (nested) mapping of fit keys as ``KEY=VALUE`` pairs: ``{"trainer": {"max_epochs": 3}}``
    and ``{"trainer.max_epochs": 3}`` both give ``["trainer.max_epochs=3"]``."""
    pairs: list[str] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs += flatten_set(value, f"{name}.")
        else:
            pairs.append(f"{name}={_text(value)}")
    return pairs


def _text(value: Any) -> str:
    """A YAML value as fit reads it on the command line (JSON for lists, true/false, null)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)
