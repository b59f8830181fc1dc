"""SLURM auto-requeue taken at a batch boundary.

Lightning's SLURM auto-requeue (``#SBATCH --signal=USR1@90``; on by default when a fit runs
under SLURM) saves ``hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue`` from inside the signal
handler, that is wherever the main thread happens to be: possibly between the optimizer's
updates of two parameter groups, or between a step and its loop counters. A fit resumed from
such a checkpoint redoes the interrupted step on partly updated state.

:class:`BatchBoundaryRequeue` keeps Lightning's contract (same signal, same file name in the run
folder, same ``scontrol requeue``) but only *records* the signal in the handler; at the end of
the current training batch it saves the checkpoint (with the data loader's position, so the
requeued fit continues with the next batch of the same epoch; see
:class:`~spatialspec.data.samplers.ResumableLoader`) and requeues the job; the fit stops with
:class:`Requeued` before the next batch (after Lightning has logged the checkpointed batch).
Under DDP the ranks agree (any rank that got the signal counts) before any
of them saves. Registering a handler before Lightning's signal connector runs keeps Lightning
from installing its own.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

__all__ = ["BatchBoundaryRequeue", "Requeued", "hpc_checkpoints", "slurm_job_id"]

log = logging.getLogger(__name__)
_HPC = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")


class Requeued(Exception):
    """The fit saved a checkpoint and asked SLURM to requeue its job; the job ends here."""


def hpc_checkpoints(folder: str | Path) -> list[Path]:
    """``hpc_ckpt_<n>.ckpt`` files of ``folder``, by increasing ``n``."""
    found = [
        (int(m.group(1)), p)
        for p in Path(folder).glob("hpc_ckpt_*.ckpt")
        if (m := _HPC.search(p.name))
    ]
    return [p for _, p in sorted(found)]


def slurm_job_id() -> str | None:
    """The job to requeue: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _slurm_environment(trainer: L.Trainer) -> SLURMEnvironment | None:
    """The fit's SLURM environment: the strategy's (DDP), a detected one (one device), or --
    in a batch job whose script runs ``spatialspec fit`` without ``srun``, which Lightning does
    not take for SLURM -- one with Lightning's defaults (auto-requeue on ``SIGUSR1``)."""
    env = getattr(trainer.strategy, "cluster_environment", None)
    if isinstance(env, SLURMEnvironment):
        return env
    if SLURMEnvironment.detect() or "SLURM_JOB_ID" in os.environ:
        return SLURMEnvironment()  # what Lightning picks under srun: auto_requeue on, SIGUSR1
    return None


class BatchBoundaryRequeue(L.Callback):
    """Checkpoint and requeue at the end of the batch during which the requeue signal came.

    Active in SLURM jobs (with Lightning's ``auto_requeue`` on, its default there), also when the
    batch script runs the fit without ``srun``: ``#SBATCH --signal=B:USR1@90`` then reaches it.

    Args:
        folder: Where ``hpc_ckpt_<n>.ckpt`` goes (the run folder, Lightning's place for it).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.requested = False
        self.stopped: str | None = None  # set once checkpointed and requeued
        self._signal: signal.Signals | None = None
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        env = _slurm_environment(trainer)
        if stage != "fit" or env is None or not env.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        self._signal = env.requeue_signal or signal.SIGUSR1
        self._previous = signal.signal(self._signal, self._record)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._signal is not None:
            signal.signal(self._signal, self._previous)
            self._signal = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        log.info("requeue signal %s received: checkpoint and requeue after this batch", signum)
        self.requested = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self._signal is None:
            return
        requested = self.requested
        if trainer.world_size > 1:  # every rank must save at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested and self.stopped is None:
            self.stopped = self._checkpoint_and_requeue(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self.stopped is not None:
            raise Requeued(self.stopped)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped is not None:  # the signal came during the last batch of the fit
            raise Requeued(self.stopped)

    def _checkpoint_and_requeue(self, trainer: L.Trainer) -> str:
        existing = hpc_checkpoints(self.folder)
        number = int(_HPC.search(existing[-1].name).group(1)) + 1 if existing else 1
        path = self.folder / f"hpc_ckpt_{number}.ckpt"
        trainer.save_checkpoint(path)
        job = slurm_job_id()
        if trainer.is_global_zero and job is not None:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(
                    f"saved {path}, but `scontrol requeue {job}` failed ({result.returncode}): "
                    f"{result.stderr.strip()}; resume with `spatialspec fit ... --resume auto`"
                )
        return f"saved {path} at step {trainer.global_step}; SLURM job {job} requeued"
