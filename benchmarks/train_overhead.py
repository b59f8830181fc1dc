"""Training-loop overhead of ``spatialspec fit`` vs. a bare PyTorch loop, on the CPU.

Both loops train the same method (network, loss) on the same in-memory batches of the synthetic
benchmark, with the same batch size and optimiser. The Lightning side is the exact Trainer that
``fit`` builds (CSV logger, checkpoint callback, progress bar, per-step logging); validation is
switched off on both sides so only the training loop is timed. Each round times both loops back
to back; the median of the per-round ratios is reported (the CPU speed drifts by ~10 % between
rounds on a shared 2-core machine, the ratio within a round much less).

    python benchmarks/train_overhead.py [--config configs/synthetic/seg.yaml] [--steps 60]

The last line printed is the ratio (fit images/s ÷ bare images/s); target >= 0.95.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from spatialspec.data.synthetic import SyntheticConfig, prepare
from spatialspec.training import build_components, build_trainer, parse_fit_args


class _Timer(L.Callback):
    """Wall time of training batches after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.images = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.images += batch["image"].shape[0]
            self.end = time.perf_counter()


def _in_memory_batches(data, n_images: int) -> list[dict]:
    dataset = data.dataset("train", train=True)
    return [dataset[i] for i in range(min(n_images, len(dataset)))]


def bare_loop(model, samples, batch_size: int, steps: int, warmup: int) -> float:
    """Images/s of a plain PyTorch loop over the method's own loss."""
    loader = DataLoader(samples, batch_size=batch_size, shuffle=True, drop_last=True)
    opt = model.configure_optimizers()
    model.train()
    done, images, start = 0, 0, 0.0
    while done < steps + warmup:
        for batch in loader:
            if done == warmup:
                start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = model.compute_loss(batch)["loss"]
            loss.backward()
            opt.step()
            done += 1
            images += batch["image"].shape[0] if done > warmup else 0
            if done == steps + warmup:
                break
    return images / (time.perf_counter() - start)


def lightning_loop(
    model, samples, cfg, batch_size: int, steps: int, warmup: int, out: str
) -> float:
    """Images/s of the Trainer ``fit`` builds, on the same samples."""
    loader = DataLoader(samples, batch_size=batch_size, shuffle=True, drop_last=True)
    kwargs = {**cfg.trainer.as_dict(), "max_steps": steps + warmup, "max_epochs": -1,
              "limit_val_batches": 0, "num_sanity_val_steps": 0,
              "enable_model_summary": False}  # fmt: skip
    trainer, _ = build_trainer(kwargs, Path(out), cfg.monitor, cfg.progress_every)
    timer = _Timer(warmup)
    trainer.callbacks.append(timer)
    trainer.fit(model, train_dataloaders=loader)
    return timer.images / (timer.end - timer.start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/synthetic/seg.yaml")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--steps", type=int, default=60, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    manifest = prepare(SyntheticConfig(), args.data)
    with tempfile.TemporaryDirectory() as tmp:
        parser, cfg = parse_fit_args(
            ["--config", args.config, "--data.manifest", str(manifest), "--out_dir", tmp]
        )
        model, data = build_components(cfg, parser)
        samples = _in_memory_batches(data, 32 * data.batch_size)
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        bare, lit, ratios = [], [], []
        print(f"{cfg.method}: {cfg.model.backbone.encoder_name}, batch {data.batch_size}, "
              f"{data.image_size}px, {torch.get_num_threads()} threads, "
              f"progress bar every {cfg.progress_every} steps")  # fmt: skip
        for r in range(args.rounds):
            model.load_state_dict(init_state)
            bare.append(bare_loop(model, samples, data.batch_size, args.steps, args.warmup))
            model.load_state_dict(init_state)
            lit.append(lightning_loop(model, samples, cfg, data.batch_size,
                                      args.steps, args.warmup, f"{tmp}/round{r}"))  # fmt: skip
            ratios.append(lit[-1] / bare[-1])
            print(f"round {r + 1}: bare {bare[-1]:.1f} img/s, fit loop {lit[-1]:.1f} img/s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)  # fmt: skip
    b, f = statistics.median(bare), statistics.median(lit)
    print(f"median: bare PyTorch {b:.1f} img/s, spatialspec fit loop {f:.1f} img/s")
    print(f"ratio fit/bare (median of per-round ratios): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
