"""``spatialspec sweep``: robust AUROC vs. the number of pixel annotations, over seeds.

One command trains a grid of runs -- every method × mask budget × seed -- each a separate
Lightning fit on the same backbone, evaluates every best-on-val checkpoint on test, and writes
the curve the paper's question asks for: how many masks does it take to stop a model from
leaning on the spurious feature? ::

    spatialspec sweep --config configs/synthetic/seg.yaml --budgets 0,10,25,50,100,all \\
        --methods binary,bbox,seg,seg_ssl,seg_spl --seeds 1,2,3 --out results/sweep \\
        [--jobs 2] [--set trainer.max_epochs=3 ...]

**Budgets** are those of :mod:`spatialspec.data.budget` (passed to each fit as
``--data.mask_budget B --data.budget_seed S``): the number of training positives that keep their
pixel annotation, as a count (``25``), a fraction (``0.1`` or ``10%``, recorded as ``0.1``) or
``all``; negatives keep their empty masks pro rata, and budget 0 leaves no pixel supervision.
The selection is seeded by the run's seed, so for one seed the masks of a smaller budget are
among those of a larger one.

**Methods that ignore masks** (annotation ``label``: ``binary``) run once per seed, not per
budget: their ``budget`` is ``-`` and ``n_masks`` 0 in the summary, and the chart draws them as
a horizontal reference band (mean and 95 % t-interval over seeds) rather than a curve.

**Configs per method**: every run is ``fit --config CONFIG --method M``. The methods' configs
differ by their ``model:`` keys (``binary`` has no ``pooling``), so if ``<method>.yaml`` exists
beside the given config (``configs/synthetic/binary.yaml`` for ``configs/synthetic/seg.yaml``),
that file is used for that method instead of CONFIG; otherwise CONFIG is used with
``--method M``. ``--set KEY=VALUE`` overrides apply to every run, after the config files (the
sweep also turns off the per-fit progress bar and model summary; ``--set`` can turn them back
on). The keys the sweep sets per run (``method``, ``seed``, ``out_dir``, ``overwrite``,
``data.mask_budget``, ``data.budget_seed``) cannot be overridden.

**Layout** of ``--out DIR``:

* ``runs/<method>/budget-<B>/seed-<S>/`` (``runs/<method>/seed-<S>/`` for ``binary``): the fit's
  run folder (``config.yaml``, ``run.json``, ``checkpoints/``, ``logs/``) plus ``report.json``
  and ``report.predictions.csv`` (test report and per-image val/test scores),
  ``sweep_run.json`` (the fit arguments and the run's wall time) and, for a failed run,
  ``error.txt``.
* ``summary.csv``: one row per run (:data:`SUMMARY_COLUMNS`); ``summary.md``: mean ± sd and the
  mean with a 95 % t-interval over seeds per method × budget; ``robust_auroc_vs_masks.png``;
  ``sweep.json``: the plan, the config, the overrides and the run metadata.

**Resume**: a run is finished iff its ``report.json`` exists (written atomically, after
everything else the run needs). Re-running the command skips finished runs and redoes the others
(a run killed mid-fit, a failed run) with ``--overwrite true``; after a complete sweep it trains
nothing and only rewrites the summaries. A folder whose ``sweep.json`` records another config,
other overrides or another bootstrap size is refused, so that one summary never mixes settings
(delete ``sweep.json`` to reuse the finished runs anyway). Seeds, budgets and methods may be
added.

**Parallelism**: ``--jobs N`` runs N fits at a time, each in its own process (spawned, so no
state is shared), with ``max(1, cores // N)`` torch threads each. A failing run does not stop
the others: it is recorded (``status`` failed, traceback in ``error.txt``) and the command exits
non-zero at the end, listing the failures.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from spatialspec.data.budget import apply_mask_budget, parse_budget
from spatialspec.data.io import atomic_open
from spatialspec.data.manifest import load_manifest
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

__all__ = [
    "NO_BUDGET",
    "SUMMARY_COLUMNS",
    "SweepRun",
    "add_sweep_parser",
    "aggregate",
    "budget_label",
    "collect_summary",
    "execute_run",
    "fit_argv",
    "is_finished",
    "method_config",
    "plan",
    "plot_sweep",
    "run_dir_of",
    "run_sweep",
    "run_sweep_cli",
    "set_overrides",
    "summary_markdown",
    "write_summaries",
]

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: ``budget`` of the methods that ignore masks (they run once per seed).
NO_BUDGET = "-"
#: Columns of ``summary.csv``, in order.
SUMMARY_COLUMNS = (
    "method", "budget", "n_masks", "seed", "robust_auroc", "robust_auroc_lo", "robust_auroc_hi",
    "auroc", "auroc_lo", "auroc_hi", "n_robust", "run_dir", "status", "seconds", "error",
)  # fmt: skip
#: Fit arguments every run gets before the user's overrides (which may undo them).
SWEEP_DEFAULTS = (
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
)  # fmt: skip
#: Fit keys the sweep sets per run; overrides may not touch them.
RESERVED_KEYS = ("method", "seed", "out_dir", "overwrite", "data.mask_budget", "data.budget_seed")
REPORT = "report.json"
ERROR = "error.txt"
RUN_INFO = "sweep_run.json"
CHART = "robust_auroc_vs_masks.png"
_NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRun:
    """One cell of the grid.

    Attributes:
        method: Registered method name.
        budget: Canonical budget label (:func:`budget_label`), or :data:`NO_BUDGET` for a method
            that ignores masks.
        seed: Training seed, also the seed of the budget's mask selection.
    """

    method: str
    budget: str
    seed: int

    @property
    def uses_masks(self) -> bool:
        """Whether the run has a mask budget (False for ``binary``)."""
        return self.budget != NO_BUDGET

    @property
    def name(self) -> str:
        """Run folder below ``DIR/runs``: ``seg/budget-10/seed-1`` or ``binary/seed-1``."""
        if not self.uses_masks:
            return f"{self.method}/seed-{self.seed}"
        return f"{self.method}/budget-{self.budget}/seed-{self.seed}"


def budget_label(value: Any) -> str:
    """Canonical text of a budget: ``"all"``, a count (``"25"``) or a fraction (``"0.1"``).

    ``10%`` and ``0.1`` give the same label (and so the same run folder).

    Raises:
        ValueError: If :func:`~spatialspec.data.budget.parse_budget` rejects ``value``.
    """
    parsed = parse_budget(value)
    if parsed is None:
        return "all"
    return str(parsed)  # int -> "25"; float keeps its point -> "0.1", "1.0"


def _items(values: str | Iterable[Any]) -> list[Any]:
    """A comma-separated string or an iterable as a list without blanks and duplicates."""
    if isinstance(values, str):
        values = values.split(",")
    out: list[Any] = []
    for value in values:
        value = value.strip() if isinstance(value, str) else value
        if value != "" and value not in out:
            out.append(value)
    return out


def _seeds(seeds: str | Iterable[Any]) -> list[int]:
    out: list[int] = []
    for seed in _items(seeds):
        try:
            number = int(seed)
        except (TypeError, ValueError):
            raise ValueError(f"seeds must be integers, got {seed!r}") from None
        if number not in out:
            out.append(number)
    return out


def _ignores_masks(method: str) -> bool:
    """Whether a registered method trains on image labels only (KeyError lists valid names)."""
    from spatialspec.methods import METHODS

    return METHODS.get(method).annotation == "label"


def plan(
    methods: str | Iterable[str], budgets: str | Iterable[Any], seeds: str | Iterable[Any]
) -> list[SweepRun]:
    """The runs of a sweep, seed by seed (so an interrupted sweep has whole seeds done first).

    Args:
        methods: Registered method names (a list or ``"binary,seg"``).
        budgets: Mask budgets (anything :func:`budget_label` accepts, or ``"0,25,all"``).
        seeds: Training seeds (ints or ``"1,2,3"``).

    Returns:
        Methods that ignore masks once per seed; the others once per budget and seed.

    Raises:
        KeyError: An unknown method (the message lists the valid names).
        ValueError: A bad budget or seed, or an empty list.
    """
    names = _items(methods)
    labels = list(dict.fromkeys(budget_label(b) for b in _items(budgets)))
    seed_list = _seeds(seeds)
    for kind, values in (("methods", names), ("budgets", labels), ("seeds", seed_list)):
        if not values:
            raise ValueError(f"a sweep needs at least one of {kind}")
    once = {m: _ignores_masks(m) for m in names}
    return [
        SweepRun(method, budget, seed)
        for seed in seed_list
        for method in names
        for budget in ([NO_BUDGET] if once[method] else labels)
    ]


# ---------------------------------------------------------------------------------------------
# Fit arguments
# ---------------------------------------------------------------------------------------------


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


def _check_overrides(overrides: Sequence[str]) -> None:
    for token in overrides:
        key = token.split("=", 1)[0].removeprefix("--")
        if token.startswith("--") and key in RESERVED_KEYS:
            raise ValueError(
                f"the sweep sets {key!r} for every run; it cannot be overridden "
                f"(reserved: {', '.join(RESERVED_KEYS)})"
            )


def fit_argv(
    run: SweepRun, config: str | Path, run_dir: str | Path, overrides: Sequence[str] = ()
) -> list[str]:
    """The ``spatialspec fit`` arguments of one run (always with ``--overwrite true``: a run
    that is (re)done replaces whatever an interrupted attempt left)."""
    argv = ["--config", str(method_config(config, run.method)), *SWEEP_DEFAULTS, *overrides]
    argv += ["--method", run.method, "--seed", str(run.seed), "--out_dir", str(run_dir)]
    if run.uses_masks:
        argv += ["--data.mask_budget", run.budget, "--data.budget_seed", str(run.seed)]
    return [*argv, "--overwrite", "true"]


def run_dir_of(out: str | Path, run: SweepRun) -> Path:
    """``DIR/runs/<run.name>``."""
    return Path(out) / "runs" / run.name


def is_finished(out: str | Path, run: SweepRun) -> bool:
    """A run is finished iff its ``report.json`` exists."""
    return (run_dir_of(out, run) / REPORT).is_file()


# ---------------------------------------------------------------------------------------------
# One run (in this process or in a worker)
# ---------------------------------------------------------------------------------------------


def _check_fit_args(argv: Sequence[str]) -> None:
    """Parse the fit arguments first, turning jsonargparse's exit into a ValueError with its
    message (an unknown key for one method fails that run, not the sweep)."""
    from spatialspec.training import parse_fit_args

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            parse_fit_args(argv)
    except SystemExit:
        message = buffer.getvalue().strip().splitlines()
        raise ValueError("invalid fit arguments: " + (message[-1] if message else "")) from None


def _fit(argv: Sequence[str]) -> dict[str, Any]:
    """``spatialspec fit`` (a separate function so that tests can inject failures)."""
    from spatialspec.training import fit

    _check_fit_args(argv)
    return fit(argv)


def _evaluate(checkpoint: Path, report: Path, n_resamples: int, accelerator: str) -> dict:
    """Test report of a checkpoint; writes ``report.json`` (last) and the predictions CSV."""
    from spatialspec.evaluation.runner import evaluate_checkpoint

    return evaluate_checkpoint(
        checkpoint, report, n_resamples=n_resamples, accelerator=accelerator, progress=False
    )


@contextlib.contextmanager
def _keep_sigint() -> Iterator[None]:
    """Restore the SIGINT handler afterwards (Lightning ignores SIGINT after a Ctrl-C)."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _fit_and_evaluate(task: dict[str, Any]) -> dict[str, Any]:
    run_dir = Path(task["run_dir"])
    info = _fit(task["argv"])
    best = info.get("best_checkpoint") or run_dir / "checkpoints" / "best.ckpt"
    if not Path(best).is_file():
        raise FileNotFoundError(f"the fit saved no best checkpoint ({best})")
    accelerator = (info.get("config") or {}).get("trainer", {}).get("accelerator") or "auto"
    return _evaluate(Path(best), run_dir / REPORT, task["n_resamples"], accelerator)


def execute_run(task: dict[str, Any]) -> dict[str, Any]:
    """Fit and evaluate one run; failures are recorded in ``error.txt``, not raised.

    Args:
        task: ``name``, ``method``, ``budget``, ``seed``, ``run_dir``, ``argv`` (fit arguments)
            and ``n_resamples`` (see :func:`_task`).

    Returns:
        ``task``'s identity plus ``status`` (finished | failed), ``seconds`` and, when finished,
        the headline metrics; when failed, ``error`` (the last line of the error).

    Raises:
        KeyboardInterrupt: The run was interrupted (the sweep stops; the run stays unfinished).
    """
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR).unlink(missing_ok=True)
    record = {k: task[k] for k in ("name", "method", "budget", "seed", "argv")}
    record.update(pid=os.getpid(), torch_threads=_torch_threads())
    write_json_atomic(run_dir / RUN_INFO, {**record, "status": "running"})
    start = time.perf_counter()
    try:
        with _keep_sigint():
            report = _fit_and_evaluate(task)
    except SystemExit as err:  # Lightning's answer to Ctrl-C: stop the sweep, not just the run
        raise KeyboardInterrupt(f"run stopped (exit {err.code})") from err
    except Exception as err:
        seconds = round(time.perf_counter() - start, 2)
        write_text_atomic(run_dir / ERROR, traceback.format_exc())
        write_json_atomic(run_dir / RUN_INFO, {**record, "status": "failed", "seconds": seconds})
        return {**_identity(task), "status": "failed", "seconds": seconds, "error": _last(err)}
    seconds = round(time.perf_counter() - start, 2)
    write_json_atomic(run_dir / RUN_INFO, {**record, "status": "finished", "seconds": seconds})
    keys = ("robust_auroc", "robust_auroc_ci", "auroc", "auroc_ci")
    return {**_identity(task), "status": "finished", "seconds": seconds,
            **{k: report.get(k) for k in keys}}  # fmt: skip


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _identity(task: dict[str, Any]) -> dict[str, Any]:
    return {k: task[k] for k in ("name", "method", "budget", "seed", "run_dir")}


def _last(err: BaseException) -> str:
    """One line describing an error (its last non-empty line, with the type)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _task(
    run: SweepRun, out: Path, config: Path, overrides: Sequence[str], n_resamples: int
) -> dict[str, Any]:
    """Everything a (possibly remote) worker needs to do one run, as plain data."""
    run_dir = run_dir_of(out, run)
    return {
        **asdict(run),
        "name": run.name,
        "run_dir": str(run_dir),
        "argv": fit_argv(run, config, run_dir, overrides),
        "n_resamples": n_resamples,
    }


# ---------------------------------------------------------------------------------------------
# Running many
# ---------------------------------------------------------------------------------------------


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Worker process setup: its share of the cores, and less chatter from Lightning."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import lightning  # noqa: F401  (sets its loggers' levels on import: set ours after)
    import torch

    torch.set_num_threads(threads)
    _die_with_parent(parent)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this worker when the sweep process dies, however it dies.

    SIGKILL, not SIGTERM: during a fit Lightning catches SIGTERM and stops the fit gracefully,
    after which a worker whose parent is gone would wait forever for its next task. A worker
    whose ``parent`` died before this call exits at once. The orphan's run folder, unfinished,
    is redone by a resumed sweep.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` while workers run, so cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued runs and terminate the running ones (their folders are redone on resume)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    # SIGTERM first (Lightning stops a fit at the end of its step); SIGKILL for a worker that
    # is still there (one mid-spawn can miss a SIGTERM)
    for stop in ("terminate", "kill"):
        alive = [p for p in processes if p.is_alive()]
        for process in alive:
            getattr(process, stop)()
        for process in alive:
            process.join(timeout=5)


def _execute(tasks: list[dict[str, Any]], jobs: int) -> Iterator[dict[str, Any]]:
    """Results of ``tasks`` as they finish: in this process (jobs=1, or a single task) or in
    ``jobs`` spawned worker processes."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield execute_run(task)
        return
    threads = max(1, _cores() // jobs)
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(threads, os.getpid()),
    )  # fmt: skip
    try:
        with _sigterm_as_exit():
            futures = {pool.submit(execute_run, task): task for task in tasks}
            for future in as_completed(futures):
                yield _outcome(future, futures[future])
    except BaseException:  # Ctrl-C, SIGTERM, or the caller stopped iterating
        _stop_workers(pool)
        raise
    pool.shutdown()


def _outcome(future: Future, task: dict[str, Any]) -> dict[str, Any]:
    """A worker's result; a worker that died is recorded as a failed run."""
    err = future.exception()
    if err is None:
        return future.result()
    if isinstance(err, KeyboardInterrupt | SystemExit):
        raise KeyboardInterrupt from err
    text = "".join(traceback.format_exception(err))
    write_text_atomic(Path(task["run_dir"]) / ERROR, text)
    return {**_identity(task), "status": "failed", "seconds": _NAN, "error": _last(err)}


def _result_line(result: dict[str, Any], done: int, total: int) -> str:
    from spatialspec.evaluation.render import format_ci

    head = f"[{done}/{total}] {result['method']} budget={result['budget']} seed={result['seed']}"
    if result["status"] != "finished":
        return f"{head}: FAILED ({result['error']}); see {result['run_dir']}/{ERROR}"
    rob = format_ci(result["robust_auroc"], result["robust_auroc_ci"] or [None, None])
    auc = format_ci(result["auroc"], result["auroc_ci"] or [None, None])
    return f"{head}: robust AUROC {rob}  AUROC {auc}  ({result['seconds']:.0f} s)"


def _settings(config: Path, overrides: Sequence[str], n_resamples: int) -> dict[str, Any]:
    """What finished runs must share with a resumed sweep."""
    return {
        "config": str(config.resolve()),
        "overrides": list(overrides),
        "n_resamples": n_resamples,
    }


def _invocations(out: Path) -> list[dict[str, Any]]:
    """Earlier invocations of the sweep in ``out`` (when, runs trained, wall seconds)."""
    before = _read_json(out / "sweep.json") or {}
    return list(before.get("invocations", []))


def _check_same_sweep(out: Path, settings: dict[str, Any]) -> None:
    path = out / "sweep.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text()).get("settings", {})
    changed = [k for k in settings if before.get(k) != settings[k]]
    if changed:
        diff = "; ".join(f"{k}: {before.get(k)!r} -> {settings[k]!r}" for k in changed)
        raise ValueError(
            f"{out} holds a sweep with other settings ({diff}); use another --out, or delete "
            f"{path} to reuse its finished runs anyway"
        )


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
) -> pd.DataFrame:
    """Run (or resume) a sweep and write its summaries.

    Args:
        config: Fit config (``<method>.yaml`` beside it is used for that method if present).
        budgets: Mask budgets, e.g. ``"0,10,25,all"`` or ``[0, 10, "all"]``.
        methods: Registered method names, e.g. ``"binary,seg"``.
        seeds: Training seeds, e.g. ``"1,2,3"``.
        out: Sweep folder (see the module docstring for its layout).
        jobs: Fits at a time; above 1 each runs in a spawned worker process with
            ``max(1, cores // jobs)`` torch threads (a script calling this with ``jobs > 1``
            needs the ``if __name__ == "__main__":`` guard that ``spawn`` requires).
        overrides: Extra ``spatialspec fit`` arguments for every run, as command-line tokens
            (``["--trainer.max_epochs", "3"]``; :func:`set_overrides` converts ``KEY=VALUE``).
        progress: Show a progress bar over runs and one line per finished run.
        n_resamples: Bootstrap resamples of each test report's CIs.

    Returns:
        The ``summary.csv`` table (one row per planned run; ``status`` finished | failed).

    Raises:
        KeyError: An unknown method.
        ValueError: A bad budget, seed, override or ``jobs``, or ``out`` holds a sweep with
            other settings.
        FileNotFoundError: ``config`` does not exist.
        KeyboardInterrupt: Interrupted; finished runs are kept and the next call resumes.
    """
    start = time.perf_counter()
    runs, config, overrides = _validate(config, budgets, methods, seeds, jobs, overrides)
    out = Path(out)
    settings = _settings(config, overrides, n_resamples)
    _check_same_sweep(out, settings)
    history = _invocations(out)
    info = _sweep_info(runs, config, settings, jobs)
    write_json_atomic(out / "sweep.json", {**info, "status": "running", "invocations": history})
    pending = [run for run in runs if not is_finished(out, run)]
    _say(progress, f"sweep: {len(runs)} runs, {len(runs) - len(pending)} already finished, "
                   f"{len(pending)} to run ({jobs} at a time) -> {out}")  # fmt: skip
    tasks = [_task(run, out, config, overrides, n_resamples) for run in pending]
    _run_all(tasks, jobs, progress, total=len(runs))
    frame = collect_summary(out, runs)
    wall = round(time.perf_counter() - start, 1)
    history.append({"started": info["created"], "runs_run": len(pending), "wall_seconds": wall})
    write_summaries(out, frame, {**info, "invocations": history})
    _say(progress, _closing_line(frame, out, wall))
    return frame


def _validate(
    config: str | Path,
    budgets: str | Iterable[Any],
    methods: str | Iterable[str],
    seeds: str | Iterable[Any],
    jobs: int,
    overrides: Sequence[str],
) -> tuple[list[SweepRun], Path, list[str]]:
    runs = plan(methods, budgets, seeds)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    overrides = [str(token) for token in overrides]
    _check_overrides(overrides)
    return runs, config, overrides


def _sweep_info(
    runs: list[SweepRun], config: Path, settings: dict[str, Any], jobs: int
) -> dict[str, Any]:
    configs = {run.method: str(method_config(config, run.method)) for run in runs}
    return run_metadata(
        settings=settings,
        config=str(config),
        method_configs=configs,
        methods=list(dict.fromkeys(run.method for run in runs)),
        budgets=list(dict.fromkeys(run.budget for run in runs if run.uses_masks)),
        seeds=list(dict.fromkeys(run.seed for run in runs)),
        jobs=jobs,
        plan=[{**asdict(run), "name": run.name} for run in runs],
    )


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-fit info lines (GPU available, tips) while the sweep runs."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _run_all(tasks: list[dict[str, Any]], jobs: int, progress: bool, total: int) -> None:
    from tqdm.auto import tqdm

    done = total - len(tasks)
    bar = tqdm(total=total, initial=done, desc="sweep", unit="run", disable=not progress)
    with bar, _quiet_lightning():
        for result in _execute(tasks, jobs):
            done += 1
            bar.update()
            if progress:
                bar.write(_result_line(result, done, total), file=sys.stdout)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def _closing_line(frame: pd.DataFrame, out: Path, wall: float) -> str:
    failed = frame.loc[frame["status"] == "failed", "run_dir"].tolist()
    line = f"sweep: {len(frame)} runs in {wall:.0f} s; summary.csv, summary.md, {CHART} in {out}"
    if failed:
        line += f"\nsweep: {len(failed)} failed run(s): " + ", ".join(failed)
    return line


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(run_dir: Path) -> str:
    if (run_dir / REPORT).is_file():
        return "finished"
    return "failed" if (run_dir / ERROR).is_file() else "pending"


def _n_masks(run: SweepRun, run_dir: Path, manifests: dict[str, pd.DataFrame]) -> float:
    """Training positives that kept their masks in this run: the data module's own record in
    ``run.json``, else the budget of the run's resolved config applied to its manifest."""
    if not run.uses_masks:
        return 0
    recorded = (_read_json(run_dir / "run.json") or {}).get("mask_budget") or {}
    if "n_masks" in recorded:
        return int(recorded["n_masks"])
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
        path = str(data["manifest"])
        if path not in manifests:
            manifests[path] = load_manifest(path, check_files=False)
        budget = data.get("mask_budget")
        _, info = apply_mask_budget(manifests[path], "all" if budget is None else budget,
                                    seed=int(data.get("budget_seed") or 0))  # fmt: skip
    except (OSError, KeyError, TypeError, ValueError):
        return _NAN
    return int(info["n_masks"])


def _seconds(run_dir: Path) -> float:
    recorded = _read_json(run_dir / RUN_INFO) or {}
    if recorded.get("status") == "finished" and recorded.get("seconds") is not None:
        return float(recorded["seconds"])
    fit = (_read_json(run_dir / "run.json") or {}).get("fit_seconds")
    return _NAN if fit is None else float(fit)


def _metrics(report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("robust_auroc", "auroc"):
        lo, hi = report.get(f"{key}_ci") or (None, None)
        for name, value in ((key, report.get(key)), (f"{key}_lo", lo), (f"{key}_hi", hi)):
            out[name] = _NAN if value is None else float(value)
    out["n_robust"] = report.get("n_robust", _NAN)
    return out


def _error_line(run_dir: Path) -> str:
    try:
        lines = [ln for ln in (run_dir / ERROR).read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def collect_summary(out: str | Path, runs: Sequence[SweepRun]) -> pd.DataFrame:
    """One row per run of ``runs`` from the run folders below ``out`` (:data:`SUMMARY_COLUMNS`).

    ``status`` is finished (``report.json`` exists), failed (``error.txt`` exists) or pending;
    the metrics of unfinished runs are NaN.
    """
    manifests: dict[str, pd.DataFrame] = {}
    rows = []
    for run in runs:
        run_dir = run_dir_of(out, run)
        status = _status(run_dir)
        report = _read_json(run_dir / REPORT) if status == "finished" else None
        row = {"method": run.method, "budget": run.budget,
               "n_masks": _n_masks(run, run_dir, manifests), "seed": run.seed,
               **_metrics(report or {}), "run_dir": str(run_dir), "status": status,
               "seconds": _seconds(run_dir) if status == "finished" else _NAN,
               "error": _error_line(run_dir) if status == "failed" else ""}  # fmt: skip
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    frame["n_masks"] = frame["n_masks"].astype("Int64")
    frame["n_robust"] = frame["n_robust"].astype("Int64")
    return frame


def _t_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, sd (n-1) and the 95 % t-interval of the mean; NaN where undefined (n < 2).

    The interval is clipped to [0, 1], the range of an AUROC (with 2 seeds, t(1) = 12.7
    makes the raw interval far wider than that).
    """
    from scipy import stats

    values = values[np.isfinite(values)]
    n = values.size
    if n == 0:
        return _NAN, _NAN, _NAN, _NAN
    mean = float(values.mean())
    if n < 2:
        return mean, _NAN, _NAN, _NAN
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, sd, max(0.0, mean - half), min(1.0, mean + half)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method × budget over the finished seeds: ``n_seeds``, and for ``robust_auroc`` and
    ``auroc`` the ``_mean``, ``_sd`` and 95 % t-interval ``_lo`` / ``_hi`` of the mean."""
    done = frame[frame["status"] == "finished"]
    rows = []
    for (method, budget), group in done.groupby(["method", "budget"], sort=False):
        row = {"method": method, "budget": budget,
               "n_masks": group["n_masks"].dropna().median(), "n_seeds": len(group)}  # fmt: skip
        for key in ("robust_auroc", "auroc"):
            stats = _t_interval(group[key].to_numpy(float))
            row.update(zip([f"{key}_{s}" for s in ("mean", "sd", "lo", "hi")], stats, strict=True))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}
    table["_order"] = table["method"].map(order)
    return table.sort_values(["_order", "n_masks"], kind="stable").drop(columns="_order")


def _fmt(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.3f}"


def _mean_sd(row: pd.Series, key: str) -> str:
    mean, sd = row[f"{key}_mean"], row[f"{key}_sd"]
    return _fmt(mean) if not np.isfinite(sd) else f"{mean:.3f} ± {sd:.3f}"


def _mean_ci(row: pd.Series, key: str) -> str:
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    return _fmt(row[f"{key}_mean"]) + ("" if not np.isfinite(lo) else f" [{lo:.3f}, {hi:.3f}]")


def summary_markdown(frame: pd.DataFrame, info: dict[str, Any]) -> str:
    """``summary.md``: the method × budget table, the chart, and the unfinished runs."""
    table = aggregate(frame)
    lines = [
        "# spatialspec sweep: robust AUROC vs. pixel annotations",
        "",
        f"Config `{info.get('config')}`; overrides `{' '.join(info['settings']['overrides'])}`; "
        f"seeds {', '.join(map(str, info.get('seeds', [])))}.",
        "",
        "Test robust AUROC (images where the spurious feature disagrees with the label; 0.5 is "
        "chance) over training seeds: mean ± sd and the mean with a 95 % t-interval (n − 1 "
        "degrees of freedom; – with one seed). `masks`: training positives that kept their "
        "pixel annotation; `binary` uses none (budget `-`).",
        "",
        "| method | budget | masks | seeds | robust AUROC mean ± sd | robust AUROC [95 % t-CI] "
        "| AUROC mean ± sd | AUROC [95 % t-CI] |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        masks = "–" if pd.isna(row["n_masks"]) else f"{int(row['n_masks'])}"
        lines.append(
            f"| {row['method']} | {row['budget']} | {masks} | {row['n_seeds']} | "
            f"{_mean_sd(row, 'robust_auroc')} | {_mean_ci(row, 'robust_auroc')} | "
            f"{_mean_sd(row, 'auroc')} | {_mean_ci(row, 'auroc')} |"
        )
    lines += ["", f"![robust AUROC vs. masks]({CHART})", ""]
    lines += _unfinished_lines(frame)
    lines.append(_wall_line(len(frame), info))
    return "\n".join(lines) + "\n"


def _wall_line(n_runs: int, info: dict[str, Any]) -> str:
    """Wall time of the sweep: every invocation's, so a no-op resume does not hide the work."""
    history = info.get("invocations") or []
    if not history:
        return f"{n_runs} runs."
    line = f"{n_runs} runs; wall time {sum(h['wall_seconds'] for h in history):.0f} s"
    if len(history) == 1:
        return line + "."
    last = history[-1]
    return line + (
        f" over {len(history)} invocations (the last trained {last['runs_run']} run(s) in "
        f"{last['wall_seconds']:.0f} s)."
    )


def _unfinished_lines(frame: pd.DataFrame) -> list[str]:
    lines = []
    for status in ("failed", "pending"):
        rows = frame[frame["status"] == status]
        if rows.empty:
            continue
        lines.append(f"**{status} runs** ({len(rows)}; re-run the command to retry):")
        lines += [f"- `{r.run_dir}` {r.error}".rstrip() for r in rows.itertuples()]
        lines.append("")
    return lines


def plot_sweep(frame: pd.DataFrame, path: str | Path) -> Path:
    """Robust AUROC vs. number of masks (symlog x, so 0 shows): one line per dense method
    (mean and 95 % t-band over seeds); methods without masks as horizontal bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = aggregate(frame)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, group) in enumerate(table.groupby("method", sort=False) if len(table) else []):
        colour = colours[i % len(colours)]
        if (group["budget"] == NO_BUDGET).all():
            _reference_band(ax, method, group.iloc[0], colour)
        else:
            _curve(ax, method, group.dropna(subset=["n_masks"]), colour)
    _style_axes(ax, table)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)


def _reference_band(ax: Any, method: str, row: pd.Series, colour: str) -> None:
    mean, lo, hi = row["robust_auroc_mean"], row["robust_auroc_lo"], row["robust_auroc_hi"]
    if not np.isfinite(mean):
        return
    ax.axhline(mean, color=colour, lw=1.5, ls="-.", label=f"{method} (no masks)")
    if np.isfinite(lo):
        ax.axhspan(lo, hi, color=colour, alpha=0.12, lw=0)


def _curve(ax: Any, method: str, group: pd.DataFrame, colour: str) -> None:
    x = group["n_masks"].to_numpy(float)
    ax.plot(x, group["robust_auroc_mean"], marker="o", color=colour, label=method)
    lo, hi = group["robust_auroc_lo"].to_numpy(float), group["robust_auroc_hi"].to_numpy(float)
    ok = np.isfinite(lo)
    if ok.any():
        ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.18, lw=0)


def _style_axes(ax: Any, table: pd.DataFrame) -> None:
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=1)
    masks = sorted({int(v) for v in table.get("n_masks", pd.Series(dtype=float)).dropna()})
    if masks:
        ax.set_xticks(masks, [str(m) for m in masks])
        ax.set_xlim(-0.3, max(masks) * 1.4 + 1)
    ax.set_ylim(-0.03, 1.05)  # a curve at 0 stays visible
    ax.set_xlabel("training positives with a mask (symlog)")
    ax.set_ylabel("test robust AUROC (mean, 95 % t-CI)")
    ax.set_title("Robust AUROC vs. pixel annotations", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)


def write_summaries(out: str | Path, frame: pd.DataFrame, info: dict[str, Any]) -> None:
    """Write ``summary.csv``, ``summary.md``, the chart and ``sweep.json`` (all atomically)."""
    out = Path(out)
    with atomic_open(out / "summary.csv", "w", newline="") as fh:
        frame.to_csv(fh, index=False)
    plot_sweep(frame, out / CHART)
    write_text_atomic(out / "summary.md", summary_markdown(frame, info))
    counts = frame["status"].value_counts().to_dict()
    status = "complete" if counts.get("finished", 0) == len(frame) else "incomplete"
    write_json_atomic(out / "sweep.json", {**info, "status": status, "counts": counts})


# ---------------------------------------------------------------------------------------------
# Command line (wired into spatialspec.cli)
# ---------------------------------------------------------------------------------------------


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` subcommand to the ``spatialspec`` parser."""
    p = sub.add_parser(
        "sweep", help="grid of fits: methods × mask budgets × seeds -> robust AUROC vs. masks",
        description="Train and evaluate every method × mask budget × seed (resumable).",
    )  # fmt: skip
    p.add_argument(
        "--config",
        required=True,
        help="fit config; <method>.yaml beside it is used for that method if present",
    )
    p.add_argument(
        "--budgets",
        default="0,10,25,50,100,all",
        help="mask budgets: counts, fractions (0.1 or 10%%) or all",
    )
    p.add_argument("--methods", default="binary,bbox,seg", help="registered method names")
    p.add_argument("--seeds", default="1,2,3", help="training (and mask-selection) seeds")
    p.add_argument("--out", required=True, help="sweep folder (re-run to resume)")
    p.add_argument("--jobs", type=int, default=1, help="fits at a time, each in its own process")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="fit overrides for every run, e.g. trainer.max_epochs=3",
    )
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples per report")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar and no per-run lines")  # fmt: skip


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run ``spatialspec sweep``; returns the exit code (0 ok, 1 failed runs, 2 bad arguments,
    130 interrupted)."""
    try:
        frame = run_sweep(
            args.config, args.budgets, args.methods, args.seeds, args.out, jobs=args.jobs,
            overrides=set_overrides(args.set), progress=args.progress,
            n_resamples=args.n_resamples,
        )  # fmt: skip
    except (ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"spatialspec sweep: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspatialspec sweep: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    failed = frame[frame["status"] != "finished"]
    for row in failed.itertuples():
        print(f"spatialspec sweep: {row.status}: {row.run_dir}: {row.error}", file=sys.stderr)
    return 1 if len(failed) else 0
