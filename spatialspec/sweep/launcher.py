"""The launcher interface: how the pending runs of a planned sweep get started.

The sweep plans its runs once, writes ``sweep.json`` and hands the tasks of the runs still to do
to one launcher -- ``local`` (a process pool on this machine), ``slurm`` (a submitit job array)
or ``print`` (one shell line per run, for any other scheduler) -- then summarises from the run
folders if the launcher waited for its runs. A launcher only starts work; what a run writes is
the same whoever starts it (:func:`spatialspec.sweep.run.execute_run`). Adding one is a class
with ``@LAUNCHERS.register("name")`` in a module listed in :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from spatialspec.registry import Registry
from spatialspec.sweep.config import SlurmConfig

LAUNCHERS: Registry[type[Launcher]] = Registry("launcher")


class LaunchError(RuntimeError):
    """A launcher could not start the runs (e.g. the scheduler refused the submission)."""


#: Modules whose import registers the launchers (imported on the first lookup).
_MODULES = ("spatialspec.sweep.local", "spatialspec.sweep.slurm", "spatialspec.sweep.shell")


@dataclass(frozen=True)
class LaunchOptions:
    """What the user chose for launching (each launcher reads its own part).

    Attributes:
        jobs: Fits at a time (local).
        wait: Wait for the runs, then summarise (slurm).
        progress: Progress bar and per-run lines.
        slurm: Resources per run (slurm).
    """

    jobs: int = 1
    wait: bool = True
    progress: bool = True
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass(frozen=True)
class LaunchContext:
    """The sweep a launch belongs to.

    Attributes:
        out: The sweep folder (absolute).
        runs: ``(name, run folder)`` of every planned run, finished or not, in plan order.
        watch: Scheduler job ids of runs already in flight from an earlier invocation (a
            waiting launcher waits for them too).
    """

    out: Path
    runs: tuple[tuple[str, Path], ...]
    watch: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Runs in the plan."""
        return len(self.runs)


class Launcher(ABC):
    """Starts the tasks of a sweep's pending runs.

    Args:
        options: The user's launch options.
    """

    #: The ``--launcher`` name.
    name: ClassVar[str] = ""
    #: Whether the launcher's stdout is its product (the sweep then talks on stderr).
    stdout_is_output: ClassVar[bool] = False

    def __init__(self, options: LaunchOptions) -> None:
        self.options = options

    @property
    def waits(self) -> bool:
        """Whether :meth:`launch` returns only after its runs ended (the sweep then collects)."""
        return True

    def check(self) -> None:  # noqa: B027  (optional hook)
        """Refuse unusable options before anything is written (raises ValueError)."""

    @abstractmethod
    def launch(self, tasks: Sequence[dict[str, Any]], context: LaunchContext) -> None:
        """Start (and, if :attr:`waits`, see through) the runs of ``tasks``.

        Args:
            tasks: One :func:`~spatialspec.sweep.run.make_task` per pending run.
            context: The sweep folder and its plan.
        """


def get_launcher(name: str) -> type[Launcher]:
    """The launcher class registered as ``name``.

    Raises:
        KeyError: Unknown name; the message lists the valid ones.
    """
    for module in _MODULES:
        importlib.import_module(module)
    return LAUNCHERS.get(name)


def make_launcher(name: str, options: LaunchOptions) -> Launcher:
    """An instance of launcher ``name`` with ``options``, checked (KeyError / ValueError)."""
    launcher = get_launcher(name)(options)
    launcher.check()
    return launcher
