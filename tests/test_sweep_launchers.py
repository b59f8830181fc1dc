"""Launchers without a scheduler: run states from folders (heartbeats), --status, --collect,
the print launcher and its lines, the local launcher's GPU assignment, the fit command line."""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from spatialspec.sweep import SweepRun, add_sweep_parser, fit_argv, run_state, run_sweep
from spatialspec.sweep import local as local_launcher
from spatialspec.sweep.fitargs import check_overrides
from spatialspec.sweep.heartbeat import Heartbeat, read_heartbeat
from spatialspec.sweep.run import make_task
from spatialspec.sweep.slurm import in_flight
from spatialspec.sweep.summary import collect_summary

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
SEG = CONFIGS / "seg.yaml"
HOST = socket.gethostname()


def _write(path: Path, payload: dict[str, Any] | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _running(run_dir: Path, pid: int, host: str = HOST, age: float = 0.0, **extra: Any) -> None:
    now = time.time()
    _write(
        run_dir / "sweep_run.json",
        {"status": "running", "pid": pid, "host": host, "started_at": now - age - 5, **extra},
    )
    _write(
        run_dir / "heartbeat.json", {"time": now - age, "pid": pid, "host": host, "interval_s": 30}
    )


def _finished(run_dir: Path, robust: float) -> None:
    _write(
        run_dir / "report.json",
        {
            "robust_auroc": robust,
            "robust_auroc_ci": [0.5, 0.9],
            "auroc": 0.9,
            "auroc_ci": [0.8, 1.0],
            "n_robust": 4,
        },
    )
    _write(run_dir / "run.json", {"mask_budget": {"n_masks": 24}})
    _write(run_dir / "sweep_run.json", {"status": "finished", "seconds": 12.0})


# ---------------------------------------------------------------------------------- run states


def test_states_from_run_folders(tmp_path: Path) -> None:
    cases = {}
    cases["finished"] = tmp_path / "a"
    _finished(cases["finished"], 0.7)
    cases["alive"] = tmp_path / "b"
    _running(cases["alive"], os.getpid())
    cases["dead_here"] = tmp_path / "c"
    _running(cases["dead_here"], _dead_pid())
    cases["silent_elsewhere"] = tmp_path / "d"
    _running(cases["silent_elsewhere"], 1, host="node7", age=200, slurm_job="12_3")
    cases["fresh_elsewhere"] = tmp_path / "e"
    _running(cases["fresh_elsewhere"], 1, host="node7", age=20)
    cases["error"] = tmp_path / "f"
    _write(cases["error"] / "error.txt", "Traceback ...\n  ...\nValueError: bad lr\n\n")
    cases["interrupted"] = tmp_path / "g"
    _write(
        cases["interrupted"] / "sweep_run.json",
        {"status": "interrupted", "reason": "SIGTERM", "ended": "T", "slurm_job": "12_1"},
    )
    cases["requeued"] = tmp_path / "h"
    _write(
        cases["requeued"] / "sweep_run.json",
        {"status": "requeued", "requeued": "T", "reason": "time limit"},
    )
    cases["new"] = tmp_path / "i"
    got = {name: run_state(path) for name, path in cases.items()}
    assert {name: state.status for name, state in got.items()} == {
        "finished": "finished",
        "alive": "running",
        "dead_here": "failed",
        "silent_elsewhere": "failed",
        "fresh_elsewhere": "running",
        "error": "failed",
        "interrupted": "failed",
        "requeued": "pending",
        "new": "pending",
    }
    assert got["finished"].detail == "robust AUROC 0.700 [0.500, 0.900] (12 s)"
    assert got["alive"].detail.startswith(f"heartbeat 0 s ago, pid {os.getpid()} on {HOST}")
    assert "process gone" in got["dead_here"].detail
    assert "re-run the sweep to resume" in got["dead_here"].detail
    silent = got["silent_elsewhere"].detail
    assert silent.startswith("no heartbeat for 3 min (since ") and "SLURM job 12_3" in silent
    assert got["error"].detail == "ValueError: bad lr"
    assert got["interrupted"].detail.startswith("interrupted by SIGTERM at T, SLURM job 12_1")
    assert "requeued at T (time limit)" in got["requeued"].detail


def test_queued_submissions_and_tasks_that_died_before_the_run(tmp_path: Path) -> None:
    submitted = {
        "job_id": "12_3",
        "submitted": "T",
        "submitted_at": time.time(),
        "stderr": str(tmp_path / "12_3_0_log.err"),
        "result": str(tmp_path / "12_3_0_result.pkl"),
    }
    run_dir = tmp_path / "run"
    _write(run_dir / "sweep_run.json", {"status": "interrupted", "started_at": 1.0})  # older
    _write(run_dir / "submitted.json", submitted)
    assert run_state(run_dir).status == "pending"
    assert "queued as SLURM job 12_3" in run_state(run_dir).detail
    _write(tmp_path / "12_3_0_log.err", "ImportError: no module named spatialspec\n")
    _write(tmp_path / "12_3_0_result.pkl", "x")  # submitit: the task ended
    state = run_state(run_dir)
    assert state.status == "failed"
    assert state.detail.endswith(
        "ended before the run began: ImportError: no module named spatialspec"
    )
    _running(run_dir, os.getpid(), started_at=time.time())  # started after its submission
    assert run_state(run_dir).status == "running"


def test_heartbeat_beats_until_the_block_ends(tmp_path: Path) -> None:
    with Heartbeat(tmp_path, interval=0.05):
        first = read_heartbeat(tmp_path)["time"]
        time.sleep(0.3)
        assert read_heartbeat(tmp_path)["time"] > first
    last = read_heartbeat(tmp_path)["time"]
    time.sleep(0.15)
    assert read_heartbeat(tmp_path)["time"] == last  # the thread stopped
    assert read_heartbeat(tmp_path)["pid"] == os.getpid()


def test_in_flight_reads_the_queue() -> None:
    states = {"12_0": "RUNNING", "12_1": "COMPLETED", "12_2": "PENDING", "13": "CANCELLED"}
    assert in_flight(["12_0", "12_1", "12_2", "13", "99"], states) == {"12_0", "12_2"}


# ------------------------------------------------------------------------ the fit command line


def test_loggers_reach_every_fit_with_name_and_tags(tmp_path: Path) -> None:
    run = SweepRun("seg", "0.1", 2)
    argv = fit_argv(run, SEG, "r", [], ["tensorboard", "mlflow"], "sqlite:////x/mlflow.db")
    tail = argv[argv.index("--loggers") :]
    assert tail == [
        "--loggers",
        "tensorboard,mlflow",
        "--mlflow_tracking_uri",
        "sqlite:////x/mlflow.db",
        "--run_name",
        "seg/budget-0.1/seed-2",
        "--tags",
        '{"method": "seg", "budget": "0.1", "seed": "2"}',
        "--resume",
        "auto",
    ]
    assert "--loggers" not in fit_argv(run, SEG, "r")
    settings = {
        "config": str(SEG),
        "overrides": [],
        "n_resamples": 10,
        "loggers": ["mlflow"],
        "mlflow_tracking_uri": None,
    }
    task = make_task(run, tmp_path / "out", settings)
    uri = task["argv"][task["argv"].index("--mlflow_tracking_uri") + 1]
    assert uri == f"sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db"  # one store per sweep
    settings["loggers"] = ["tensorboard"]
    assert "--mlflow_tracking_uri" not in make_task(run, tmp_path, settings)["argv"]


@pytest.mark.parametrize("key", ["run_name", "tags", "resume", "loggers", "mlflow_tracking_uri"])
def test_keys_the_sweep_sets_cannot_be_overridden(key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'.*cannot be overridden"):
        check_overrides([f"--{key}", "x"])


# -------------------------------------------------------------------------------- local + GPUs


def test_gpus_round_robin_over_the_visible_devices() -> None:
    assert local_launcher.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,2"}) == ["0", "2"]
    assert local_launcher.visible_gpus({"CUDA_VISIBLE_DEVICES": "3,-1,4"}) == ["3"]
    assert local_launcher.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert local_launcher.visible_gpus({}, count=3) == ["0", "1", "2"]
    assert local_launcher.visible_gpus({}, count=0) == []
    assignment = local_launcher.assign_gpus(5, ["0", "2"])
    assert assignment == ["0", "2", "0", "2", "0"]
    assert local_launcher.assign_gpus(2, []) == [None, None]
    line = local_launcher.gpu_line(assignment)
    assert line.startswith("sweep: 5 jobs on 2 GPU(s), round-robin (some share a GPU): ")
    assert "job 1 -> GPU 0, job 2 -> GPU 2, job 3 -> GPU 0" in line
    assert local_launcher.gpu_line([None, None]) is None


def test_each_worker_takes_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    devices: queue.Queue = queue.Queue()
    for device in local_launcher.assign_gpus(3, ["0", "1"]):
        devices.put(device)
    seen = []
    for _ in range(3):  # what three workers' initializers do, one after the other
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        assert local_launcher._pin_gpu(devices) == os.environ["CUDA_VISIBLE_DEVICES"]
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "0"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_launcher._pin_gpu(None) is None and "CUDA_VISIBLE_DEVICES" not in os.environ


# ------------------------------------------------------------ print launcher, status, collect


def _cli(*argv: str) -> int:
    from spatialspec.sweep import run_sweep_cli

    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    return run_sweep_cli(parser.parse_args(["sweep", *argv]))


@pytest.fixture
def printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """A binary + seg (budgets 0, all) × seeds 1, 2 sweep planned with the print launcher."""
    out = tmp_path / "sweep"
    assert (
        _cli(
            "--fit-config",
            str(SEG),
            "--methods",
            "binary,seg",
            "--budgets",
            "0,all",
            "--seeds",
            "1,2",
            "--out",
            str(out),
            "--launcher",
            "print",
        )
        == 0
    )
    captured = capsys.readouterr()
    return {"out": out, "lines": captured.out.splitlines(), "err": captured.err}


def test_print_launcher_writes_one_line_per_run(printed: dict[str, Any]) -> None:
    out, lines = printed["out"], printed["lines"]
    assert len(lines) == 6  # stdout: the commands only
    cd, _, command = lines[0].partition(" && ")
    assert cd == f"cd {shlex.quote(os.getcwd())}"
    assert shlex.split(command) == [
        sys.executable,
        "-m",
        "spatialspec",
        "sweep",
        "--out",
        str(out.absolute()),
        "--run",
        "binary/seed-1",
    ]
    names = [shlex.split(line)[-1] for line in lines]
    assert names[:3] == ["binary/seed-1", "seg/budget-0/seed-1", "seg/budget-all/seed-1"]
    assert "6 to run (launcher print)" in printed["err"]  # the sweep talks on stderr
    info = json.loads((out / "sweep.json").read_text())
    assert info["status"] == "launched" and len(info["plan"]) == 6
    assert info["cwd"] == os.getcwd()
    assert not (out / "summary.csv").exists()  # nothing ran: nothing summarised


def test_print_launcher_skips_finished_and_live_runs(
    printed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = printed["out"]
    _finished(out / "runs" / "binary" / "seed-1", 0.7)
    _running(out / "runs" / "seg" / "budget-0" / "seed-1", os.getpid())  # in flight elsewhere
    _running(out / "runs" / "seg" / "budget-all" / "seed-1", _dead_pid())  # died: redo
    run_sweep(SEG, "0,all", "binary,seg", "1,2", out, launcher="print")
    captured = capsys.readouterr()
    names = [shlex.split(line)[-1] for line in captured.out.splitlines()]
    assert names == [
        "seg/budget-all/seed-1",
        "binary/seed-2",
        "seg/budget-0/seed-2",
        "seg/budget-all/seed-2",
    ]
    assert "in flight elsewhere are left alone: seg/budget-0/seed-1" in captured.err


def test_status_and_collect_read_the_folders(
    printed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = printed["out"]
    _finished(out / "runs" / "binary" / "seed-1", 0.2)
    _finished(out / "runs" / "binary" / "seed-2", 0.4)
    _finished(out / "runs" / "seg" / "budget-all" / "seed-1", 0.8)
    _running(out / "runs" / "seg" / "budget-0" / "seed-1", os.getpid())
    _write(out / "runs" / "seg" / "budget-0" / "seed-2" / "error.txt", "RuntimeError: NaN loss")
    assert _cli("--out", str(out), "--status") == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"sweep {out}: 6 runs: 3 finished, 1 running, 1 pending, 1 failed"
    rows = {line.split()[1]: line.split()[0] for line in text[1:]}
    assert rows == {
        "binary/seed-1": "finished",
        "seg/budget-0/seed-1": "running",
        "seg/budget-all/seed-1": "finished",
        "binary/seed-2": "finished",
        "seg/budget-0/seed-2": "failed",
        "seg/budget-all/seed-2": "pending",
    }
    assert any(line.endswith("RuntimeError: NaN loss") for line in text)

    assert _cli("--out", str(out), "--collect") == 0
    assert "3 finished, 1 running, 1 pending, 1 failed" in capsys.readouterr().out
    csv = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert csv["status"].tolist() == [
        "finished",
        "running",
        "finished",
        "finished",
        "failed",
        "pending",
    ]
    md = (out / "summary.md").read_text()
    assert "| binary | - | 0 | 2 | 0.300 ± 0.141 |" in md
    assert "| seg | all | 24 | 1 | 0.800 |" in md
    assert "**running runs** (1; still in flight)" in md
    assert "**failed runs** (1" in md and "RuntimeError: NaN loss" in md
    assert (out / "robust_auroc_vs_masks.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "sweep.json").read_text())["status"] == "incomplete"
    frame = collect_summary(out, [SweepRun("binary", "-", 1)])
    assert frame["robust_auroc"].tolist() == [0.2]


def test_status_of_a_folder_without_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("--out", str(tmp_path), "--status") == 2
    assert "no sweep.json in" in capsys.readouterr().err


def test_a_printed_line_does_its_run(
    printed: dict[str, Any],
    quick_fit_args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command of a line (here in this process) fits and evaluates one run by name."""
    import torch

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # its threads: as in a 1-CPU task
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the run sets them: restore after
        monkeypatch.setenv(var, os.environ.get(var, "1"))

    from spatialspec.cli import main

    out = printed["out"] / ".." / "real"
    pairs = [f"{k[2:]}={v}" for k, v in zip(*[iter(quick_fit_args)] * 2, strict=True)]
    assert (
        _cli(
            "--fit-config",
            str(SEG),
            "--methods",
            "seg",
            "--budgets",
            "all",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--launcher",
            "print",
            "--n-resamples",
            "20",
            "--set",
            *pairs,
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    argv = shlex.split(line.partition(" && ")[2])[3:]  # after `python -m spatialspec`
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    run_dir = out / "runs" / "seg" / "budget-all" / "seed-1"
    record = json.loads((run_dir / "sweep_run.json").read_text())
    assert record["status"] == "finished" and record["argv"][-2:] == ["--resume", "auto"]
    assert run_state(run_dir).status == "finished"
    assert main(argv) == 0  # idempotent: already finished, nothing redone
    assert "already finished" in capsys.readouterr().out


def test_loggers_reach_the_real_fit(tmp_path: Path, quick_fit_args: list[str]) -> None:
    """``--loggers``, ``--run_name`` and ``--tags`` as the sweep writes them parse in fit."""
    frame = run_sweep(
        SEG,
        "all",
        "seg",
        "1",
        tmp_path,
        overrides=quick_fit_args,
        progress=False,
        n_resamples=20,
        loggers=["tensorboard"],
    )
    assert frame["status"].tolist() == ["finished"], frame["error"].tolist()
    run = json.loads((tmp_path / "runs/seg/budget-all/seed-1/run.json").read_text())
    assert run["loggers"] == ["csv", "tensorboard"]
    assert run["config"]["run_name"] == "seg/budget-all/seed-1"
    assert run["config"]["tags"] == {"method": "seg", "budget": "all", "seed": "1"}


def test_unknown_launcher_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"unknown launcher 'pbs'; valid names: local, print, slurm"):
        run_sweep(SEG, "all", "seg", "1", tmp_path / "o", launcher="pbs")
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_slurm_launcher_needs_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    with pytest.raises(ValueError, match="needs SLURM's sbatch and srun on PATH"):
        run_sweep(SEG, "all", "seg", "1", tmp_path / "o", launcher="slurm")


def test_slurm_resources_become_sbatch_options() -> None:
    from spatialspec.sweep import SlurmConfig
    from spatialspec.sweep.slurm import executor_parameters

    resources = SlurmConfig(
        partition="gpu",
        gpus=2,
        cpus=8,
        mem_gb=1.5,
        time_min=90,
        account="lab",
        qos="high",
        array_parallelism=3,
        sbatch={"constraint": "a100"},
        setup=("module load cuda",),
    )
    assert executor_parameters(resources) == {
        "job_name": "spatialspec-sweep",
        "time": 90,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 8,
        "partition": "gpu",
        "account": "lab",
        "qos": "high",
        "array_parallelism": 3,
        "gpus_per_node": 2,
        "mem": "1536M",
        "additional_parameters": {"signal": "USR1@90", "constraint": "a100"},
        "setup": ["module load cuda"],
    }
    plain = executor_parameters(SlurmConfig(mem_gb=2, sbatch={"signal": "USR1@300"}))
    assert plain["mem"] == "2G" and "partition" not in plain and "gpus_per_node" not in plain
    assert plain["additional_parameters"] == {"signal": "USR1@300"}  # the user's wins


def test_a_task_gone_from_the_queue_unstarted_is_failed_not_queued(tmp_path: Path) -> None:
    from spatialspec.sweep import LaunchContext
    from spatialspec.sweep.slurm import _mark_lost

    queued, done = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    log = tmp_path / "7_0_0_log.err"
    _write(log, "slurmstepd: error: *** JOB 7 ON vm CANCELLED AT 2026-01-01T00:00:00 ***\n")
    _write(
        queued / "submitted.json",
        {"job_id": "7_0", "submitted_at": time.time(), "stderr": str(log)},
    )
    _finished(done, 0.5)
    _mark_lost(LaunchContext(tmp_path, (("a", queued), ("b", done))))
    state = run_state(queued)
    assert state.status == "failed"
    assert "left the queue before the run began" in state.detail
    assert state.detail.endswith(
        "log: slurmstepd: error: *** JOB 7 ON vm CANCELLED AT 2026-01-01T00:00:00 ***"
    )
    assert run_state(done).status == "finished"
