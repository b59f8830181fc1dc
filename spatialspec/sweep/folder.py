"""The sweep folder's own record, ``DIR/sweep.json``: plan, settings, invocation history.

Written by every invocation before it launches anything, so that a run can be executed by name
from the shell (``spatialspec sweep --out DIR --run NAME``, what the ``print`` and ``slurm``
launchers hand out) and so that ``--status`` / ``--collect`` need nothing but the folder. A
folder whose ``sweep.json`` records other :func:`settings` is refused, so that one summary never
mixes settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from spatialspec.runinfo import run_metadata
from spatialspec.sweep.fitargs import method_config
from spatialspec.sweep.plan import SweepRun

SWEEP_JSON = "sweep.json"


def read_sweep(out: str | Path) -> dict[str, Any]:
    """``DIR/sweep.json``.

    Raises:
        FileNotFoundError: ``out`` holds no sweep (the message says how to plan one).
        ValueError: ``sweep.json`` is not valid JSON.
    """
    path = Path(out) / SWEEP_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"no {SWEEP_JSON} in {out}: not a sweep folder (a sweep writes it before its first "
            "run; run the sweep command once)"
        )
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(info, dict) or "plan" not in info:
        raise ValueError(f"{path}: no plan recorded (not written by spatialspec sweep?)")
    return info


def planned_runs(info: dict[str, Any]) -> list[SweepRun]:
    """The runs recorded in a ``sweep.json``, in plan order."""
    return [
        SweepRun(p["method"], p["budget"], int(p["seed"]), p.get("specificity"))
        for p in info["plan"]
    ]


def find_run(info: dict[str, Any], name: str) -> SweepRun:
    """The planned run called ``name`` (e.g. ``seg/budget-0.1/seed-1``).

    Raises:
        KeyError: No such run; the message lists the planned names.
    """
    runs = {run.name: run for run in planned_runs(info)}
    if name.strip("/") in runs:
        return runs[name.strip("/")]
    shown = ", ".join(list(runs)[:8]) + (", ..." if len(runs) > 8 else "")
    raise KeyError(f"no run {name!r} in this sweep's plan; planned: {shown}")


def settings(
    config: Path,
    overrides: Sequence[str],
    n_resamples: int,
    loggers: Sequence[str] | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """What finished runs must share with a resumed sweep (and all a run needs besides its
    identity): the fit config, the overrides, the bootstrap size, the loggers."""
    return {
        "config": str(config.resolve()),
        "overrides": list(overrides),
        "n_resamples": n_resamples,
        "loggers": list(loggers) if loggers else None,
        "mlflow_tracking_uri": tracking_uri,
    }


def check_same_sweep(out: Path, current: dict[str, Any]) -> None:
    """Refuse a folder whose ``sweep.json`` records other settings.

    Raises:
        ValueError: Names each differing setting, its old and new value.
    """
    path = out / SWEEP_JSON
    if not path.is_file():
        return
    before = json.loads(path.read_text()).get("settings", {})
    changed = [k for k in current if before.get(k) != current[k]]
    if changed:
        diff = "; ".join(f"{k}: {before.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(
            f"{out} holds a sweep with other settings ({diff}); use another --out, or delete "
            f"{path} to reuse its finished runs anyway"
        )


def invocations(out: Path) -> list[dict[str, Any]]:
    """Earlier invocations of the sweep in ``out`` (when, launcher, runs started, seconds)."""
    path = out / SWEEP_JSON
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return list(before.get("invocations", []))


def sweep_info(
    runs: Sequence[SweepRun], config: Path, current: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The content of ``sweep.json`` (without status and history): versions, commit, the plan,
    the per-method configs, the working folder relative paths are resolved against."""
    configs = {run.method: str(method_config(config, run.method)) for run in runs}
    return run_metadata(
        settings=current,
        config=str(config),
        method_configs=configs,
        methods=list(dict.fromkeys(run.method for run in runs)),
        budgets=list(dict.fromkeys(run.budget for run in runs if run.uses_masks)),
        seeds=list(dict.fromkeys(run.seed for run in runs)),
        specificities=list(dict.fromkeys(r.specificity for r in runs if r.specificity)) or None,
        cwd=os.getcwd(),
        **extra,
        plan=[{**asdict(run), "name": run.name} for run in runs],
    )
