"""Cost of a training step of the mask-penalty methods against ``binary``, on the same batch.

``rrr`` and ``gradmask`` backpropagate through an input gradient (double backpropagation);
``actdiff`` runs a second view of every annotated image through the encoder. This times a whole
training step (the method's ``compute_loss``, backward, Adam step) of ``binary``, ``rrr``,
``gradmask`` and ``actdiff`` on one fixed batch of the synthetic network, alternating the methods
round by round, and reports each method's median time per step and the median of its per-round
ratios to ``binary``'s.

    python benchmarks/penalty_cost.py [--encoder tu-mobilenetv3_small_100] [--size 64]
        [--batch 32] [--threads 1] [--rounds 5] [--steps 5] [--known 1.0]

Defaults are the synthetic benchmark's network with one thread (one ``--jobs 2`` sweep worker);
``--known`` is the share of the batch with a known mask (a mask budget lowers the cost of the
penalties: only those rows are penalised).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from _network import add_network_arguments, steps_per_second

from spatialspec.methods import SpatialMethod, get_method
from spatialspec.models import BackboneConfig

METHODS = ("binary", "rrr", "gradmask", "actdiff")


def make_batch(args: argparse.Namespace) -> dict[str, Any]:
    """A fixed batch: random images, a square lesion mask on every other (positive) image."""
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    labels = (torch.arange(b) % 2 == 0).float()
    masks = torch.zeros(b, 1, s, s)
    masks[labels.bool(), :, s // 4 : s // 2, s // 4 : s // 2] = 1.0
    known = torch.zeros(b)
    known[: round(args.known * b)] = 1.0
    return {
        "image": torch.randn(b, 1, s, s, generator=g) + masks,
        "mask": masks,
        "label": labels,
        "mask_available": known,
        "spurious": torch.zeros(b),
        "image_id": [str(i) for i in range(b)],
    }


def build(name: str, args: argparse.Namespace) -> tuple[SpatialMethod, torch.optim.Optimizer]:
    """Method ``name`` on the benchmark's network (the same initial weights for all), in
    training mode, with its optimiser."""
    cfg = BackboneConfig(
        encoder_name=args.encoder,
        encoder_depth=len(args.decoder),
        decoder_channels=tuple(args.decoder),
    )
    torch.manual_seed(0)
    kwargs = {} if name == "binary" else {"penalty_weight": 1.0}
    method = get_method(name)(backbone=cfg, **kwargs).train()
    return method, method.configure_optimizers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_network_arguments(parser)
    parser.add_argument("--known", type=float, default=1.0, help="share of rows with a mask")
    args = parser.parse_args()
    if not 0.0 <= args.known <= 1.0:
        parser.error(f"--known must be in [0, 1], got {args.known}")
    torch.set_num_threads(args.threads)

    batch = make_batch(args)
    methods = {name: build(name, args) for name in METHODS}

    def step(method: SpatialMethod) -> Any:
        return lambda x: method.compute_loss({**batch, "image": x})["loss"]

    for method, opt in methods.values():
        steps_per_second(step(method), opt, batch["image"], 2)  # warm-up: oneDNN caches
    rates: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.rounds):
        for name, (method, opt) in methods.items():
            rates[name].append(steps_per_second(step(method), opt, batch["image"], args.steps))

    print(
        f"{args.encoder} image-level network, batch {args.batch} x {args.size}^2, "
        f"{args.known:.0%} of the rows with a mask, {args.threads} thread(s), "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    for name in METHODS:
        ms = 1000 / statistics.median(rates[name])
        ratio = statistics.median(b / r for b, r in zip(rates["binary"], rates[name], strict=True))
        print(f"  {name:9s} {ms:8.1f} ms/step  {ratio:5.2f}x binary")


if __name__ == "__main__":
    main()
