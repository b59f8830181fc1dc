"""Training step of the shared network in channels-last vs. contiguous (NCHW) memory order.

``BackboneConfig.channels_last`` (default True) keeps weights and inputs in NHWC order, which
oneDNN's CPU convolutions (and cuDNN's under mixed precision) run faster; the numbers are the
same. This times forward + backward + Adam step of the dense network (encoder, U-Net decoder,
pixel head) or the image-level network, on random batches, alternating the two layouts round by
round and reporting the median of the per-round ratios.

    python benchmarks/channels_last.py [--encoder tu-mobilenetv3_small_100] [--size 64]
        [--batch 32] [--threads 1] [--rounds 5] [--steps 5] [--image-head]

Defaults are the synthetic benchmark's network with one thread (one ``--jobs 2`` sweep worker).
The last line is the ratio (channels-last steps/s ÷ contiguous steps/s); target > 1.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _network import add_network_arguments, steps_per_second

from spatialspec.models import BackboneConfig, SpatialNet


def build(args: argparse.Namespace, channels_last: bool) -> tuple[SpatialNet, torch.optim.Adam]:
    """The network of ``args`` in one memory order, and its optimiser."""
    depth = len(args.decoder)
    cfg = BackboneConfig(
        encoder_name=args.encoder,
        in_channels=args.channels,
        encoder_depth=depth,
        decoder_channels=tuple(args.decoder),
        channels_last=channels_last,
    )
    torch.manual_seed(0)
    net = SpatialNet(cfg, image_head=args.image_head, dense=not args.image_head)
    return net.train(), torch.optim.Adam(net.parameters(), lr=1e-3)


def _forward(net: SpatialNet) -> Callable[[torch.Tensor], torch.Tensor]:
    return net.image_logits if net.image_head is not None else net.pixel_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_network_arguments(parser)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-head", action="store_true", help="time the binary network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = torch.randn(args.batch, args.channels, args.size, args.size)  # plain NCHW input
    nets = {layout: build(args, layout) for layout in (False, True)}
    for net, opt in nets.values():
        steps_per_second(_forward(net), opt, x, 2)  # warm-up: oneDNN primitive caches
    rates = {False: [], True: []}
    for _ in range(args.rounds):
        for layout, (net, opt) in nets.items():
            rates[layout].append(steps_per_second(_forward(net), opt, x, args.steps))
    ratios = [cl / nchw for cl, nchw in zip(rates[True], rates[False], strict=True)]
    kind = "image-level" if args.image_head else "dense"
    print(f"{args.encoder} {kind} network, batch {args.batch} x {args.size}^2, "
          f"{args.threads} thread(s)")  # fmt: skip
    for layout, name in ((False, "contiguous (NCHW)"), (True, "channels-last (NHWC)")):
        median = statistics.median(rates[layout])
        print(f"  {name:22s} {median:6.2f} steps/s  {median * args.batch:7.1f} images/s")
    speedup = statistics.median(ratios)
    print(f"channels-last speed-up (median of {args.rounds} rounds): {speedup:.2f}x")


if __name__ == "__main__":
    main()
