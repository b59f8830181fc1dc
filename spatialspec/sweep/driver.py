"""A sweep from start to summary: plan, record, launch, collect.

:func:`run_sweep` plans the grid, refuses a folder that holds a sweep with other settings,
writes ``sweep.json`` (the plan and everything a run needs, so that a run can be done by name
in another process), hands the runs still to do -- neither finished nor in flight elsewhere --
to the chosen launcher and, when the launcher waited for them, writes the summaries.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from spatialspec.runinfo import write_json_atomic
from spatialspec.sweep.config import SlurmConfig
from spatialspec.sweep.costs import recorded_costs, resolve_costs
from spatialspec.sweep.fitargs import check_overrides
from spatialspec.sweep.folder import (
    SWEEP_JSON,
    check_same_sweep,
    invocations,
    settings,
    sweep_info,
)
from spatialspec.sweep.launcher import LaunchContext, Launcher, LaunchOptions, make_launcher
from spatialspec.sweep.plan import RUN_INFO, SUBMITTED, SweepRun, is_finished, plan, run_dir_of
from spatialspec.sweep.plot import CHART
from spatialspec.sweep.run import make_task
from spatialspec.sweep.status import run_state
from spatialspec.sweep.summary import collect_summary, write_summaries


def run_sweep(
    config: str | Path,
    budgets: str | Iterable[Any],
    methods: str | Iterable[str],
    seeds: str | Iterable[Any],
    out: str | Path,
    jobs: int = 1,
    overrides: Sequence[str] = (),
    progress: bool = True,
    n_resamples: int = 1000,
    launcher: str = "local",
    slurm: SlurmConfig | None = None,
    loggers: Sequence[str] | None = None,
    mlflow_tracking_uri: str | None = None,
    wait: bool = True,
    specificities: str | Iterable[Any] | None = None,
    costs: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Run (or resume) a sweep and, if its launcher waited for the runs, write its summaries.

    Args:
        config: Fit config (``<method>.yaml`` beside it is used for that method if present).
        budgets: Mask budgets, e.g. ``"0,10,25,all"`` or ``[0, 10, "all"]``.
        methods: Registered method names, e.g. ``"binary,seg"``.
        seeds: Training seeds, e.g. ``"1,2,3"``.
        out: Sweep folder (see :mod:`spatialspec.sweep` for its layout).
        jobs: Fits at a time with the local launcher; above 1 each runs in a spawned worker
            process with ``max(1, cores // jobs)`` torch threads and, with GPUs, one GPU (a
            script calling this with ``jobs > 1`` needs the ``if __name__ == "__main__":``
            guard that ``spawn`` requires).
        overrides: Extra ``spatialspec fit`` arguments for every run, as command-line tokens
            (``["--trainer.max_epochs", "3"]``; ``set_overrides`` converts ``KEY=VALUE``).
        progress: Show a progress bar over runs and one line per finished run.
        n_resamples: Bootstrap resamples of each test report's CIs.
        launcher: ``local`` (this machine), ``slurm`` (one job array) or ``print`` (one shell
            line per run on stdout, run by someone else).
        slurm: Resources of each SLURM task (default :class:`SlurmConfig`).
        loggers: Experiment loggers for every fit (``fit --loggers``), e.g. ``["mlflow"]``.
        mlflow_tracking_uri: MLflow store; by default, with mlflow, ``sqlite:///<out>/mlflow.db``.
        wait: With ``slurm``: wait for the array, then summarise (else return after submitting).
        specificities: Spatial specificity levels as a grid axis of the dense methods, e.g.
            ``"mask,dilate:4,box,image"`` (None: each method's own level).
        costs: Seconds per annotated image of some kinds (``{"mask": 300}``) for the
            annotation-hour summary; the others keep those this folder's ``sweep.json``
            recorded, else :data:`~spatialspec.sweep.costs.DEFAULT_COSTS`.

    Returns:
        The ``summary.csv`` table (one row per planned run; ``status`` finished | failed |
        running | pending) -- as of the return, also when nothing was summarised.

    Raises:
        KeyError: An unknown method or launcher.
        ValueError: A bad budget, seed, override, ``jobs`` or resource, or ``out`` holds a sweep
            with other settings.
        FileNotFoundError: ``config`` does not exist.
        LaunchError: The launcher could not start the runs (e.g. sbatch refused them).
        KeyboardInterrupt: Interrupted; finished runs are kept and the next call resumes.
    """
    start = time.perf_counter()
    runs, config, overrides = _validate(config, budgets, methods, seeds, overrides, specificities)
    resources = slurm or SlurmConfig()
    chosen = make_launcher(launcher, LaunchOptions(jobs, wait, progress, resources))
    out = Path(out)
    current = settings(config, overrides, n_resamples, loggers, mlflow_tracking_uri)
    check_same_sweep(out, current)
    history = invocations(out)
    extra = {"slurm": asdict(resources)} if launcher == "slurm" else {}
    prices = resolve_costs(recorded_costs(out), costs)
    info = sweep_info(runs, config, current, jobs=jobs, launcher=launcher, costs=prices, **extra)
    write_json_atomic(out / SWEEP_JSON, {**info, "status": "running", "invocations": history})
    todo, busy, watch = _todo(out, runs)
    say = _speaker(progress, chosen)
    say(_opening_line(runs, todo, busy, launcher, jobs, out))
    plan_dirs = tuple((run.name, run_dir_of(out, run)) for run in runs)
    context = LaunchContext(out.absolute(), plan_dirs, watch=tuple(sorted(watch)))
    chosen.launch([make_task(run, out, current) for run in todo], context)
    frame = collect_summary(out, runs, prices)
    wall = round(time.perf_counter() - start, 1)
    history.append(_invocation(info, chosen, len(todo), wall))
    if chosen.waits:
        write_summaries(out, frame, {**info, "invocations": history})
        say(_closing_line(frame, out, wall))
    else:
        write_json_atomic(out / SWEEP_JSON, {**info, "status": "launched", "invocations": history})
        say(_follow_line(out, launcher))
    return frame


def _invocation(info: dict[str, Any], launcher: Launcher, runs: int, wall: float) -> dict:
    """This invocation in ``sweep.json``'s history (the wall time counts if it waited)."""
    return {
        "started": info["created"],
        "launcher": launcher.name,
        "runs_run": runs,
        "wall_seconds": wall,
        "waited": launcher.waits,
    }


def _validate(
    config: str | Path,
    budgets: str | Iterable[Any],
    methods: str | Iterable[str],
    seeds: str | Iterable[Any],
    overrides: Sequence[str],
    specificities: str | Iterable[Any] | None = None,
) -> tuple[list[SweepRun], Path, list[str]]:
    runs = plan(methods, budgets, seeds, specificities)
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    overrides = [str(token) for token in overrides]
    check_overrides(overrides)
    return runs, config, overrides


def _todo(out: Path, runs: Sequence[SweepRun]) -> tuple[list[SweepRun], list[str], set[str]]:
    """The runs to launch; the names of the runs in flight elsewhere, and their SLURM jobs.

    A run is in flight when its heartbeat is fresh, or when the SLURM job its folder mentions is
    still queued or running (e.g. requeued after a preemption); such a run is left alone.
    """
    todo: list[SweepRun] = []
    busy: list[str] = []
    watch: set[str] = set()
    queue: dict[str, str] | None = None
    for run in runs:
        if is_finished(out, run):
            continue
        run_dir = run_dir_of(out, run)
        jobs = _slurm_jobs(run_dir)
        if jobs and queue is None:
            from spatialspec.sweep.slurm import queue_states

            queue = queue_states() or {}
        active = _in_flight(jobs, queue or {})
        if active or run_state(run_dir).status == "running":
            busy.append(run.name)
            watch |= active
            continue
        todo.append(run)
    return todo, busy, watch


def _slurm_jobs(run_dir: Path) -> set[str]:
    if not (run_dir / SUBMITTED).is_file() and not (run_dir / RUN_INFO).is_file():
        return set()
    from spatialspec.sweep.slurm import run_jobs

    return run_jobs(run_dir)


def _in_flight(jobs: set[str], queue: dict[str, str]) -> set[str]:
    if not jobs:
        return set()
    from spatialspec.sweep.slurm import in_flight

    return in_flight(jobs, queue) or set()


def _speaker(progress: bool, launcher: Launcher) -> Any:
    stream = sys.stderr if launcher.stdout_is_output else sys.stdout

    def say(text: str) -> None:
        if progress:
            print(text, file=stream, flush=True)

    return say


def _opening_line(
    runs: Sequence[SweepRun],
    todo: Sequence[SweepRun],
    busy: list[str],
    launcher: str,
    jobs: int,
    out: Path,
) -> str:
    finished = len(runs) - len(todo) - len(busy)
    how = f"{jobs} at a time" if launcher == "local" else f"launcher {launcher}"
    line = (
        f"sweep: {len(runs)} runs, {finished} already finished, {len(todo)} to run ({how}) -> {out}"
    )
    if busy:
        line += f"\nsweep: {len(busy)} run(s) in flight elsewhere are left alone: " + ", ".join(
            busy
        )
    return line


def _closing_line(frame: pd.DataFrame, out: Path, wall: float) -> str:
    failed = frame.loc[frame["status"] == "failed", "run_dir"].tolist()
    line = f"sweep: {len(frame)} runs in {wall:.0f} s; summary.csv, summary.md, {CHART} in {out}"
    if failed:
        line += f"\nsweep: {len(failed)} failed run(s): " + ", ".join(failed)
    return line


def _follow_line(out: Path, launcher: str) -> str:
    rerun = (
        "; the same command without --no-wait submits only what is missing, waits and summarises"
        if launcher == "slurm"
        else ""
    )
    return (
        f"sweep: follow with `spatialspec sweep --out {out} --status`, summarise with "
        f"`--collect`{rerun}"
    )
