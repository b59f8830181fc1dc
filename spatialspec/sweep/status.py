"""``spatialspec sweep --out DIR --status``: the state of every run, from the run folders alone.

Nothing is asked of a scheduler, so the same answer comes for any launcher -- the local pool, a
SLURM array, the lines of ``--launcher print`` run by someone else's scheduler. A run is

* **finished**: ``report.json`` exists;
* **running**: its record says running and its heartbeat is fresh;
* **pending**: not started yet (or queued: ``submitted.json`` is newer than its last attempt;
  or requeued by the scheduler after a preemption or time-out);
* **failed**: ``error.txt`` (its last line is shown), or interrupted (SIGTERM, Ctrl-C), or its
  process is gone without a word (no fresh heartbeat: killed, preempted, node lost), or its
  SLURM task left the queue without starting it (the task log's last line is shown).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spatialspec.sweep.folder import planned_runs, read_sweep
from spatialspec.sweep.heartbeat import GRACE_S, liveness, read_heartbeat
from spatialspec.sweep.plan import ERROR, REPORT, RUN_INFO, SUBMITTED, SweepRun, run_dir_of

#: The states, in the order ``--status`` counts them.
STATES = ("finished", "running", "pending", "failed")
RESUME = "re-run the sweep to resume"


@dataclass(frozen=True)
class RunState:
    """The state of one run and a one-line reason (metrics, heartbeat, error's last line)."""

    status: str
    detail: str = ""


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None if missing or unreadable (e.g. mid-write elsewhere)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def last_nonempty_line(path: Path | str | None) -> str:
    """The last non-blank line of a text file ('' if missing)."""
    if not path:
        return ""
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def run_state(run_dir: str | Path, now: float | None = None) -> RunState:
    """The state of a run from its folder (see the module docstring).

    Args:
        run_dir: The run folder.
        now: The time to judge heartbeats at (default: now).
    """
    run_dir = Path(run_dir)
    if (run_dir / REPORT).is_file():
        return RunState("finished", _finished_detail(run_dir))
    record = read_json(run_dir / RUN_INFO) or {}
    submitted = read_json(run_dir / SUBMITTED)
    if submitted and not _started_since(record, submitted):
        return _queued(submitted)
    status = record.get("status")
    if status == "running":
        return _running(run_dir, record, submitted, now)
    if status == "requeued":
        why = record.get("reason") or "preempted or timed out"
        return RunState("pending", f"requeued at {record.get('requeued')} ({why}){_job(record)}")
    if status == "interrupted":
        when = f"interrupted by {record.get('reason')} at {record.get('ended')}{_job(record)}"
        return RunState("failed", f"{when}: cancelled, preempted or stopped? {RESUME}")
    if status == "lost":
        return RunState(
            "failed", f"{record.get('reason')}{_job(record)}: {RESUME}" + _log_tail(submitted)
        )
    if (run_dir / ERROR).is_file() or status == "failed":
        return RunState("failed", last_nonempty_line(run_dir / ERROR) or "failed (no error.txt)")
    return RunState("pending")


def _started_since(record: dict[str, Any], submitted: dict[str, Any]) -> bool:
    """Whether the run's last attempt began after its last submission."""
    return float(record.get("started_at") or 0) >= float(submitted.get("submitted_at") or 0)


def _queued(submitted: dict[str, Any]) -> RunState:
    """A submitted task that has not started the run: queued, or dead before it began."""
    job = submitted.get("job_id")
    result = submitted.get("result")
    if result and Path(result).exists():
        line = last_nonempty_line(submitted.get("stderr")) or "no log"
        return RunState("failed", f"SLURM task {job} ended before the run began: {line}")
    return RunState(
        "pending", f"queued as SLURM job {job} (submitted {submitted.get('submitted')})"
    )


def _running(
    run_dir: Path, record: dict[str, Any], submitted: dict[str, Any] | None, now: float | None
) -> RunState:
    beat = read_heartbeat(run_dir)
    if beat is None and _age(record, now) < GRACE_S:
        return RunState("running", f"starting{_job(record)}")
    alive, why = liveness(beat, now)
    if alive:
        return RunState("running", why + _job(record))
    return RunState(
        "failed", f"{why}{_job(record)}: killed or preempted? {RESUME}" + _log_tail(submitted)
    )


def _log_tail(submitted: dict[str, Any] | None) -> str:
    """``"; log: <last line of the task's stderr>"`` for a submitted run, else ''."""
    line = last_nonempty_line((submitted or {}).get("stderr"))
    return f"; log: {line}" if line else ""


def _age(record: dict[str, Any], now: float | None) -> float:
    return (time.time() if now is None else now) - float(record.get("started_at") or 0)


def _job(record: dict[str, Any]) -> str:
    job = record.get("slurm_job")
    return f", SLURM job {job}" if job else ""


def _finished_detail(run_dir: Path) -> str:
    report = read_json(run_dir / REPORT) or {}
    seconds = (read_json(run_dir / RUN_INFO) or {}).get("seconds")
    text = _metric(report, "robust_auroc", "robust AUROC")
    return text + (f" ({float(seconds):.0f} s)" if isinstance(seconds, int | float) else "")


def _metric(report: dict[str, Any], key: str, label: str) -> str:
    value = report.get(key)
    if value is None:
        return f"{label} –"
    lo, hi = report.get(f"{key}_ci") or (None, None)
    interval = "" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]"
    return f"{label} {value:.3f}{interval}"


def sweep_states(out: str | Path) -> list[tuple[SweepRun, Path, RunState]]:
    """Every planned run of the sweep in ``out`` with its folder and state.

    Raises:
        FileNotFoundError: ``out`` holds no ``sweep.json``.
    """
    runs = planned_runs(read_sweep(out))
    return [(run, run_dir_of(out, run), run_state(run_dir_of(out, run))) for run in runs]


def count_line(states: list[RunState]) -> str:
    """``"6 runs: 2 finished, 1 running, 2 pending, 1 failed"`` (zero counts left out)."""
    counts = Counter(state.status for state in states)
    parts = [f"{counts[s]} {s}" for s in STATES if counts[s]]
    return f"{len(states)} runs: " + ", ".join(parts)


def format_status(out: str | Path, rows: list[tuple[SweepRun, Path, RunState]]) -> str:
    """The text of ``--status``: a count line, then one line per run."""
    width = max((len(run.name) for run, _, _ in rows), default=0)
    lines = [f"sweep {out}: {count_line([state for _, _, state in rows])}"]
    for run, _, state in rows:
        lines.append(f"  {state.status:<8}  {run.name:<{width}}  {state.detail}".rstrip())
    return "\n".join(lines)
