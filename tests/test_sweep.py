"""Tests for spatialspec.sweep: the plan, a tiny real sweep, resume, failures, parallel jobs."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from spatialspec import sweep
from spatialspec.sweep import (
    NO_BUDGET,
    SUMMARY_COLUMNS,
    SweepRun,
    add_sweep_parser,
    aggregate,
    budget_label,
    fit_argv,
    local,
    method_config,
    plan,
    run_sweep,
    run_sweep_cli,
    set_overrides,
)
from spatialspec.sweep import run as sweep_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
SEG = CONFIGS / "seg.yaml"
#: Train positives of the tiny benchmark (conftest.TINY: 22 + 2), all with masks.
TINY_POSITIVES = 24
#: Bootstrap resamples of the test reports (few: the tiny test split has 4 robust images).
RESAMPLES = 50

pytestmark = pytest.mark.filterwarnings("ignore:Experiment logs directory")


def _sweep(out: Path, args: list[str], **kwargs: Any) -> pd.DataFrame:
    """A quick sweep on the tiny benchmark (binary + seg by default)."""
    options = {"budgets": "0,all", "methods": "binary,seg", "seeds": "1", "progress": False,
               "n_resamples": RESAMPLES, "overrides": args, **kwargs}  # fmt: skip
    return run_sweep(SEG, out=out, **options)


def _counting_fit(monkeypatch: pytest.MonkeyPatch, after: Callable[[int], None] | None = None):
    """Replace the sweep's fit by the real one plus a call log; ``after(n)`` runs after call n."""
    calls: list[list[str]] = []
    real = sweep_run._fit

    def fit(argv: list[str]) -> dict[str, Any]:
        calls.append(list(argv))
        info = real(argv)
        if after is not None:
            after(len(calls))
        return info

    monkeypatch.setattr(sweep_run, "_fit", fit)
    return calls


# ------------------------------------------------------------------------------------ the plan


def test_plan_runs_binary_once_per_seed_and_dense_per_budget_and_seed() -> None:
    runs = plan("binary,seg", "0,10,all", [1, 2])
    assert len(runs) == 2 * (1 + 3)
    assert [r.name for r in runs[:4]] == [
        "binary/seed-1", "seg/budget-0/seed-1", "seg/budget-10/seed-1", "seg/budget-all/seed-1",
    ]  # fmt: skip
    assert runs[4] == SweepRun("binary", NO_BUDGET, 2)
    assert {r.budget for r in runs if r.method == "binary"} == {NO_BUDGET}
    assert len({r.name for r in runs}) == len(runs)


def test_plan_canonical_budgets_and_duplicates() -> None:
    assert [budget_label(b) for b in ("10%", 0.1, "25", 25.0, "ALL", None, "1.0")] == [
        "0.1", "0.1", "25", "25", "all", "all", "1.0",
    ]  # fmt: skip
    runs = plan(["seg", "seg"], ["10%", "0.1", 5], "3,3")
    assert [r.name for r in runs] == ["seg/budget-0.1/seed-3", "seg/budget-5/seed-3"]


def test_plan_unknown_method_lists_valid_names() -> None:
    with pytest.raises(KeyError, match=r"unknown method 'segg'; valid names: .*binary.*seg"):
        plan("binary,segg", "all", "1")


@pytest.mark.parametrize(
    ("budgets", "seeds", "message"),
    [("lots", "1", "mask budget must be"), ("-3", "1", ">= 0"), ("1.5%,all", "x", "integers"),
     ("all", "", "at least one of seeds"), ("", "1", "at least one of budgets")],
)  # fmt: skip
def test_plan_bad_budget_or_seed(budgets: str, seeds: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan("seg", budgets, seeds)


def test_method_config_prefers_the_sibling_file(tmp_path: Path) -> None:
    assert method_config(SEG, "binary") == CONFIGS / "binary.yaml"
    assert method_config(SEG, "seg") == SEG
    own = tmp_path / "mine.yaml"
    own.write_text("method: seg\n")
    assert method_config(own, "binary") == own  # no binary.yaml beside it


def test_fit_argv_passes_budget_and_seed_last() -> None:
    dense = fit_argv(SweepRun("seg", "0.1", 2), SEG, "runs/x", ["--trainer.max_epochs", "3"])
    assert dense[:2] == ["--config", str(SEG)]
    assert dense.index("--trainer.max_epochs") < dense.index("--method")
    tail = dense[dense.index("--method") :]
    assert tail == [
        "--method", "seg", "--seed", "2", "--out_dir", "runs/x",
        "--data.mask_budget", "0.1", "--data.budget_seed", "2", "--resume", "auto",
    ]  # fmt: skip
    binary = fit_argv(SweepRun("binary", NO_BUDGET, 2), SEG, "runs/b")
    assert binary[1] == str(CONFIGS / "binary.yaml")
    assert "--data.mask_budget" not in binary


def test_overrides_of_reserved_keys_and_bad_pairs_are_refused(tmp_path: Path) -> None:
    assert set_overrides(["trainer.max_epochs=3", "--model.lr=0.1=x"]) == [
        "--trainer.max_epochs", "3", "--model.lr", "0.1=x",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        set_overrides(["trainer.max_epochs"])
    for bad in (["--seed", "4"], ["--data.mask_budget=3"], ["--out_dir", "x"]):
        with pytest.raises(ValueError, match="cannot be overridden"):
            run_sweep(SEG, "all", "seg", "1", tmp_path / "o", overrides=bad, progress=False)
    with pytest.raises(ValueError, match="jobs"):
        run_sweep(SEG, "all", "seg", "1", tmp_path / "o", jobs=0, progress=False)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        run_sweep(tmp_path / "none.yaml", "all", "seg", "1", tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------- summaries (no fits)


def _frame(rows: list[tuple[str, str, int, int, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [{"method": m, "budget": b, "n_masks": n, "seed": s, "robust_auroc": v, "auroc": 0.9,
          "status": "finished", "run_dir": f"runs/{m}/{b}/{s}", "error": ""}
         for m, b, n, s, v in rows]
    )  # fmt: skip
    return frame.reindex(columns=list(SUMMARY_COLUMNS))


def test_aggregate_t_interval_and_chart(tmp_path: Path) -> None:
    frame = _frame([("binary", "-", 0, 1, 0.2), ("binary", "-", 0, 2, 0.3),
                    ("seg", "all", 24, 1, 0.6), ("seg", "all", 24, 2, 0.8),
                    ("seg", "0", 0, 1, 0.4), ("seg", "0", 0, 2, 0.5)])  # fmt: skip
    frame.loc[6] = frame.loc[5].copy()
    frame.loc[6, ["seed", "status", "robust_auroc"]] = [3, "failed", np.nan]
    table = aggregate(frame)
    assert list(zip(table["method"], table["budget"], strict=True)) == [
        ("binary", "-"), ("seg", "0"), ("seg", "all"),
    ]  # fmt: skip
    seg = table.iloc[2]
    assert seg["n_seeds"] == 2
    assert seg["robust_auroc_mean"] == pytest.approx(0.7)
    assert seg["robust_auroc_sd"] == pytest.approx(0.1 * np.sqrt(2))
    half = 12.7062047 * 0.1 * np.sqrt(2) / np.sqrt(2)  # t(0.975, 1 df) * sd / sqrt(n)
    assert (seg["robust_auroc_lo"], seg["robust_auroc_hi"]) == (0.0, 1.0)  # 0.7 -+ half, clipped
    assert half > 0.7
    _, _, lo, hi = sweep.t_interval(np.array([0.70, 0.71, 0.72]))
    half3 = 4.30265273 * 0.01 / np.sqrt(3)  # t(0.975, 2 df) * sd / sqrt(n)
    assert (lo, hi) == (pytest.approx(0.71 - half3), pytest.approx(0.71 + half3))
    chart = sweep.plot_sweep(frame, tmp_path / "c.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = {"config": "c.yaml", "settings": {"overrides": []}, "seeds": [1, 2, 3]}
    md = sweep.summary_markdown(frame, info)
    assert "| seg | all | 24 | 2 | 0.700 ± 0.141 | 0.700 [" in md
    assert "**failed runs** (1" in md


def test_aggregate_is_seed_aware_against_binary_and_seg(done: dict[str, Any]) -> None:
    """The summary's intervals are compare's two-level ones: equal numbers, same pairs."""
    from spatialspec.evaluation.compare import compare_reports

    frame = pd.read_csv(done["out"] / "summary.csv", keep_default_na=False, na_values=[""])
    frame["budget"] = frame["budget"].astype(str)
    table = aggregate(frame, n_resamples=200).set_index(["method", "budget"])
    runs = done["out"] / "runs"
    groups = [sorted(runs.glob("binary/seed-*/report.json")),
              sorted(runs.glob("seg/budget-0/seed-*/report.json")),
              sorted(runs.glob("seg/budget-all/seed-*/report.json"))]  # fmt: skip
    ref = compare_reports(groups, names=["b", "s0", "sall"], n_resamples=200,
                          pairs=[(1, 0), (2, 0)])  # fmt: skip
    seg_all = table.loc[("seg", "all")]
    assert seg_all["ci_method"].startswith("two-level")
    assert seg_all["robust_auroc_mean"] == pytest.approx(ref["reports"][2]["robust_auroc"])
    assert [seg_all["robust_auroc_lo"], seg_all["robust_auroc_hi"]] == pytest.approx(
        ref["reports"][2]["robust_auroc_ci"]
    )
    pair = ref["pairs"][1]["auroc"]
    assert seg_all["vs_binary_auroc_diff"] == pytest.approx(pair["diff"])
    assert [seg_all["vs_binary_auroc_lo"], seg_all["vs_binary_auroc_hi"]] == pytest.approx(
        pair["ci"]
    )
    assert seg_all["vs_binary_auroc_seed_pairs"] == 2  # seeds 1 and 2 matched
    assert np.isnan(table.loc[("binary", "-")].get("vs_binary_auroc_diff", np.nan))


def test_plan_and_fit_argv_with_a_specificity_axis() -> None:
    runs = plan("binary,seg", "all", "1", specificities="mask,dilate:2,box")
    assert [r.name for r in runs] == [
        "binary/seed-1", "seg/budget-all/spec-mask/seed-1", "seg/budget-all/spec-dilate-2/seed-1",
        "seg/budget-all/spec-box/seed-1",
    ]  # fmt: skip
    argv = fit_argv(runs[2], SEG, "/tmp/x")
    assert argv[argv.index("--data.specificity") + 1] == "dilate:2"
    assert "--data.specificity" not in fit_argv(runs[0], SEG, "/tmp/x")
    with pytest.raises(ValueError, match="dilate:x"):
        plan("seg", "all", "1", specificities="dilate:x")
    with pytest.raises(ValueError, match="--specificities"):
        sweep.fitargs.check_overrides(["--data.specificity", "box"])


def test_sweep_over_specificities_writes_its_chart(
    tmp_path: Path, quick_fit_args: list[str]
) -> None:
    frame = _sweep(tmp_path, quick_fit_args, methods="seg", budgets="all",
                   specificities="mask,dilate:2")  # fmt: skip
    assert frame["specificity"].tolist() == ["mask", "dilate:2"]
    assert (frame["status"] == "finished").all()
    run = json.loads((tmp_path / "runs/seg/budget-all/spec-dilate-2/seed-1/run.json").read_text())
    assert run["config"]["data"]["specificity"] == "dilate:2"
    md = (tmp_path / "summary.md").read_text()
    assert "| seg | all | dilate:2 |" in md and "robust_auroc_vs_specificity.png" in md
    assert (tmp_path / "robust_auroc_vs_specificity.png").read_bytes()[:4] == b"\x89PNG"


def test_a_dead_worker_is_a_failed_run(tmp_path: Path) -> None:
    future: Future = Future()
    future.set_exception(RuntimeError("worker died"))
    task = {"name": "seg/seed-1", "method": "seg", "budget": "all", "seed": 1,
            "run_dir": str(tmp_path)}  # fmt: skip
    result = local._outcome(future, task)
    assert result["status"] == "failed"
    assert result["error"] == "RuntimeError: worker died"
    assert "worker died" in (tmp_path / "error.txt").read_text()


# ------------------------------------------------------------------------- a tiny real sweep


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory, quick_fit_args: list[str]) -> dict[str, Any]:
    """binary + seg at budgets 0 and all, seeds 1 and 2 (6 runs, in this process)."""
    out = tmp_path_factory.mktemp("sweep")
    frame = _sweep(out, quick_fit_args, seeds="1,2", progress=True)
    return {"out": out, "frame": frame, "args": quick_fit_args}


def test_sweep_writes_every_run_once(done: dict[str, Any]) -> None:
    out, frame = done["out"], done["frame"]
    csv = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    assert list(csv.columns) == list(SUMMARY_COLUMNS)
    assert len(csv) == 6
    assert csv["run_dir"].is_unique
    assert (csv["status"] == "finished").all()
    assert sorted(Path(p).relative_to(out / "runs").as_posix() for p in csv["run_dir"]) == [
        "binary/seed-1", "binary/seed-2", "seg/budget-0/seed-1", "seg/budget-0/seed-2",
        "seg/budget-all/seed-1", "seg/budget-all/seed-2",
    ]  # fmt: skip
    assert csv["robust_auroc"].between(0, 1).all()
    assert (csv["robust_auroc_lo"] <= csv["robust_auroc_hi"]).all()
    assert (csv["n_robust"] == 4).all()
    assert (csv["seconds"] > 0).all()
    cells = ["method", "budget", "seed"]
    assert csv[cells].values.tolist() == frame[cells].values.tolist()


def test_sweep_records_the_masks_actually_used(done: dict[str, Any]) -> None:
    csv = pd.read_csv(done["out"] / "summary.csv", keep_default_na=False)
    masks = {(r.method, r.budget): r.n_masks for r in csv.itertuples()}
    assert masks == {("binary", "-"): 0, ("seg", "0"): 0, ("seg", "all"): TINY_POSITIVES}
    for row in csv[csv["method"] == "seg"].itertuples():
        run = json.loads((Path(row.run_dir) / "run.json").read_text())
        assert run["mask_budget"]["n_masks"] == row.n_masks
        assert run["config"]["data"]["budget_seed"] == row.seed
        assert run["seed"] == row.seed
    binary = json.loads((done["out"] / "runs/binary/seed-1/run.json").read_text())
    assert binary["config"]["data"]["mask_budget"] is None


def test_sweep_run_folders_and_sweep_json(done: dict[str, Any], tiny_synthetic: Path) -> None:
    out = done["out"]
    run = out / "runs" / "seg" / "budget-all" / "seed-2"
    for name in ("config.yaml", "run.json", "report.json", "report.predictions.csv",
                 "sweep_run.json", "checkpoints/best.ckpt"):  # fmt: skip
        assert (run / name).is_file(), name
    assert not (run / "error.txt").exists()
    record = json.loads((run / "sweep_run.json").read_text())
    assert record["status"] == "finished" and record["pid"] == os.getpid()
    assert record["argv"][-2:] == ["--resume", "auto"]
    report = json.loads((run / "report.json").read_text())
    assert report["metadata"]["method"] == "seg"
    assert report["bootstrap"]["n_resamples"] == RESAMPLES
    info = json.loads((out / "sweep.json").read_text())
    assert info["status"] == "complete"
    assert info["settings"]["config"] == str(SEG.resolve())
    assert info["settings"]["overrides"] == done["args"]
    assert info["method_configs"] == {"binary": str(CONFIGS / "binary.yaml"), "seg": str(SEG)}
    assert [p["name"] for p in info["plan"]][:3] == [
        "binary/seed-1", "seg/budget-0/seed-1", "seg/budget-all/seed-1",
    ]  # fmt: skip
    assert info["git_commit"] is None or info["git_commit"]
    assert info["versions"]["torch"]


def test_sweep_markdown_and_chart(done: dict[str, Any]) -> None:
    out = done["out"]
    md = (out / "summary.md").read_text()
    assert "| method | budget | masks | seeds |" in md
    assert f"| seg | all | {TINY_POSITIVES} | 2 |" in md
    assert "| binary | - | 0 | 2 |" in md
    assert "two-level bootstrap" in md and "vs binary" in md
    assert "fell back to a t-interval" not in md
    assert "robust_auroc_vs_masks.png" in md
    assert (out / "robust_auroc_vs_masks.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_after_completion_trains_nothing(
    done: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = done["out"]
    reports = {p: p.stat().st_mtime_ns for p in out.glob("runs/**/report.json")}
    summary = (out / "summary.csv").stat().st_mtime_ns

    def no_fit(argv: list[str]) -> dict[str, Any]:
        raise AssertionError("a finished run was refitted")

    monkeypatch.setattr(sweep_run, "_fit", no_fit)
    frame = _sweep(out, done["args"], seeds="1,2")
    assert (frame["status"] == "finished").all()
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/**/report.json")} == reports
    assert (out / "summary.csv").stat().st_mtime_ns != summary  # rewritten
    history = json.loads((out / "sweep.json").read_text())["invocations"]
    assert [h["runs_run"] for h in history] == [len(frame), 0]  # the no-op keeps the first
    assert "over 2 invocations (the last trained 0 run(s)" in (out / "summary.md").read_text()
    # other settings are refused instead of mixing results
    with pytest.raises(ValueError, match="holds a sweep with other settings"):
        _sweep(out, [*done["args"], "--model.lr", "0.1"], seeds="1,2")


# -------------------------------------------------------------------------- resume, failures


def test_resume_after_an_interrupted_run(
    tmp_path: Path, quick_fit_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the 2nd fit (before its report): the rerun redoes only that run."""

    def interrupt(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    _counting_fit(monkeypatch, after=interrupt)
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, quick_fit_args, budgets="all")
    first = tmp_path / "runs" / "binary" / "seed-1" / "report.json"
    half = tmp_path / "runs" / "seg" / "budget-all" / "seed-1"
    assert first.is_file()
    assert (half / "checkpoints" / "best.ckpt").is_file() and not (half / "report.json").exists()
    record = json.loads((half / "sweep_run.json").read_text())
    assert (record["status"], record["reason"]) == ("interrupted", "KeyboardInterrupt")
    assert not (half / "error.txt").exists()  # an interruption is no failure
    stamp = first.stat().st_mtime_ns

    calls = _counting_fit(monkeypatch)
    frame = _sweep(tmp_path, quick_fit_args, budgets="all")
    assert len(calls) == 1  # only the unfinished run, resumed
    assert "seg/budget-all/seed-1" in calls[0][calls[0].index("--out_dir") + 1]
    assert calls[0][-2:] == ["--resume", "auto"]
    assert first.stat().st_mtime_ns == stamp
    assert (half / "report.json").is_file()
    csv = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False)
    assert sorted(csv["run_dir"]) == sorted(frame["run_dir"]) and csv["run_dir"].is_unique
    assert len(csv) == 2 and (csv["status"] == "finished").all()


def test_half_written_run_folder_is_redone(tmp_path: Path, quick_fit_args: list[str]) -> None:
    """Leftovers of a process killed mid-run (a 'running' record and heartbeat of a dead pid,
    a stale error.txt) read as failed and do not block the rerun."""
    import socket
    import subprocess
    import sys

    from spatialspec.sweep.status import run_state

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    half = tmp_path / "runs" / "seg" / "budget-0" / "seed-1"
    (half / "checkpoints").mkdir(parents=True)
    stamp = time.time() - 60
    where = {"pid": dead.pid, "host": socket.gethostname()}
    (half / "sweep_run.json").write_text(
        json.dumps({"status": "running", "started_at": stamp, **where})
    )
    (half / "heartbeat.json").write_text(json.dumps({"time": stamp, "interval_s": 30, **where}))
    (half / "error.txt").write_text("stale")
    state = run_state(half)
    assert state.status == "failed" and "process gone" in state.detail
    frame = _sweep(tmp_path, quick_fit_args, methods="seg", budgets="0")
    assert frame["status"].tolist() == ["finished"]
    assert (half / "report.json").is_file() and not (half / "error.txt").exists()


def test_a_failing_run_is_recorded_and_the_others_finish(
    tmp_path: Path, quick_fit_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``model.pooling`` exists for seg only: binary fails, seg finishes, exit code 1."""
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    pairs = [
        f"{k.removeprefix('--')}={v}" for k, v in zip(*[iter(quick_fit_args)] * 2, strict=True)
    ]
    args = parser.parse_args([
        "sweep", "--config", str(SEG), "--methods", "binary,seg", "--budgets", "all",
        "--seeds", "1", "--out", str(tmp_path), "--n-resamples", str(RESAMPLES),
        "--set", *pairs, "--set", "model.pooling=max",
    ])  # fmt: skip
    assert run_sweep_cli(args) == 1
    err = capsys.readouterr().err
    assert "failed" in err and "runs/binary/seed-1" in err
    csv = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False)
    status = dict(zip(csv["method"], csv["status"], strict=True))
    assert status == {"binary": "failed", "seg": "finished"}
    error = (tmp_path / "runs" / "binary" / "seed-1" / "error.txt").read_text()
    assert "pooling" in error
    assert "pooling" in csv.loc[csv["method"] == "binary", "error"].item()
    assert "failed runs" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "sweep.json").read_text())["status"] == "incomplete"


def test_cli_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", "--config", str(SEG), "--methods", "nope",
                              "--out", str(tmp_path / "o")])  # fmt: skip
    assert run_sweep_cli(args) == 2
    assert (
        "spatialspec sweep: error: unknown method 'nope'; valid names:" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_parallel_jobs_run_in_separate_processes(tmp_path: Path, quick_fit_args: list[str]) -> None:
    frame = _sweep(tmp_path, quick_fit_args, budgets="all", jobs=2)
    assert (frame["status"] == "finished").all() and len(frame) == 2
    csv = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False)
    assert sorted(csv["run_dir"]) == sorted(frame["run_dir"])
    assert json.loads((tmp_path / "sweep.json").read_text())["jobs"] == 2
    records = [json.loads((Path(d) / "sweep_run.json").read_text()) for d in frame["run_dir"]]
    assert all(r["pid"] != os.getpid() for r in records)  # spawned workers
    assert {r["torch_threads"] for r in records} == {max(1, sweep_run.cores() // 2)}


# -------------------------------------------------------------------------- stopping workers


def test_sigterm_becomes_system_exit_while_workers_run() -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc, sweep_run.sigterm_as_exit():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert exc.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_workers_terminates_running_fits() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(3):  # 2 running, 1 queued
        pool.submit(time.sleep, 60)
    deadline = time.monotonic() + 60
    while len(pool._processes) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    processes = list(pool._processes.values())
    start = time.monotonic()
    local._stop_workers(pool)
    assert time.monotonic() - start < 20  # not the 60 s of the running tasks
    # by /proc, not is_alive(): the pool's manager thread reaps the same children concurrently
    assert len(processes) == 2 and all(_state(p.pid) in (None, "Z") for p in processes)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None  # gone


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_die_when_the_sweep_process_is_killed(tmp_path: Path) -> None:
    """A worker that called _die_with_parent is killed when its parent dies by SIGKILL."""
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "child.pid"
    script = f"""
import multiprocessing, os, signal, time
from pathlib import Path
from spatialspec.sweep import local

def child():
    signal.signal(signal.SIGTERM, lambda *_: None)  # as Lightning's handler during a fit
    local._die_with_parent(int(os.environ["PARENT"]))
    Path({str(pid_file)!r}).write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    os.environ["PARENT"] = str(os.getpid())
    multiprocessing.get_context("spawn").Process(target=child).start()
    time.sleep(120)
"""
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert _state(child) not in (None, "Z")
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _state(child) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _state(child) in (None, "Z"), "the worker outlived the sweep process"
    finally:
        parent.kill()
