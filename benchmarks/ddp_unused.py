"""What the DDP fix costs: pruned networks under plain DDP vs. the unpruned ones under
``find_unused_parameters=True`` (the only way they trained under DDP before).

smp builds every encoder stage even when ``encoder_depth`` uses fewer; their parameters get no
gradient, which DDP refuses unless it searches the autograd graph for unused parameters on every
step. ``SpatialNet`` now replaces those modules by ``Identity`` after a one-off probe at
construction (:func:`spatialspec.models.backbone.prune_unused`). This times, in one process
(a world of 1 over gloo, so only DDP's own bookkeeping differs), forward + backward + Adam steps
of the dense and image-level networks both ways, alternating round by round, and the probe.

    python benchmarks/ddp_unused.py [--encoder tu-mobilenetv3_small_100] [--size 64]
        [--batch 32] [--threads 1] [--rounds 5] [--steps 5]

The last line is the ratio (pruned, plain DDP steps/s ÷ unpruned, find_unused steps/s);
target >= 1 (the fix costs nothing per step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
from _network import add_network_arguments, steps_per_second
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from spatialspec.models import BackboneConfig, SpatialNet
from spatialspec.models import backbone as backbone_module


class Wrapped(nn.Module):
    """The network's training output as ``forward`` (what DDP wraps)."""

    def __init__(self, net: SpatialNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net.image_head is not None:
            return self.net.image_logits(x)
        return self.net.pixel_logits(x)


def build(cfg: BackboneConfig, image_head: bool, prune: bool) -> tuple[nn.Module, float]:
    """DDP-wrapped network (pruned, or not with find_unused_parameters) and build seconds."""
    original = backbone_module.prune_unused
    if not prune:
        backbone_module.prune_unused = lambda *a, **k: []
    try:
        torch.manual_seed(0)
        start = time.perf_counter()
        net = SpatialNet(cfg, image_head=image_head, dense=not image_head)
        seconds = time.perf_counter() - start
    finally:
        backbone_module.prune_unused = original
    model = DistributedDataParallel(Wrapped(net.train()), find_unused_parameters=not prune)
    return model, seconds


def _adam(model: nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_network_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    cfg = BackboneConfig(encoder_name=args.encoder, encoder_depth=len(args.decoder),
                         decoder_channels=tuple(args.decoder))  # fmt: skip
    x = torch.randn(args.batch, 1, args.size, args.size)
    ratios = []
    for image_head in (False, True):
        models = {prune: build(cfg, image_head, prune) for prune in (False, True)}
        for model, _ in models.values():
            steps_per_second(model, _adam(model), x, 2)  # warm-up
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for prune, (model, _) in models.items():
                rates[prune].append(steps_per_second(model, _adam(model), x, args.steps))
        ratio = statistics.median(p / u for p, u in zip(rates[True], rates[False], strict=True))
        ratios.append(ratio)
        kind = "image-level (binary)" if image_head else "dense (seg)"
        params = {p: sum(t.numel() for t in m.parameters()) for p, (m, _) in models.items()}
        shape = f"batch {args.batch} x {args.size}^2, {args.threads} thread(s)"
        print(f"{args.encoder} {kind}, {shape}")
        for prune, name in ((False, "unpruned, find_unused_parameters"), (True, "pruned, plain")):
            rate = statistics.median(rates[prune])
            print(f"  {name:33s} {rate * args.batch:7.1f} images/s  {params[prune]:>9,} params  "
                  f"built in {models[prune][1]:.2f} s")  # fmt: skip
        print(f"  ratio {ratio:.2f}")
    dist.destroy_process_group()
    print(f"pruned/unpruned DDP step speed (median of {args.rounds} rounds, worst network): "
          f"{min(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
