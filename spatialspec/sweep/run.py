"""One run of a sweep: fit, evaluate, and the bookkeeping every launcher shares.

Whichever launcher starts a run -- the local pool, a SLURM array task, a line printed for another
scheduler (``spatialspec sweep --out DIR --run NAME``) -- it ends up in :func:`execute_run`,
so the run folder always tells the same story:

* ``sweep_run.json``: the fit arguments, pid, host, scheduler job, ``status`` (running |
  finished | failed | interrupted | requeued) and the wall time;
* ``heartbeat.json``: refreshed while the run is in progress (:mod:`spatialspec.sweep.heartbeat`);
* ``error.txt``: the traceback of a failed run (an interrupted run has none: its record says
  what stopped it);
* ``report.json``: written last -- the run is finished iff it exists.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from spatialspec.runinfo import write_json_atomic, write_text_atomic
from spatialspec.sweep.fitargs import default_tracking_uri, fit_argv
from spatialspec.sweep.folder import find_run, read_sweep
from spatialspec.sweep.heartbeat import Heartbeat, iso
from spatialspec.sweep.plan import ERROR, REPORT, RUN_INFO, SweepRun, is_finished, run_dir_of

_NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# The task: everything a (possibly remote) process needs to do one run, as plain data
# ---------------------------------------------------------------------------------------------


def make_task(run: SweepRun, out: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The task of one run from the sweep's :func:`~spatialspec.sweep.folder.settings`.

    Paths are absolute, so the task runs the same from any working folder.
    """
    out = Path(out).absolute()
    run_dir = run_dir_of(out, run)
    loggers = settings.get("loggers") or None
    uri = settings.get("mlflow_tracking_uri")
    if loggers and "mlflow" in loggers and not uri:
        uri = default_tracking_uri(out)
    argv = fit_argv(run, settings["config"], run_dir, settings["overrides"], loggers, uri)
    return {
        **asdict(run),
        "name": run.name,
        "run_dir": str(run_dir),
        "argv": argv,
        "n_resamples": settings["n_resamples"],
    }


def identity(task: dict[str, Any]) -> dict[str, Any]:
    """``name``, ``method``, ``budget``, ``seed``, ``run_dir`` (and ``specificity`` when set)."""
    keys = ("name", "method", "budget", "seed", "run_dir")
    out = {k: task[k] for k in keys}
    if task.get("specificity"):
        out["specificity"] = task["specificity"]
    return out


def last_line(err: BaseException) -> str:
    """One line describing an error (its last non-empty line, with the type)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------
# Fit + evaluate
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


def _fit_and_evaluate(task: dict[str, Any]) -> dict[str, Any]:
    run_dir = Path(task["run_dir"])
    info = _fit(task["argv"])
    best = info.get("best_checkpoint") or run_dir / "checkpoints" / "best.ckpt"
    if not Path(best).is_file():
        raise FileNotFoundError(f"the fit saved no best checkpoint ({best})")
    accelerator = (info.get("config") or {}).get("trainer", {}).get("accelerator") or "auto"
    return _evaluate(Path(best), run_dir / REPORT, task["n_resamples"], accelerator)


@contextlib.contextmanager
def _keep_sigint() -> Iterator[None]:
    """Restore the SIGINT handler afterwards (Lightning ignores SIGINT after a Ctrl-C)."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------
# One run with its records
# ---------------------------------------------------------------------------------------------


def _scheduler() -> dict[str, Any]:
    """Where this process runs: its SLURM job (array task) and restarts, its visible GPUs."""
    env = os.environ
    out: dict[str, Any] = {}
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        out["slurm_job"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    elif env.get("SLURM_JOB_ID"):
        out["slurm_job"] = env["SLURM_JOB_ID"]
    if env.get("SLURM_RESTART_COUNT"):
        out["slurm_restarts"] = int(env["SLURM_RESTART_COUNT"])
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        out["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
    return out


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _interruption(err: BaseException) -> str:
    """What stopped a run: ``SIGTERM``, ``KeyboardInterrupt`` or ``exit CODE``."""
    code = getattr(err, "code", None)
    if type(err).__name__ == "SIGTERMException" or code == 128 + signal.SIGTERM:
        return "SIGTERM"
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return f"exit {code}"


def _record_interruption(run_dir: Path, record: dict[str, Any], err: BaseException) -> None:
    """Mark the run interrupted -- unless this attempt was requeued meanwhile (SLURM)."""
    try:
        if json.loads((run_dir / RUN_INFO).read_text()).get("status") == "requeued":
            return
    except (OSError, ValueError):
        pass
    ended = time.time()
    write_json_atomic(
        run_dir / RUN_INFO,
        {
            **record,
            "status": "interrupted",
            "reason": _interruption(err),
            "ended": iso(ended),
            "seconds": round(ended - record["started_at"], 2),
        },
    )


def execute_run(task: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Fit and evaluate one run; failures are recorded in ``error.txt``, not raised.

    Args:
        task: ``name``, ``method``, ``budget``, ``seed``, ``run_dir``, ``argv`` (fit arguments)
            and ``n_resamples`` (see :func:`make_task`).
        threads: Set up this process first (:func:`configure_process`: torch threads, quiet
            Lightning) -- after the run is recorded as running, so that a fresh process shows
            as running while it imports torch.

    Returns:
        ``task``'s identity plus ``status`` (finished | failed | requeued: under SLURM the fit
        checkpointed and requeued its task), ``seconds`` and, when finished, the headline
        metrics; when failed, ``error`` (the last line of the error).

    Raises:
        KeyboardInterrupt: The run was interrupted (Ctrl-C, SIGTERM); it is recorded as such
            and stays unfinished, and the next sweep resumes it.
    """
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR).unlink(missing_ok=True)
    started = time.time()
    record = {k: task[k] for k in ("name", "method", "budget", "seed", "argv")}
    record.update(
        pid=os.getpid(),
        host=socket.gethostname(),
        **_scheduler(),
        started=iso(started),
        started_at=started,
    )
    write_json_atomic(run_dir / RUN_INFO, {**record, "status": "running"})
    try:
        with Heartbeat(run_dir), _keep_sigint():
            if threads is not None:
                configure_process(threads)
            record["torch_threads"] = _torch_threads()
            report = _fit_and_evaluate(task)
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, SIGTERM: stop, not just this run
        _record_interruption(run_dir, record, err)
        if isinstance(err, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt(f"run stopped (exit {err.code})") from err
    except Exception as err:
        seconds = round(time.time() - started, 2)
        if _requeued(err):  # the fit checkpointed and SLURM requeued the task: it resumes
            mark_requeued(run_dir, last_line(err), record)
            return {**identity(task), "status": "requeued", "seconds": seconds, "error": ""}
        write_text_atomic(run_dir / ERROR, traceback.format_exc())
        write_json_atomic(run_dir / RUN_INFO, {**record, "status": "failed", "seconds": seconds})
        return {**identity(task), "status": "failed", "seconds": seconds, "error": last_line(err)}
    seconds = round(time.time() - started, 2)
    write_json_atomic(run_dir / RUN_INFO, {**record, "status": "finished", "seconds": seconds})
    keys = ("robust_auroc", "robust_auroc_ci", "auroc", "auroc_ci")
    return {
        **identity(task),
        "status": "finished",
        "seconds": seconds,
        **_scheduler(),
        **{k: report.get(k) for k in keys},
    }


def _requeued(err: Exception) -> bool:
    """Whether the fit stopped because it checkpointed and requeued its SLURM job."""
    from spatialspec.fitting.requeue import Requeued

    return isinstance(err, Requeued)


def mark_requeued(run_dir: str | Path, why: str, record: dict[str, Any] | None = None) -> None:
    """Record that the scheduler requeued this run's task (it resumes when it restarts).

    Args:
        run_dir: The run folder.
        why: What happened (e.g. the fit's ``Requeued`` message).
        record: The attempt's record (default: the one in the folder).
    """
    path = Path(run_dir) / RUN_INFO
    if record is None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
    write_json_atomic(
        path, {**record, "status": "requeued", "reason": why, "requeued": iso(time.time())}
    )


# ---------------------------------------------------------------------------------------------
# A run by name, in a process of its own (print and slurm launchers)
# ---------------------------------------------------------------------------------------------


def cores() -> int:
    """CPU cores this process may use (``SLURM_CPUS_PER_TASK`` in a SLURM task)."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_process(threads: int) -> None:
    """Set up a process that does runs: ``threads`` torch threads, less chatter from Lightning."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import lightning  # noqa: F401  (sets its loggers' levels on import: set ours after)
    import torch

    torch.set_num_threads(threads)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available.*")


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` while the block runs, so that a run records its
    interruption (and the local pool stops its workers) instead of vanishing."""
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


def run_named(out: str | Path, name: str, threads: int | None = None) -> dict[str, Any]:
    """Do the planned run ``name`` of the sweep in ``out`` (from its ``sweep.json``).

    Args:
        out: The sweep folder.
        name: The run's name, e.g. ``seg/budget-0.1/seed-1``.
        threads: Torch threads of this process (see :func:`execute_run`).

    Returns:
        As :func:`execute_run`; a run that is already finished is not redone (``status``
        finished, ``seconds`` NaN).

    Raises:
        FileNotFoundError: ``out`` holds no sweep.
        KeyError: No such run in the plan.
        KeyboardInterrupt: The run was interrupted.
    """
    info = read_sweep(out)
    run = find_run(info, name)
    task = make_task(run, out, info["settings"])
    if is_finished(out, run):
        return {**identity(task), "status": "finished", "seconds": _NAN, "already": True}
    return execute_run(task, threads)
