"""``spatialspec sweep``: the command line (wired into :mod:`spatialspec.cli`).

Four modes, all on one sweep folder ``--out DIR``:

* (default) plan the grid, launch what is missing, summarise (``--launcher local|slurm|print``);
* ``--status``: each run's state from the run folders (any launcher, while it is in flight);
* ``--collect``: ``summary.csv``/``summary.md`` and the charts from the runs finished so far
  (``--costs`` re-prices the annotation hours);
* ``--run NAME``: do one planned run in this process (what the ``print`` lines call).

Settings come from the defaults, then ``--config sweep.yaml``, then the flags given here
(:mod:`spatialspec.sweep.config`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from spatialspec.sweep.config import SweepConfig, load_config, merge
from spatialspec.sweep.fitargs import set_overrides
from spatialspec.sweep.launcher import LaunchError

_DEFAULTS = SweepConfig()
_S = argparse.SUPPRESS


def _grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        default=_S,
        help="sweep config (YAML; every setting below, SLURM resources included; "
        "flags win); a fit config is accepted too, as --fit-config",
    )
    p.add_argument(
        "--fit-config",
        dest="fit_config",
        metavar="FILE",
        default=_S,
        help="fit config; <method>.yaml beside it is used for that method if present",
    )
    p.add_argument(
        "--budgets",
        default=_S,
        help=f"mask budgets: counts, fractions (0.1 or 10%%) or all (default {_DEFAULTS.budgets})",
    )
    p.add_argument(
        "--methods", default=_S, help=f"registered method names (default {_DEFAULTS.methods})"
    )
    p.add_argument(
        "--seeds",
        default=_S,
        help=f"training (and mask-selection) seeds (default {_DEFAULTS.seeds})",
    )
    p.add_argument(
        "--specificities",
        default=_S,
        help="spatial specificity levels of the dense target as a grid axis, e.g. "
        "mask,dilate:2,dilate:4,dilate:8,box,image (default: each method's own level)",
    )
    p.add_argument("--out", default=_S, help="sweep folder (re-run the command to resume)")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=_S,
        metavar="KEY=VALUE",
        help="fit overrides for every run, e.g. trainer.max_epochs=3",
    )
    p.add_argument(
        "--n-resamples",
        dest="n_resamples",
        type=int,
        default=_S,
        help=f"bootstrap resamples per report (default {_DEFAULTS.n_resamples})",
    )
    p.add_argument(
        "--costs",
        default=_S,
        metavar="KIND=SECONDS,...",
        help="seconds per annotated image for the robust-AUROC-per-annotation-hour chart: "
        "label, mask, box, attribute (defaults label=1,mask=79,box=7,attribute=1 from "
        "published natural-image times; kinds not given keep theirs); with --collect, "
        "re-prices a finished sweep",
    )
    p.add_argument(
        "--loggers",
        default=_S,
        help="experiment loggers for every fit, e.g. tensorboard,mlflow (each run "
        "gets --run_name and --tags method/budget/seed)",
    )
    p.add_argument(
        "--mlflow-tracking-uri",
        dest="mlflow_tracking_uri",
        default=_S,
        help="MLflow store (default with mlflow: sqlite:///<out>/mlflow.db)",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=_S,
        help="no progress bar and no per-run lines",
    )


def _launch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--launcher",
        default=_S,
        metavar="NAME",
        help="local: process pool here (default); slurm: one job array; print: one "
        "shell line per run for another scheduler",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=_S,
        help="local: fits at a time, each in its own process (one GPU each)",
    )
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=_S,
        help="slurm: wait for the array, then summarise (default; --no-wait returns "
        "after submitting)",
    )
    g = p.add_argument_group("SLURM resources per run (YAML: slurm: {partition: ..., ...})")
    for flag, kind, text in (
        ("partition", str, "partition"), ("gpus", int, "GPUs per run"),
        ("cpus", int, "CPU cores per run (default 1)"), ("mem-gb", float, "memory per run, GB"),
        ("time-min", int, "time limit per run, minutes (default 60; requeued and resumed)"),
        ("account", str, "account"), ("qos", str, "quality of service"),
        ("array-parallelism", int, "at most this many runs at a time"),
        ("max-requeues", int, "requeues after time-outs (default 3)"),
        ("job-name", str, "job name"),
    ):  # fmt: skip
        g.add_argument(
            f"--slurm-{flag}",
            dest=f"slurm.{flag.replace('-', '_')}",
            type=kind,
            default=_S,
            metavar=flag.split("-")[-1].upper(),
            help=text,
        )
    g.add_argument(
        "--slurm-sbatch",
        dest="slurm.sbatch",
        nargs="+",
        action="extend",
        default=_S,
        metavar="KEY=VALUE",
        help="further sbatch options, e.g. constraint=a100 mail-type=END",
    )
    g.add_argument(
        "--slurm-setup",
        dest="slurm.setup",
        action="append",
        default=_S,
        metavar="LINE",
        help="shell line run before each task (repeatable)",
    )


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` subcommand to the ``spatialspec`` parser."""
    p = sub.add_parser(
        "sweep",
        help="grid of fits: methods × mask budgets × seeds -> robust AUROC vs. masks",
        description="Train and evaluate every method × mask budget × seed (resumable), here, "
        "on SLURM, or anywhere through printed command lines.",
    )
    _grid_options(p)
    _launch_options(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--status",
        action="store_true",
        help="show each run as pending / running / finished / failed and exit",
    )
    mode.add_argument(
        "--collect",
        action="store_true",
        help="write summary.csv/md and the chart from the finished runs and exit",
    )
    mode.add_argument(
        "--run",
        metavar="NAME",
        help="do one planned run (e.g. seg/budget-0.1/seed-1) here and exit",
    )


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    """Defaults < ``--config`` file < the flags given (``--set`` pairs add to the file's).

    Raises:
        FileNotFoundError: The ``--config`` file does not exist.
        ValueError: A bad key or value (naming the file or the flag).
    """
    given = vars(args)
    config = SweepConfig()
    if "config_file" in given:
        config = load_config(given["config_file"], config)
    flags: dict[str, Any] = {}
    for key, value in given.items():
        if key.startswith("slurm."):
            flags.setdefault("slurm", {})[key.removeprefix("slurm.")] = value
        elif key in SweepConfig.__dataclass_fields__:
            flags[key] = value
    return merge(config, flags, "command line")


def _out(config: SweepConfig) -> Path:
    if not config.out:
        raise ValueError("no sweep folder: give --out DIR (or out: in the --config file)")
    return Path(config.out)


def _sweep(config: SweepConfig) -> Any:
    from spatialspec.sweep.driver import run_sweep

    if not config.fit_config:
        raise ValueError(
            "no fit config: give --fit-config FILE, --config FIT.yaml, or "
            "fit_config: in a sweep config"
        )
    return run_sweep(
        config.fit_config,
        config.budgets,
        config.methods,
        config.seeds,
        _out(config),
        jobs=config.jobs,
        overrides=set_overrides(config.set),
        progress=config.progress,
        n_resamples=config.n_resamples,
        launcher=config.launcher,
        slurm=config.slurm,
        loggers=config.loggers,
        mlflow_tracking_uri=config.mlflow_tracking_uri,
        wait=config.wait,
        specificities=config.specificities,
        costs=config.costs,
    )


def _status(out: Path) -> int:
    from spatialspec.sweep.status import format_status, sweep_states

    print(format_status(out, sweep_states(out)))
    return 0


def _collect(out: Path, costs: dict[str, float]) -> int:
    from spatialspec.sweep.costs import recorded_costs, resolve_costs
    from spatialspec.sweep.folder import planned_runs, read_sweep
    from spatialspec.sweep.plot import CHART
    from spatialspec.sweep.plot_cost import COST_CHART
    from spatialspec.sweep.status import count_line, run_state
    from spatialspec.sweep.summary import collect_summary, write_summaries

    info = read_sweep(out)
    runs = planned_runs(info)
    info["costs"] = resolve_costs(recorded_costs(out), costs)
    frame = collect_summary(out, runs, info["costs"])
    write_summaries(out, frame, info)
    states = [run_state(Path(d)) for d in frame["run_dir"]]
    print(
        f"sweep {out}: {count_line(states)}; summary.csv, summary.md, {CHART}, {COST_CHART} written"
    )
    return 0


def _run_one(out: Path, name: str) -> int:
    """One run in this process, as a printed line or a scheduler task calls it."""
    from spatialspec.sweep.folder import read_sweep
    from spatialspec.sweep.run import cores, run_named, sigterm_as_exit

    out = out.absolute()
    cwd = read_sweep(out).get("cwd")
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)  # the fit's relative paths resolve as when the sweep was planned
    with sigterm_as_exit():
        result = run_named(out, name, threads=cores())
    if result["status"] == "finished":
        already = " (already finished)" if result.get("already") else ""
        print(f"sweep: {name}: finished{already}")
        return 0
    if result["status"] == "requeued":
        print(f"sweep: {name}: checkpointed and requeued; it resumes when the task restarts")
        return 0
    print(
        f"sweep: {name}: failed: {result['error']}; see {result['run_dir']}/error.txt",
        file=sys.stderr,
    )
    return 1


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run ``spatialspec sweep``; returns the exit code (0 ok, 1 unfinished or failed runs,
    2 bad arguments or a refused submission, 130 interrupted)."""
    try:
        config = sweep_config(args)
        if args.status:
            return _status(_out(config))
        if args.collect:
            return _collect(_out(config), config.costs)
        if args.run:
            return _run_one(_out(config), args.run)
        frame = _sweep(config)
    except (ValueError, KeyError, FileNotFoundError, LaunchError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"spatialspec sweep: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspatialspec sweep: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    if (not config.wait and config.launcher == "slurm") or config.launcher == "print":
        return 0
    unfinished = frame[frame["status"] != "finished"]
    for row in unfinished.itertuples():
        print(f"spatialspec sweep: {row.status}: {row.run_dir}: {row.error}", file=sys.stderr)
    return 1 if len(unfinished) else 0
