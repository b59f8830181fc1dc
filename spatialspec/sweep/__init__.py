"""``spatialspec sweep``: robust AUROC vs. the number of pixel annotations, over seeds.

One command trains a grid of runs -- every method × mask budget × seed -- each a separate
Lightning fit on the same backbone, evaluates every best-on-val checkpoint on test, and writes
the curve the paper's question asks for: how many masks does it take to stop a model from
leaning on the spurious feature? ::

    spatialspec sweep --fit-config configs/synthetic/seg.yaml --budgets 0,10,25,50,100,all \\
        --methods binary,bbox,seg,seg_ssl,seg_spl --seeds 1,2,3 --out results/sweep \\
        [--jobs 2] [--set trainer.max_epochs=3 ...] [--launcher local|slurm|print] \\
        [--costs mask=79,box=7,attribute=1,label=1]
    spatialspec sweep --config sweep.yaml            # every setting from a file (flags win)
    spatialspec sweep --out results/sweep --status   # pending / running / finished / failed
    spatialspec sweep --out results/sweep --collect  # summaries of the runs finished so far

**Budgets** are those of :mod:`spatialspec.data.budget` (passed to each fit as
``--data.mask_budget B --data.budget_seed S``): the number of training positives that keep their
pixel annotation, as a count (``25``), a fraction (``0.1`` or ``10%``, recorded as ``0.1``) or
``all``. The selection is seeded by the run's seed, so for one seed the masks of a smaller
budget are among those of a larger one. **Methods that ignore masks** (``binary``) run once per
seed; their ``budget`` is ``-`` and the chart draws them as a horizontal band.

**Configs per method**: every run is ``fit --config CONFIG --method M`` with ``<method>.yaml``
beside CONFIG used for that method if it exists; ``--set KEY=VALUE`` overrides apply to every
run, and the keys the sweep sets per run (:data:`~spatialspec.sweep.fitargs.RESERVED_KEYS`)
cannot be overridden. Every fit gets ``--resume auto``.

**Layout** of ``--out DIR``:

* ``runs/<method>/budget-<B>/seed-<S>/`` (``runs/<method>/seed-<S>/`` for ``binary``): the fit's
  run folder plus ``report.json`` and ``report.predictions.csv``, ``sweep_run.json`` (fit
  arguments, pid, host, job, status, wall time), ``heartbeat.json``, ``error.txt`` for a failed
  run, ``submitted.json`` for a run submitted to SLURM;
* ``summary.csv``, ``summary.md``, ``robust_auroc_vs_masks.png``,
  ``robust_auroc_vs_annotation_hours.png``; ``sweep.json`` (plan, settings, costs, versions,
  invocation history); ``slurm/`` (submitit's logs) with that launcher.

**Annotation hours**: every fit records the images per annotation kind it consumed
(``run.json["annotations"]``, :mod:`spatialspec.annotations`); ``--costs`` prices them in
seconds per annotated image (:mod:`spatialspec.sweep.costs`, defaults from published annotation
times) and the summary plots robust AUROC against the hours each run consumed.

**Resume**: a run is finished iff its ``report.json`` exists. Re-running the command after any
interruption skips finished runs, leaves runs in flight elsewhere alone, and launches the rest,
which continue from their newest checkpoint. A folder whose ``sweep.json`` records other
settings is refused. Seeds, budgets and methods may be added.

Modules, one idea each: :mod:`~spatialspec.sweep.plan` (grid -> runs),
:mod:`~spatialspec.sweep.fitargs` (a run's fit command line), :mod:`~spatialspec.sweep.folder`
(``sweep.json``), :mod:`~spatialspec.sweep.run` (one run and its records),
:mod:`~spatialspec.sweep.heartbeat`, :mod:`~spatialspec.sweep.status`,
:mod:`~spatialspec.sweep.launcher` (the interface) with :mod:`~spatialspec.sweep.local`,
:mod:`~spatialspec.sweep.slurm` and :mod:`~spatialspec.sweep.shell` (``print``),
:mod:`~spatialspec.sweep.aggregate`, :mod:`~spatialspec.sweep.summary`,
:mod:`~spatialspec.sweep.costs`, :mod:`~spatialspec.sweep.plot`,
:mod:`~spatialspec.sweep.plot_specificity`, :mod:`~spatialspec.sweep.plot_cost`,
:mod:`~spatialspec.sweep.config` (YAML + flags),
:mod:`~spatialspec.sweep.driver` (plan -> launch -> summary), :mod:`~spatialspec.sweep.cli`.
"""

from spatialspec.sweep.aggregate import aggregate, t_interval
from spatialspec.sweep.cli import add_sweep_parser, run_sweep_cli
from spatialspec.sweep.config import SlurmConfig, SweepConfig, load_config
from spatialspec.sweep.costs import DEFAULT_COSTS, parse_costs
from spatialspec.sweep.driver import run_sweep
from spatialspec.sweep.fitargs import RESERVED_KEYS, fit_argv, method_config, set_overrides
from spatialspec.sweep.launcher import LAUNCHERS, LaunchContext, Launcher, LaunchOptions
from spatialspec.sweep.plan import (
    NO_BUDGET,
    SweepRun,
    budget_label,
    is_finished,
    plan,
    run_dir_of,
)
from spatialspec.sweep.plot import plot_sweep
from spatialspec.sweep.plot_cost import plot_cost
from spatialspec.sweep.run import execute_run, run_named
from spatialspec.sweep.status import RunState, run_state
from spatialspec.sweep.summary import (
    SUMMARY_COLUMNS,
    collect_summary,
    summary_markdown,
    write_summaries,
)

__all__ = [
    "DEFAULT_COSTS",
    "LAUNCHERS",
    "NO_BUDGET",
    "RESERVED_KEYS",
    "SUMMARY_COLUMNS",
    "LaunchContext",
    "LaunchOptions",
    "Launcher",
    "RunState",
    "SlurmConfig",
    "SweepConfig",
    "SweepRun",
    "add_sweep_parser",
    "aggregate",
    "budget_label",
    "collect_summary",
    "execute_run",
    "fit_argv",
    "is_finished",
    "load_config",
    "method_config",
    "parse_costs",
    "plan",
    "plot_cost",
    "plot_sweep",
    "run_dir_of",
    "run_named",
    "run_state",
    "run_sweep",
    "run_sweep_cli",
    "set_overrides",
    "summary_markdown",
    "t_interval",
    "write_summaries",
]
