"""``--launcher local`` (the default): the runs on this machine, ``--jobs N`` at a time.

With ``--jobs 1`` (or a single run) the runs go one after another in this process. Above 1 each
runs in a spawned worker process (no state shared) with ``max(1, cores // N)`` torch threads;
with GPUs each worker is pinned to one device (``CUDA_VISIBLE_DEVICES`` set before torch starts
CUDA), handed out round-robin over the visible GPUs, and the sweep says which job got which.
Workers die with the sweep process however it dies (``PR_SET_PDEATHSIG``); Ctrl-C or SIGTERM
stops them. A failing run does not stop the others: it is recorded and the sweep exits 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from spatialspec.runinfo import write_text_atomic
from spatialspec.sweep.launcher import LAUNCHERS, LaunchContext, Launcher
from spatialspec.sweep.plan import ERROR, REPORT
from spatialspec.sweep.run import (
    configure_process,
    cores,
    execute_run,
    identity,
    last_line,
    sigterm_as_exit,
)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# GPUs: one per job, round-robin
# ---------------------------------------------------------------------------------------------


def visible_gpus(env: Mapping[str, str] | None = None, count: int | None = None) -> list[str]:
    """The CUDA devices this process may hand out: ``CUDA_VISIBLE_DEVICES``'s entries when it
    is set (ids or UUIDs, up to an invalid ``-1``), else ``0 .. count-1``.

    Args:
        env: Environment to read (default ``os.environ``).
        count: Number of devices when ``CUDA_VISIBLE_DEVICES`` is unset (default: torch's
            ``cuda.device_count()``, 0 without CUDA).
    """
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = []
        for device in (d.strip() for d in listed.split(",")):
            if not device or device == "-1":
                break
            devices.append(device)
        return devices
    if count is None:
        count = _cuda_count()
    return [str(i) for i in range(count)]


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def assign_gpus(jobs: int, gpus: Sequence[str]) -> list[str | None]:
    """The device of each of ``jobs`` workers: round-robin over ``gpus`` (None without GPUs)."""
    if not gpus:
        return [None] * jobs
    return [gpus[i % len(gpus)] for i in range(jobs)]


def gpu_line(assignment: Sequence[str | None]) -> str | None:
    """What the sweep says about its devices, e.g. ``"sweep: 3 jobs on 2 GPUs (round-robin):
    job 1 -> GPU 0, job 2 -> GPU 1, job 3 -> GPU 0"``; None without GPUs."""
    if not assignment or assignment[0] is None:
        return None
    gpus = list(dict.fromkeys(assignment))
    pairs = ", ".join(f"job {i} -> GPU {gpu}" for i, gpu in enumerate(assignment, 1))
    shared = " (some share a GPU)" if len(assignment) > len(gpus) else ""
    return f"sweep: {len(assignment)} jobs on {len(gpus)} GPU(s), round-robin{shared}: {pairs}"


# ---------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------


def _init_worker(threads: int, parent: int | None = None, devices: Any = None) -> None:
    """Worker process setup: its GPU (from the ``devices`` queue, before torch starts CUDA),
    its share of the cores, death with the parent, and less chatter from Lightning."""
    _pin_gpu(devices)
    _die_with_parent(parent)
    configure_process(threads)


def _pin_gpu(devices: Any) -> str | None:
    """Take this worker's device from the ``devices`` queue and make it the only visible one
    (``CUDA_VISIBLE_DEVICES``, read when torch starts CUDA); None without a queue."""
    if devices is None:
        return None
    device = devices.get(timeout=60)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    return device


def _die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this worker when the sweep process dies, however it dies.

    SIGKILL, not SIGTERM: during a fit Lightning catches SIGTERM and stops the fit gracefully,
    after which a worker whose parent is gone would wait forever for its next task. A worker
    whose ``parent`` died before this call exits at once. The orphan's run folder, unfinished,
    is resumed by the next sweep.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued runs and terminate the running ones (their folders resume next time)."""
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


def _device_queue(context: Any, assignment: Sequence[str | None]) -> Any:
    if assignment[0] is None:
        return None
    queue = context.Queue()
    for device in assignment:
        queue.put(device)
    return queue


def _execute(
    tasks: Sequence[dict[str, Any]], jobs: int, gpus: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Results of ``tasks`` as they finish: in this process (jobs=1, or a single task) or in
    ``jobs`` spawned worker processes, one GPU each when there are ``gpus``."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield execute_run(task)
        return
    workers = min(jobs, len(tasks))
    assignment = assign_gpus(workers, visible_gpus() if gpus is None else gpus)
    if line := gpu_line(assignment):
        print(line, flush=True)
    context = multiprocessing.get_context("spawn")
    initargs = (max(1, cores() // jobs), os.getpid(), _device_queue(context, assignment))
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=initargs
    )
    try:
        with sigterm_as_exit():
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
    return {**identity(task), "status": "failed", "seconds": _NAN, "error": last_line(err)}


# ---------------------------------------------------------------------------------------------
# The launcher
# ---------------------------------------------------------------------------------------------


def result_line(result: dict[str, Any], done: int, total: int) -> str:
    """``[3/6] seg budget=0.1 seed=1: robust AUROC 0.61 [...]  AUROC ...  (42 s)``."""
    from spatialspec.evaluation.render import format_ci

    spec = f" specificity={result['specificity']}" if result.get("specificity") else ""
    head = (
        f"[{done}/{total}] {result['method']} budget={result['budget']}{spec} seed={result['seed']}"
    )
    if result["status"] != "finished":
        return f"{head}: FAILED ({result['error']}); see {result['run_dir']}/{ERROR}"
    rob = format_ci(result["robust_auroc"], result["robust_auroc_ci"] or [None, None])
    auc = format_ci(result["auroc"], result["auroc_ci"] or [None, None])
    gpu = f" on GPU {result['cuda_visible_devices']}" if result.get("cuda_visible_devices") else ""
    return f"{head}: robust AUROC {rob}  AUROC {auc}  ({result['seconds']:.0f} s{gpu})"


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


@LAUNCHERS.register("local")
class LocalLauncher(Launcher):
    """The process pool of this machine (see the module docstring)."""

    name = "local"

    def check(self) -> None:
        """Refuse a ``jobs`` that is not a positive integer."""
        jobs = self.options.jobs
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {jobs!r}")

    def launch(self, tasks: Sequence[dict[str, Any]], context: LaunchContext) -> None:
        """Run ``tasks`` here, ``jobs`` at a time, with a progress bar and a line per run."""
        from tqdm.auto import tqdm

        progress = self.options.progress
        done = sum((run_dir / REPORT).is_file() for _, run_dir in context.runs)
        total = context.total
        bar = tqdm(total=total, initial=done, desc="sweep", unit="run", disable=not progress)
        with bar, _quiet_lightning():
            for result in _execute(tasks, self.options.jobs):
                done += 1
                bar.update()
                if progress:
                    bar.write(result_line(result, done, total), file=sys.stdout)
