"""``spatialspec sweep --launcher slurm`` against a real one-node SLURM cluster on this machine.

The cluster is ``tools/slurm-local.sh`` (Debian's slurm-wlm + munge): the test starts it when
it can (root, apt reachable or the packages installed) and is skipped, with the reason, when it
cannot. No part of SLURM or submitit is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from spatialspec.sweep.status import RunState, sweep_states

REPO = Path(__file__).resolve().parents[1]
SEG = REPO / "configs" / "synthetic" / "seg.yaml"
SLURM_LOCAL = REPO / "tools" / "slurm-local.sh"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
JOB_NAME = f"spatialspec-test-{os.getpid()}"


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.returncode == 0 and any(
        s.strip().rstrip("*~#") in ("idle", "mix", "alloc") for s in done.stdout.split()
    )


@pytest.fixture(scope="module")
def slurm() -> None:
    """A running local SLURM cluster, started here if need be (else the test is skipped)."""
    if _cluster_up():
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster running, and starting one needs root")
    try:
        done = subprocess.run(
            ["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"{SLURM_LOCAL.name} start did not finish in 300 s")
    if done.returncode != 0 or not _cluster_up():
        reason = (done.stderr.strip() or done.stdout.strip()).splitlines()
        pytest.skip(f"could not start a local SLURM cluster: {reason[-1] if reason else '?'}")


@pytest.fixture
def no_leftover_jobs() -> Iterator[None]:
    """Cancel this test's jobs afterwards, whatever happened (a failed test leaves none)."""
    yield
    subprocess.run(["scancel", f"--name={JOB_NAME}"], capture_output=True)


def _recipe(tmp_path: Path, quick_fit_args: list[str]) -> Path:
    """The sweep as a file: 2 methods × 1 budget × 1 seed, 1 epoch, one task at a time."""
    overrides = dict(zip(quick_fit_args[::2], quick_fit_args[1::2], strict=True))
    recipe = {
        "fit_config": str(SEG),
        "methods": ["binary", "seg"],
        "budgets": ["all"],
        "seeds": [1],
        "out": "sweep",
        "launcher": "slurm",
        "n_resamples": 50,
        "set": {key.removeprefix("--"): value for key, value in overrides.items()},
        "slurm": {
            "cpus": 1,
            "mem_gb": 2,
            "time_min": 10,
            "array_parallelism": 1,
            "job_name": JOB_NAME,
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _states_when(out: Path, name: str, status: str) -> dict[str, RunState] | None:
    """Every run's state, once run ``name`` is in ``status`` (else None)."""
    if not (out / "sweep.json").is_file():
        return None
    states = {run.name: state for run, _, state in sweep_states(out)}
    return states if states[name].status == status else None


def _released(job: str) -> bool:
    """SLURM holds a requeued job back for a while (Reason=BeginTime): start it now. True once
    the job has left the pending state."""
    state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    if state.stdout.strip() in ("PENDING", "REQUEUED", "COMPLETING"):
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        return False
    return True


def _resubmitted(out: Path, old_job: str) -> bool:
    """Whether run binary/seed-1 runs again, under another job than ``old_job``, in a task that
    has recorded itself (so its requeue handler is in place: a signal that came earlier, while
    the task was still starting, would kill it, as it would any process)."""
    run_dir = out / "runs/binary/seed-1"
    submitted = json.loads((run_dir / "submitted.json").read_text())
    try:
        record = json.loads((run_dir / "sweep_run.json").read_text())
    except (OSError, ValueError):
        return False
    new_task = str(record.get("slurm_job", "")).startswith(str(submitted["job_id"]))
    return (submitted["job_id"] != old_job and new_task and record.get("status") == "running"
            and bool(_states_when(out, "binary/seed-1", "running")))  # fmt: skip


def test_slurm_sweep_status_cancel_and_resume(
    slurm: None, no_leftover_jobs: None, tmp_path: Path, quick_fit_args: list[str]
) -> None:
    """Submit the grid, watch --status (one task running, the other queued), scancel the
    running task (--status: failed, interrupted), let the array end (the sweep summarises and
    exits 1), then the same command submits only the cancelled run, whose task is requeued by
    the time-limit signal and resumes, and the grid finishes."""
    recipe = _recipe(tmp_path, quick_fit_args)
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "spatialspec", "sweep", "--config", str(recipe)]
    env = {**os.environ, "SPATIALSPEC_HEARTBEAT_S": "2"}
    start = time.monotonic()
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        # in flight: the first task runs, the second waits for it (array parallelism 1)
        running = _until(
            lambda: _states_when(out, "binary/seed-1", "running"), 120, "binary/seed-1 to run"
        )
        assert running["seg/budget-all/seed-1"].status == "pending"
        assert "queued as SLURM job" in running["seg/budget-all/seed-1"].detail
        status = subprocess.run(
            [*command[:4], "--out", str(out), "--status"],
            text=True,
            capture_output=True,
            check=True,
        ).stdout
        assert "2 runs: 1 running, 1 pending" in status
        assert any(ln.split()[:2] == ["running", "binary/seed-1"] for ln in status.splitlines())

        # cancel the running task: it records the interruption, --status says failed
        job = json.loads((out / "runs/binary/seed-1/submitted.json").read_text())["job_id"]
        subprocess.run(["scancel", job], check=True)
        failed = _until(
            lambda: _states_when(out, "binary/seed-1", "failed"), 60, "the cancel to show"
        )
        detail = failed["binary/seed-1"].detail
        assert "re-run the sweep to resume" in detail
        assert "interrupted by SIGTERM" in detail or "process gone" in detail, detail
        print(f"\n--status of the cancelled run: {detail}")

        log, _ = first.communicate(timeout=300)  # the other task runs to its end
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1, log  # one run did not finish
    assert "submitted 2 run(s) as SLURM job array" in log
    csv = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert dict(zip(csv["method"], csv["status"], strict=True)) == {
        "binary": "failed",
        "seg": "finished",
    }
    first_seconds = time.monotonic() - start

    # the same command again: only the missing run is submitted; its task gets the time-limit
    # signal (USR1) while it runs, is requeued, resumes, and the grid finishes
    second = subprocess.Popen(
        command, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _until(lambda: _resubmitted(out, job), 120, "the resubmitted run to run")
        retry = json.loads((out / "runs/binary/seed-1/submitted.json").read_text())["job_id"]
        subprocess.run(["scancel", "--signal=USR1", retry], check=True)
        requeued = _until(
            lambda: _states_when(out, "binary/seed-1", "pending"), 60, "the requeue to show"
        )
        assert requeued["binary/seed-1"].detail.startswith("requeued at ")
        _until(lambda: _released(retry), 60, "the requeued task to start again", poll=1)
        stdout, stderr = second.communicate(timeout=300)
    finally:
        if second.poll() is None:
            second.kill()
    again = subprocess.CompletedProcess(command, second.returncode, stdout, stderr)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs, 1 already finished, 1 to run (launcher slurm)" in again.stdout
    assert "submitted 1 run(s) as SLURM job" in again.stdout
    csv = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert (csv["status"] == "finished").all() and len(csv) == 2
    assert csv["robust_auroc"].between(0, 1).all() and (csv["n_robust"] == 4).all()
    assert f"| seg | all | {24} | 1 |" in (out / "summary.md").read_text()
    info = json.loads((out / "sweep.json").read_text())
    assert info["status"] == "complete"
    assert [h["runs_run"] for h in info["invocations"]] == [2, 1]
    resubmitted = json.loads((out / "runs/binary/seed-1/submitted.json").read_text())["job_id"]
    assert resubmitted != job
    record = json.loads((out / "runs/binary/seed-1/sweep_run.json").read_text())
    assert record["status"] == "finished" and record["slurm_job"] == resubmitted
    assert record["slurm_restarts"] == 1  # finished by the requeued attempt
    assert record["argv"][-2:] == ["--resume", "auto"]
    assert list((out / "slurm").glob("*_log.err"))  # submitit's logs under the sweep folder
    print(
        f"\nSLURM sweep: first command {first_seconds:.0f} s, "
        f"whole test {time.monotonic() - start:.0f} s"
    )


def test_a_refused_submission_is_a_clear_error(slurm: None, tmp_path: Path) -> None:
    from spatialspec.sweep import SlurmConfig, run_sweep
    from spatialspec.sweep.slurm import SubmissionError

    with pytest.raises(SubmissionError, match=r"sbatch refused the array: .*[Pp]artition"):
        run_sweep(
            SEG,
            "all",
            "binary,seg",
            "1",
            tmp_path,
            launcher="slurm",
            progress=False,
            slurm=SlurmConfig(partition="no-such-partition", job_name=JOB_NAME),
        )
    assert not list(tmp_path.glob("runs/*/*/submitted.json"))  # nothing recorded as queued
