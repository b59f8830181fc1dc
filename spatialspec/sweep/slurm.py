"""``--launcher slurm``: the pending runs as one SLURM job array, submitted with submitit.

One array task per run (``--array=0-N%P`` with ``array_parallelism`` P), each doing the run by
name exactly as ``spatialspec sweep --out DIR --run NAME`` does (``fit --resume auto``, then
``evaluate``), with the resources of :class:`~spatialspec.sweep.config.SlurmConfig`. submitit's
files (pickles, ``<job>_<task>_log.out/err``, results) live in ``DIR/slurm/``, and each run
folder gets ``submitted.json`` (job id, log paths), so that ``--status`` can tell a queued run
and show the log's last line of a task that died.

**Requeue and resume**: SLURM signals each task (``--signal=USR1@90``, Lightning's requeue
signal) 90 s before its time limit. During the fit, the fit's own handler checkpoints at the
next batch boundary and requeues the task (:mod:`spatialspec.fitting.requeue`); outside the fit
(evaluation), :class:`SlurmRun` requeues it at once. The restarted task continues from the run
folder's newest checkpoint (``fit --resume auto``), at most ``max_requeues`` times. A task
preempted by a cluster that requeues (PreemptMode=REQUEUE) restarts the same way. A task
cancelled or killed otherwise is reported failed by ``--status`` (interrupted, or no
heartbeat), and re-running the sweep command resubmits it.

By default the sweep waits for the array (progress from the run folders, ``squeue`` to know
when the tasks have left the queue) and then summarises; ``--no-wait`` returns after the
submission. A re-run never resubmits a run whose task is still queued or running.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import submitit

from spatialspec.runinfo import write_json_atomic, write_text_atomic
from spatialspec.sweep.config import SlurmConfig
from spatialspec.sweep.heartbeat import iso
from spatialspec.sweep.launcher import LAUNCHERS, LaunchContext, Launcher, LaunchError
from spatialspec.sweep.plan import ERROR, RUN_INFO, SUBMITTED
from spatialspec.sweep.run import cores, mark_requeued, run_named
from spatialspec.sweep.run import sigterm_as_exit as _sigterm_as_exit
from spatialspec.sweep.status import count_line, read_json, run_state

#: Seconds between two looks at the queue and the run folders while waiting.
POLL_S = 5.0
#: Job states after which a task will not run again (anything else is still in flight).
DONE_STATES = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
     "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip
SLURM_FOLDER = "slurm"
#: What submitit raises when sbatch fails (the text carries sbatch's answer).
_SUBMITIT_ERRORS = (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError)
#: The time-limit signal, sent SIGNAL_DELAY_S before a task's limit: Lightning's requeue signal,
#: on which the fit checkpoints at the next batch boundary and requeues its task.
REQUEUE_SIGNAL = signal.SIGUSR1
SIGNAL_DELAY_S = 90


class SubmissionError(LaunchError):
    """sbatch refused the array (the message carries its answer)."""


# ---------------------------------------------------------------------------------------------
# The array task
# ---------------------------------------------------------------------------------------------


class SlurmRun:
    """The callable of one array task: planned run ``name`` of the sweep in ``out``.

    Args:
        out: The sweep folder (absolute).
        name: The run's name.
        max_requeues: Restarts of the task (``SLURM_RESTART_COUNT``) after which the run is
            given up rather than resumed once more.
    """

    def __init__(self, out: str, name: str, max_requeues: int = 3) -> None:
        self.out = out
        self.name = name
        self.max_requeues = max_requeues

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.out) / "runs" / self.name

    def __call__(self) -> dict[str, Any]:
        """Do the run; raise if it failed (so that SLURM and submitit record the failure)."""
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts > self.max_requeues:
            return self._give_up(restarts)
        try:
            with _sigterm_as_exit(), _requeue_on_signal(self.run_dir):
                result = run_named(self.out, self.name, threads=cores())
        except KeyboardInterrupt:
            print(f"spatialspec sweep: run {self.name} stopped", file=sys.stderr)
            raise SystemExit(143) from None
        if result["status"] == "failed":
            raise RuntimeError(
                f"run {self.name} failed: {result.get('error')} "
                f"(traceback in {result['run_dir']}/error.txt)"
            )
        return result

    def _give_up(self, restarts: int) -> dict[str, Any]:
        message = (
            f"requeued {restarts} times (more than max_requeues={self.max_requeues}); raise "
            "slurm.time_min or slurm.max_requeues and re-run the sweep to resume"
        )
        write_text_atomic(self.run_dir / ERROR, message + "\n")
        record = read_json(self.run_dir / RUN_INFO) or {}
        write_json_atomic(self.run_dir / RUN_INFO, {**record, "status": "failed"})
        raise RuntimeError(f"run {self.name}: {message}")


@contextlib.contextmanager
def _requeue_on_signal(run_dir: Path) -> Iterator[None]:
    """Outside the fit (which has its own handler, checkpointing at a batch boundary), the
    time-limit signal requeues the task at once: the restarted task resumes the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _requeue(signum: int, frame: Any) -> None:
        job = _job_id()
        mark_requeued(run_dir, f"signal {signal.Signals(signum).name} outside the fit")
        if job:
            subprocess.run(["scontrol", "requeue", job], capture_output=True, timeout=60)
        raise SystemExit(0)

    previous = signal.signal(REQUEUE_SIGNAL, _requeue)
    try:
        yield
    finally:
        signal.signal(REQUEUE_SIGNAL, previous)


def _job_id() -> str | None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


# ---------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------


def _memory(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{round(mem_gb * 1024)}M"


def executor_parameters(resources: SlurmConfig) -> dict[str, Any]:
    """``submitit.SlurmExecutor.update_parameters`` keywords of one run's task."""
    params: dict[str, Any] = {
        "job_name": resources.job_name,
        "time": resources.time_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": resources.cpus,
    }
    optional = {
        "partition": resources.partition,
        "account": resources.account,
        "qos": resources.qos,
        "array_parallelism": resources.array_parallelism,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if resources.gpus:
        params["gpus_per_node"] = resources.gpus
    if resources.mem_gb is not None:
        params["mem"] = _memory(resources.mem_gb)
    # the fit's requeue signal (Lightning's), instead of submitit's USR2
    signal_option = {"signal": f"{REQUEUE_SIGNAL.name.removeprefix('SIG')}@{SIGNAL_DELAY_S}"}
    params["additional_parameters"] = {**signal_option, **resources.sbatch}
    if resources.setup:
        params["setup"] = list(resources.setup)
    return params


def make_executor(folder: Path, resources: SlurmConfig) -> submitit.SlurmExecutor:
    """A submitit SLURM executor writing into ``folder`` with the resources of one run.

    Raises:
        ValueError: submitit rejects a parameter (e.g. a malformed sbatch option).
    """
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=resources.max_requeues)
    try:
        executor.update_parameters(**executor_parameters(resources))
    except ValueError as err:
        raise ValueError(f"SLURM resources: {str(err).splitlines()[0]}") from None
    return executor


def submit(out: Path, names: Sequence[str], resources: SlurmConfig) -> list[Any]:
    """Submit the runs ``names`` as one array; ``submitted.json`` in each run folder.

    Returns:
        submitit's jobs, one per name.

    Raises:
        SubmissionError: sbatch failed.
    """
    executor = make_executor(out / SLURM_FOLDER, resources)
    submitted_at = time.time()  # before sbatch: a task may start (and record) at once
    jobs: list[Any] = []
    try:
        with executor.batch():
            for name in names:
                run = SlurmRun(str(out), name, resources.max_requeues)
                jobs.append(executor.submit(run))
    except (subprocess.CalledProcessError, OSError, *_SUBMITIT_ERRORS) as err:
        answer = getattr(err, "output", None) or getattr(err, "stderr", None) or err
        raise SubmissionError(f"sbatch refused the array: {_text(answer)}") from None
    for name, job in zip(names, jobs, strict=True):
        record = {
            "launcher": "slurm",
            "job_id": job.job_id,
            "submitted": iso(submitted_at),
            "submitted_at": submitted_at,
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
            "result": str(job.paths.result_pickle),
        }
        write_json_atomic(out / "runs" / name / SUBMITTED, record)
    return jobs


def _text(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


# ---------------------------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------------------------


def queue_states() -> dict[str, str] | None:
    """``{job id: state}`` of this user's jobs known to SLURM (array tasks one by one), or None
    if ``squeue`` is missing or fails."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    command = [squeue, "-h", "-r", "-t", "all", "-o", "%i|%T", "-u", getpass.getuser()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    states = {}
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state.strip()
    return states


def in_flight(job_ids: Iterable[str], states: dict[str, str] | None = None) -> set[str] | None:
    """The jobs of ``job_ids`` still queued or running (None if the queue cannot be read)."""
    states = queue_states() if states is None else states
    if states is None:
        return None
    return {job for job in job_ids if job in states and states[job] not in DONE_STATES}


def run_jobs(run_dir: Path) -> set[str]:
    """The SLURM jobs a run folder mentions (its submission, its last attempt)."""
    jobs = {
        (read_json(run_dir / SUBMITTED) or {}).get("job_id"),
        (read_json(run_dir / RUN_INFO) or {}).get("slurm_job"),
    }
    return {str(job) for job in jobs if job}


# ---------------------------------------------------------------------------------------------
# The launcher
# ---------------------------------------------------------------------------------------------


@LAUNCHERS.register("slurm")
class SlurmLauncher(Launcher):
    """One SLURM job array per invocation (see the module docstring)."""

    name = "slurm"

    @property
    def waits(self) -> bool:
        """Unless ``--no-wait``: the sweep waits for the array, then summarises."""
        return self.options.wait

    def check(self) -> None:
        """Refuse a machine without sbatch, and resources submitit would reject."""
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise ValueError(
                f"--launcher slurm needs SLURM's {' and '.join(missing)} on PATH (not found "
                "here); on another scheduler, --launcher print writes one command per run"
            )
        executor_parameters(self.options.slurm)

    def launch(self, tasks: Sequence[dict[str, Any]], context: LaunchContext) -> None:
        """Submit ``tasks`` as one array; wait for it (and ``context.watch``) unless no-wait."""
        job_ids: list[str] = []
        if tasks:
            jobs = submit(context.out, [task["name"] for task in tasks], self.options.slurm)
            job_ids = [job.job_id for job in jobs]
            print(self._submitted_line(job_ids, context), flush=True)
        if self.waits:
            self._wait(context, [*job_ids, *context.watch])

    def _submitted_line(self, job_ids: list[str], context: LaunchContext) -> str:
        array = job_ids[0].split("_")[0]
        cap = self.options.slurm.array_parallelism
        limit = f", at most {cap} at a time" if cap else ""
        what = (
            f"array {array} ({job_ids[0]} .. {job_ids[-1]}{limit})" if len(job_ids) > 1 else array
        )
        return (
            f"sweep: submitted {len(job_ids)} run(s) as SLURM job {what}; logs in "
            f"{context.out / SLURM_FOLDER}"
        )

    def _wait(self, context: LaunchContext, job_ids: list[str]) -> None:
        """Until every job has left the queue: a progress bar over the plan's runs and a line
        per run that finishes or fails; then mark runs whose task vanished unstarted."""
        if not job_ids:
            return
        try:
            self._poll(context, job_ids)
        except KeyboardInterrupt:
            array = sorted({job.split("_")[0] for job in job_ids})
            print(
                f"\nsweep: stopped waiting; the SLURM jobs keep running (scancel "
                f"{' '.join(array)} stops them)",
                file=sys.stderr,
            )
            raise
        _mark_lost(context)

    def _poll(self, context: LaunchContext, job_ids: list[str]) -> None:
        from tqdm.auto import tqdm

        seen = {name: run_state(run_dir).status for name, run_dir in context.runs}
        done = sum(status == "finished" for status in seen.values())
        progress = self.options.progress
        bar = tqdm(
            total=context.total,
            initial=done,
            desc="sweep (slurm)",
            unit="run",
            disable=not progress,
        )
        with bar:
            while True:
                active = in_flight(job_ids)
                states = {name: run_state(run_dir) for name, run_dir in context.runs}
                for name, state in states.items():
                    if state.status != seen[name] and state.status in ("finished", "failed"):
                        done += state.status == "finished"
                        bar.update(int(state.status == "finished"))
                        if progress:
                            bar.write(
                                f"[{done}/{context.total}] {name}: {state.status} {state.detail}",
                                file=sys.stdout,
                            )
                    seen[name] = state.status
                bar.set_postfix_str(count_line(list(states.values())), refresh=True)
                if active is not None and not active:
                    return
                time.sleep(POLL_S)


def _mark_lost(context: LaunchContext) -> None:
    """Runs still pending once their task has left the queue (cancelled while queued, or died
    before the run began) are recorded as such, so that ``--status`` does not call them queued."""
    for _, run_dir in context.runs:
        state = run_state(run_dir)
        submitted = read_json(run_dir / SUBMITTED)
        if state.status != "pending" or not submitted:
            continue
        now = time.time()
        record = {
            "status": "lost",
            "slurm_job": submitted.get("job_id"),
            "started_at": now,
            "ended": iso(now),
            "reason": "the SLURM task left the queue before the run "
            "began (cancelled while pending, or died starting)",
        }
        write_json_atomic(run_dir / RUN_INFO, record)
