"""What the network benchmarks share: their command-line options and the timed training step."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

SYNTHETIC_DECODER = (64, 32, 16, 8)


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """``--encoder --decoder --size --batch --threads --rounds --steps`` (the synthetic net's
    defaults, one thread: one ``--jobs 2`` sweep worker)."""
    parser.add_argument("--encoder", default="tu-mobilenetv3_small_100")
    parser.add_argument("--decoder", type=int, nargs="+", default=list(SYNTHETIC_DECODER))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)


def steps_per_second(
    forward: Callable[[torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    steps: int,
) -> float:
    """Forward + backward + optimiser steps per second on the (B, C, H, W) batch ``x``."""
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        forward(x).float().mean().backward()
        opt.step()
    return steps / (time.perf_counter() - start)
