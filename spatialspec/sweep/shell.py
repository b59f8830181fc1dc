"""``--launcher print``: one shell command line per pending run, for any other scheduler.

Each line (on stdout; the sweep's own messages go to stderr) does one run by name::

    cd /work/project && /venv/bin/python -m spatialspec sweep --out /abs/DIR \\
        --run seg/budget-0.1/seed-1

from the plan and settings the sweep saved in ``DIR/sweep.json``, with the same records as any
other launcher, so ``--status`` and ``--collect`` follow the runs wherever they execute. Feed
the lines to a scheduler's array job, GNU parallel, ``xargs -P``, a cloud batch queue, ...
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spatialspec.sweep.launcher import LAUNCHERS, LaunchContext, Launcher


def command_line(out: str | Path, name: str, cwd: str | Path | None = None) -> str:
    """The shell line that does run ``name`` of the sweep in ``out``.

    Args:
        out: The sweep folder (made absolute).
        name: The run's name.
        cwd: Folder to run in (default: the current one), against which the fit's relative
            paths (e.g. ``data.manifest``) resolve.
    """
    cwd = Path.cwd() if cwd is None else Path(cwd)
    command = [
        sys.executable,
        "-m",
        "spatialspec",
        "sweep",
        "--out",
        str(Path(out).absolute()),
        "--run",
        name,
    ]
    return f"cd {shlex.quote(str(cwd))} && {shlex.join(command)}"


@LAUNCHERS.register("print")
class PrintLauncher(Launcher):
    """Prints the runs' command lines instead of running them."""

    name = "print"
    stdout_is_output = True

    @property
    def waits(self) -> bool:
        """False: the runs happen elsewhere, later."""
        return False

    def launch(self, tasks: Sequence[dict[str, Any]], context: LaunchContext) -> None:
        """One line per task on stdout."""
        for task in tasks:
            print(command_line(context.out, task["name"]), flush=True)
