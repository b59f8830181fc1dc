"""GPU throughput of ``fit`` at the paper's scale: a 2-epoch fit of ``configs/siim/seg.yaml``
(512 px, ResNet-50 U-Net, channels-last) on a SIIM-sized synthetic set, per precision.

Reports, per epoch, training images/s and the share of the training loop the GPU waits on the
data loader (the time from the end of one batch -- after ``cuda.synchronize`` -- to the start of
the next, over the epoch's training time); with 2+ GPUs also a DDP fit on 2 of them.

    python benchmarks/gpu_fit.py [--out results/gpu_fit] [--n-train 2000] [--size 512]
        [--precisions bf16-mixed,32-true] [--workers 8] [--batch 16] [--epochs 2]

On a CPU (no GPU) it still runs, e.g. as a smoke test:
``--accelerator cpu --size 64 --encoder resnet18 --n-train 64 --precisions 32-true``.
The last line is the bf16-mixed / 32-true speed-up of the last epoch (when both ran).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]


class LoaderWait(L.Callback):
    """Per training epoch: images/s and the share of time spent waiting for batches."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_epoch_start(self, trainer: L.Trainer, module: Any) -> None:
        self._sync(trainer)
        self.start = self.last_end = time.perf_counter()
        self.wait, self.images = 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, i: int) -> None:
        self.wait += time.perf_counter() - self.last_end
        self.images += batch["image"].shape[0] * trainer.world_size

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self._sync(trainer)
        self.last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        seconds = self.last_end - self.start
        self.epochs.append({"epoch": trainer.current_epoch, "images": self.images,
                            "seconds": round(seconds, 3),
                            "images_per_s": round(self.images / seconds, 1),
                            "loader_wait_share": round(self.wait / seconds, 4)})  # fmt: skip


def fit_one(argv: list[str], result: Path) -> None:
    """One fit with :class:`LoaderWait`; rank 0 writes ``result`` (JSON)."""
    from spatialspec import training

    monitor = LoaderWait()
    build = training.build_trainer

    def with_monitor(*a: Any, **k: Any) -> Any:
        trainer, checkpoint = build(*a, **k)
        trainer.callbacks.append(monitor)
        return trainer, checkpoint

    training.build_trainer = with_monitor
    info = training.fit(argv)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        cuda = torch.cuda.is_available()
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        result.write_text(json.dumps({
            "epochs": monitor.epochs, "world_size": info["world_size"],
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "peak_memory_gib": peak,
        }, indent=2))  # fmt: skip


def _prepare(args: argparse.Namespace) -> Path:
    data = Path(args.out) / "data"
    cmd = [sys.executable, "-m", "spatialspec", "prepare", "synthetic", "--out", str(data),
           "--size", str(args.size), "--n-train", str(args.n_train), "--n-val", str(args.n_val),
           "--n-test", "32"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"synthetic set: {args.n_train} + {args.n_val} images of {args.size}^2 "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return data / "manifest.csv"


def _fit_args(args: argparse.Namespace, manifest: Path, precision: str, devices: int) -> list:
    out = Path(args.out) / f"run-{precision}-{devices}gpu"
    return [
        "--config", str(REPO / "configs/siim/seg.yaml"), "--data.manifest", str(manifest),
        "--data.image_size", str(args.size), "--data.batch_size", str(args.batch),
        "--data.num_workers", str(args.workers), "--model.backbone.encoder_name", args.encoder,
        "--model.backbone.channels_last", "true", "--trainer.precision", precision,
        "--trainer.max_epochs", str(args.epochs), "--trainer.accelerator", args.accelerator,
        "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false",
        "--trainer.strategy", "ddp" if devices > 1 else "auto",
        "--out_dir", str(out), "--overwrite", "true",
    ]  # fmt: skip


def run(args: argparse.Namespace) -> None:
    manifest = _prepare(args)
    gpus = torch.cuda.device_count() if args.accelerator != "cpu" else 0
    settings = [(p.strip(), 1) for p in args.precisions.split(",") if p.strip()]
    if gpus >= 2:
        settings.append((settings[0][0], 2))
    results = {}
    for precision, devices in settings:
        result = Path(args.out) / f"result-{precision}-{devices}.json"
        cmd = [sys.executable, __file__, "--fit-one", str(result), "--",
               *_fit_args(args, manifest, precision, devices)]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=REPO)
        results[precision, devices] = json.loads(result.read_text())
    _report(results, args)


def _report(results: dict, args: argparse.Namespace) -> None:
    print(f"\n{args.encoder} U-Net, {args.size}^2, batch {args.batch} per device, "
          f"{args.workers} loader workers")  # fmt: skip
    for (precision, devices), r in results.items():
        for e in r["epochs"]:
            print(f"  {r['device']:28s} {precision:10s} x{devices} epoch {e['epoch']}: "
                  f"{e['images_per_s']:8.1f} images/s, loader wait {e['loader_wait_share']:.1%}"
                  f", peak {r['peak_memory_gib']} GiB")  # fmt: skip
    (Path(args.out) / "summary.json").write_text(
        json.dumps({f"{p}x{d}": r for (p, d), r in results.items()}, indent=2)
    )
    fast, full = results.get(("bf16-mixed", 1)), results.get(("32-true", 1))
    if fast and full:
        ratio = fast["epochs"][-1]["images_per_s"] / full["epochs"][-1]["images_per_s"]
        print(f"bf16-mixed / 32-true images/s (last epoch): {ratio:.2f}x")


def main() -> None:
    if "--fit-one" in sys.argv:  # one fit (also the command Lightning re-runs as DDP rank 1)
        i = sys.argv.index("--fit-one")
        fit_one(sys.argv[i + 3 :], Path(sys.argv[i + 1]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "results/gpu_fit"))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precisions", default="bf16-mixed,32-true")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--accelerator", default="gpu")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
