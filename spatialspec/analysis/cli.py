"""``spatialspec analyze``: its parser and the ``specificity`` analysis's command."""

from __future__ import annotations

import argparse

__all__ = ["add_analyze_parser", "run_analyze_cli"]

DEFAULT_LEVELS = "mask,dilate:2,dilate:4,dilate:8,box,image"


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``analyze`` and its analyses to the top-level subparsers."""
    p = sub.add_parser("analyze", help="measures of a dataset (no model): specificity")
    kinds = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    s = kinds.add_parser(
        "specificity",
        help="variance and I(S; Y | annotation) per spatial specificity level",
        description="Per spatial specificity level, over the annotated-positive pixels of the "
        "split's positive images: the variance of their intensities, the mutual information "
        "(bits) between spurious and pathology pixels, the spurious share and the pixel count.",
    )
    s.add_argument("--manifest", required=True, help="manifest.csv")
    s.add_argument("--specificities", default=DEFAULT_LEVELS,
                   help="comma-separated levels: mask, dilate:R, box, grid:K, image "
                        f"(default {DEFAULT_LEVELS})")  # fmt: skip
    s.add_argument("--split", default="train", choices=("train", "val", "test"))
    s.add_argument("--image-size", type=int, default=None,
                   help="resize images and masks to this side first, as a config's "
                        "data.image_size (default: as stored; the synthetic benchmark is "
                        "stored at its training size, 64)")  # fmt: skip
    s.add_argument("--out", required=True, help="folder for specificity.json, .md and .png")
    s.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")  # fmt: skip


def run_analyze_cli(args: argparse.Namespace) -> None:
    """Run ``spatialspec analyze <analysis>``: write its files and print a summary."""
    from spatialspec.analysis.specificity import analyze_manifest
    from spatialspec.analysis.specificity_report import write_outputs

    result = analyze_manifest(
        args.manifest, args.specificities, split=args.split, image_size=args.image_size,
        progress=args.progress,
    )  # fmt: skip
    paths = write_outputs(result, args.out)
    print(f"{'level':<10} {'variance':>10} {'MI (bits)':>10} {'spurious':>9} {'n_pixels':>10}")
    for row in result["levels"]:
        mi, share = row["mutual_information"], row["spurious_share"]
        print(
            f"{row['specificity']:<10} {row['variance']:>10.5f} "
            f"{'n/a' if mi is None else f'{mi:.5f}':>10} "
            f"{'n/a' if share is None else f'{share:.4f}':>9} {row['n_pixels']:>10}"
        )
    print(" ".join(f"-> {p}" for p in paths.values()))
